"""Figures a person would rather look at than read: prediction panels and training curves."""

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

CHANGE_COLOUR = np.array([255, 40, 40], dtype=np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The mask painted in red over the image."""
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * CHANGE_COLOUR
    return out.astype(np.uint8)


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}.png")
    fig.savefig(partial, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(partial, path)


def prediction_panels(path, rows: list[dict], title: str | None = None) -> None:
    """
    One row per question: T1 | T2 | truth | prediction (over T2), the question above and the answer below.
    Each row: `{"t1", "t2", "truth", "pred", "question", "answer"}` (+ optional `"note"`, e.g. the IoU).
    """
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3.3 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        panels = [row["t1"], row["t2"], overlay(row["t2"], row["truth"]), overlay(row["t2"], row["pred"])]
        names = ["T1 (earlier)", "T2 (later)", "truth", "prediction"]
        for ax, panel, name in zip(ax_row, panels, names):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(name, fontsize=9)
        question = textwrap.shorten(row["question"], 110)
        ax_row[0].set_title(f"Q: {question}", loc="left", fontsize=10, x=0.0)
        answer = textwrap.fill(textwrap.shorten(row["answer"], 220), 120)
        note = f"   [{row['note']}]" if row.get("note") else ""
        ax_row[2].text(-1.1, -0.16, f"A: {answer}{note}", transform=ax_row[2].transAxes, fontsize=9, va="top")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    _save(fig, path)


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
    """Total and per-term training loss, and the validation figures, against the optimiser step."""
    series = {
        "loss": ("training loss (total)", 0),
        "ce_loss": ("text CE", 1),
        "bce_loss": ("mask BCE", 1),
        "dice_loss": ("mask Dice", 1),
        "eval_loss": ("validation loss", 0),
        "eval_f1": ("validation F1", 2),
        "eval_iou": ("validation IoU", 2),
    }
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, (label, panel) in series.items():
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        if points:
            steps, values = zip(*points)
            axes[panel].plot(steps, values, marker="." if len(points) < 30 else None, label=label)
    for ax, title in zip(axes, ("total loss", "loss terms", "validation (teacher-forced masks)")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    axes[2].set_ylim(0, 1)
    fig.tight_layout()
    _save(fig, path)
