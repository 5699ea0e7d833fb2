"""Figures a person would rather look at than read: prediction panels, training curves and where the presence
decision's threshold sits."""

import textwrap
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from matplotlib.patches import Patch  # noqa: E402

from reasoncd.data.images import read_mask  # noqa: E402
from reasoncd.data.questions import MULTI_KIND  # noqa: E402
from reasoncd.data.samples import SEG, load_pair  # noqa: E402
from reasoncd.io import atomic_path  # noqa: E402

CHANGE_COLOUR = np.array([255, 40, 40], dtype=np.float32)
# One colour per target of an answer about several changes (red first, as a single change), in [SEG] order;
# chosen to stay apart for the common colour-vision deficiencies. Later targets reuse them.
TARGET_COLOURS = np.array([(255, 40, 40), (40, 120, 255), (255, 200, 0), (200, 60, 255), (40, 220, 80),
                           (255, 140, 0)], dtype=np.float32)
TARGET_COLOUR_NAMES = ("red", "blue", "yellow", "purple", "green", "orange")
TARGET_SWATCHES = ("🟥", "🟦", "🟨", "🟪", "🟩", "🟧")  # the same colours in text (the app's legend)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The mask painted in red over the image."""
    return overlay_targets(image, [mask], alpha)


def target_colour(index: int) -> np.ndarray:
    """The colour (RGB, 0-255) of an answer's target `index`."""
    return TARGET_COLOURS[index % len(TARGET_COLOURS)]


def target_legend(index: int) -> str:
    """The colour of target `index` in text: its swatch and its name."""
    return f"{TARGET_SWATCHES[index % len(TARGET_SWATCHES)]} {TARGET_COLOUR_NAMES[index % len(TARGET_COLOUR_NAMES)]}"


def overlay_targets(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.55) -> np.ndarray:
    """Each target's mask painted in its colour over the image (where they overlap, the later target's colour)."""
    out = image.astype(np.float32).copy()
    colours = np.zeros_like(out)
    covered = np.zeros(out.shape[:2], dtype=bool)
    for index, mask in enumerate(masks):
        colours[mask] = target_colour(index)
        covered |= mask
    out[covered] = (1 - alpha) * out[covered] + alpha * colours[covered]
    return out.astype(np.uint8)


def _save(fig, path: Path, tight: bool = True) -> None:
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, dpi=110, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)


def prediction_panels(path, rows: list[dict], title: str | None = None) -> None:
    """
    One row per question: T1 | T2 | truth | prediction (over T2), with the question and answer above the row.
    Each row: `{"t1", "t2", "truth", "pred", "question", "answer"}` (+ optional `"note"`, e.g. the IoU). A question
    about several changes may give `"truth_targets"` and `"pred_targets"`, lists of `(label, mask)`: each target is
    then painted in its own colour, with a legend.
    """
    row_height, text_height = 3.0, 0.75  # inches: images, then two lines of text above them
    height = len(rows) * (row_height + text_height) + (0.4 if title else 0.1)
    fig = plt.figure(figsize=(12, height))
    names = ["T1 (earlier)", "T2 (later)", "truth", "prediction"]
    for index, row in enumerate(rows):
        top = 1 - ((0.4 if title else 0.1) + index * (row_height + text_height)) / height
        question = textwrap.shorten(row["question"], 130)
        answer = textwrap.shorten(row["answer"], 150)
        note = f"  [{row['note']}]" if row.get("note") else ""
        fig.text(0.01, top - 0.05 / height, f"Q: {question}{note}\nA: {answer}", va="top", fontsize=9.5)
        bottom = top - (text_height + row_height) / height
        truth_targets = row.get("truth_targets") or [("", row["truth"])]
        pred_targets = row.get("pred_targets") or [("", row["pred"])]
        panels = [row["t1"], row["t2"], overlay_targets(row["t2"], [mask for _, mask in truth_targets]),
                  overlay_targets(row["t2"], [mask for _, mask in pred_targets])]
        legends = [None, None, row.get("truth_targets"), row.get("pred_targets")]
        for column, (panel, name, legend) in enumerate(zip(panels, names, legends)):
            ax = fig.add_axes([0.01 + column * 0.2475, bottom + 0.22 / height, 0.24, (row_height - 0.3) / height])
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(name, fontsize=9, labelpad=2)
            if legend:
                ax.legend(handles=[Patch(color=target_colour(k) / 255, label=textwrap.shorten(label, 34))
                                   for k, (label, _) in enumerate(legend)],
                          loc="lower left", fontsize=7, framealpha=0.75, handlelength=1.0)
    if title:
        fig.text(0.01, 1 - 0.08 / height, title, va="top", fontsize=12, weight="bold")
    _save(fig, path, tight=False)


def comparison_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Prediction against truth: white where both say change, red for false alarms, blue for misses."""
    out = np.zeros((*truth.shape, 3), dtype=np.uint8)
    out[truth & pred] = (255, 255, 255)
    out[pred & ~truth] = (255, 40, 40)
    out[truth & ~pred] = (40, 120, 255)
    return out


def mask_panels(path, rows: list[dict], title: str | None = None) -> None:
    """
    Saved predictions without their images: one row per sample, truth | prediction against the truth.
    Each row: `{"truth", "pred", "name"}` (+ optional `"note"`, e.g. the IoU).
    """
    fig, axes = plt.subplots(len(rows), 2, figsize=(6.5, 3.4 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        panels = [row["truth"].astype(np.uint8) * 255, comparison_map(row["truth"], row["pred"])]
        names = ["truth", "prediction (white hit, red false alarm, blue miss)"]
        for ax, panel, name in zip(ax_row, panels, names):
            ax.imshow(panel, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(name, fontsize=9)
        note = f"   [{row['note']}]" if row.get("note") else ""
        ax_row[0].set_title(f"{row['name']}{note}", loc="left", fontsize=10, x=0.0)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    _save(fig, path)


def training_curves(path, log_history: list[dict]) -> None:
    """
    Total and per-term training loss, the validation mask figures, and whether validation masks follow the
    question (steering, absent-CRoI accuracy, question sensitivity, counterfactual F1 drop, fidelity score), against
    the optimiser step.
    """
    series = {
        "loss": ("training loss (total)", 0),
        "ce_loss": ("text CE", 1),
        "bce_loss": ("mask BCE", 1),
        "dice_loss": ("mask Dice", 1),
        "eval_loss": ("validation loss", 0),
        "eval_f1": ("validation F1", 2),
        "eval_iou": ("validation IoU", 2),
        "eval_fidelity_score": ("fidelity score (picks the best checkpoint)", 3),
        "eval_steering": ("steering", 3),
        "eval_absent_accuracy": ("absent-CRoI accuracy", 3),
        "eval_question_sensitivity": ("question sensitivity (1 = ignored)", 3),
        "eval_counterfactual_f1_drop": ("counterfactual F1 drop", 3),
    }
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    lowest = 0.0
    for key, (label, panel) in series.items():
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        if points:
            steps, values = zip(*points)
            axes[panel].plot(steps, values, marker="." if len(points) < 30 else None, label=label)
            if panel == 3:
                lowest = min(lowest, *values)  # swapping states can raise F1: the drop may go below 0
    titles = ("total loss", "loss terms", "validation (teacher-forced masks)", "validation: question use")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    axes[2].set_ylim(0, 1)
    axes[3].set_ylim(lowest - 0.05 if lowest < 0 else 0, 1)
    fig.tight_layout()
    _save(fig, path)


def presence_threshold_figure(path, logits: np.ndarray, present: np.ndarray, threshold: float,
                              figures_at) -> None:
    """
    Where the presence decision's threshold sits: the presence logits of present and absent questions (histograms),
    and against the threshold the share of present questions decided present, of absent ones decided absent, and
    their mean (`figures_at(threshold)` gives them), with the head's own threshold (0) and `threshold` marked.
    """
    fig, (spread, curves) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    bins = np.linspace(logits.min(), logits.max(), 40)
    spread.hist(logits[present], bins=bins, alpha=0.6, label=f"present changes ({int(present.sum())})")
    spread.hist(logits[~present], bins=bins, alpha=0.6, label=f"absent changes ({int((~present).sum())})")
    spread.set_ylabel("questions")
    spread.set_title("presence logits of the validation questions")
    grid = np.linspace(logits.min() - 0.5, logits.max() + 0.5, 400)
    at = [figures_at(t) for t in grid]
    for key, label in (("present_recall", "present questions decided present"),
                       ("absent_accuracy", "absent questions decided absent"),
                       ("balanced_accuracy", "balanced accuracy (their mean)")):
        curves.plot(grid, [figures[key] for figures in at], label=label)
    curves.set_xlabel("threshold on the presence logit (a question above it is decided present)")
    curves.set_ylim(0, 1.02)
    for ax in (spread, curves):
        ax.axvline(0.0, color="grey", linestyle="--", label="the head's own threshold (0)")
        ax.axvline(threshold, color="black", label=f"the placed threshold ({threshold:.2f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def samples_figure(samples: list[dict], predictions: list[dict], path: Path) -> None:
    """
    One test pair asked about different changes and about one that is absent: the figure shows whether each
    question gets its own mask. The pair with the most distinct changes asked about, one that has an absent
    question preferred; up to three present changes and one absent one. Then one question about several changes
    (with two present or more; of that pair if it has one, else of another), each target in its own colour.
    """
    by_pair = defaultdict(list)
    for index, sample in enumerate(samples):
        by_pair[sample["pair_id"]].append(index)

    def chosen(indices):
        present, absent, seen = [], [], set()
        for index in indices:
            sample = samples[index]
            if sample.get("kind") == MULTI_KIND:
                continue
            if SEG not in sample["answer"]:
                absent.append(index)
            elif (sample.get("croi"), sample.get("direction")) not in seen:
                seen.add((sample.get("croi"), sample.get("direction")))
                present.append(index)
        return present[:3] + absent[:1]

    def preference(indices):
        picked = chosen(indices)
        has_absent = any(SEG not in samples[i]["answer"] for i in picked)
        return (has_absent, len(picked))

    pair = max(by_pair.values(), key=preference)
    indices = chosen(pair)
    rows = []
    for index in indices:
        t1, t2, truth = load_pair(samples[index])
        rows.append({"t1": t1, "t2": t2, "truth": truth, "pred": predictions[index]["mask"],
                     "question": samples[index]["question"], "answer": predictions[index]["text"],
                     "note": samples[index].get("kind", "")})
    title = f"pair {samples[indices[0]]['pair_id']}: one pair, one mask per question" if indices else "samples"
    several = _question_about_several_changes(samples, pair)
    if several is not None:
        rows.append(targets_row(samples[several], predictions[several]))
        if samples[several]["pair_id"] != (samples[indices[0]]["pair_id"] if indices else None):
            rows[-1]["note"] += f", pair {samples[several]['pair_id']}"
    prediction_panels(path, rows, title=title)


def _question_about_several_changes(samples: list[dict], pair: list[int]) -> int | None:
    """A question about several changes to show: one with two present targets or more, the given pair's first,
    then the one with the most."""
    def present(index: int) -> int:
        return sum(bool(target["present"]) for target in samples[index].get("targets") or [])

    candidates = [i for i, sample in enumerate(samples) if sample.get("kind") == MULTI_KIND and present(i)]
    if not candidates:
        return None
    return max(candidates, key=lambda i: (min(present(i), 2), i in pair, present(i), -i))


def targets_row(sample: dict, prediction: dict) -> dict:
    """A `prediction_panels` row of a question about several changes: truth and prediction target by target."""
    t1, t2, truth = load_pair(sample)
    truth_targets = [(target["label"], read_mask(target["mask_path"])) for target in sample["targets"]
                     if target["present"]]
    pred_targets = [(target["label"], target["mask"]) for target in prediction.get("targets") or []]
    return {"t1": t1, "t2": t2, "truth": truth, "pred": prediction["mask"], "question": sample["question"],
            "answer": prediction["text"], "note": "several changes, each in its own colour",
            "truth_targets": truth_targets, "pred_targets": pred_targets}
