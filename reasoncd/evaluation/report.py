"""What an evaluation leaves behind for a reader: report.md, the samples shown as panels, the printed summary, and
the files of the output folder (metrics.json, per_sample.json, report.md)."""

from pathlib import Path

from reasoncd.evaluation.metrics import METRIC_NAMES, METRIC_TITLES
from reasoncd.io import write_json_atomic, write_text_atomic

PANEL_LABELS = ("best", "median", "worst")


def best_median_worst(per_sample: list[dict]) -> list[tuple[str, int]]:
    """Indices of the best, median and worst sample by IoU (ties broken by name, so reruns pick the same)."""
    order = sorted(range(len(per_sample)), key=lambda i: (per_sample[i]["iou"], per_sample[i]["name"]))
    return list(zip(PANEL_LABELS, (order[-1], order[len(order) // 2], order[0])))


def describe_data(data: dict) -> str:
    """Where the samples came from, in words: a JSON sample folder (and its split) or a converted
    change-detection folder with the question asked about it."""
    if data.get("question") is not None:
        pairs = f"split {data['split']}" if data["split"] else "all pairs"
        return f"{data['data']} (change-detection folder, {pairs}, question {data['question']!r})"
    return data["data"] + (f" (split {data['split']})" if data["split"] else "")


def number(value) -> str:
    """A figure as the report writes it; a dash for one that could not be measured."""
    return "–" if value is None else f"{value:.3f}"


def render_report(summary: dict, per_sample: list[dict], chosen: list[tuple[str, int]]) -> str:
    """report.md: the overall figures, the breakdown by question kind and the text figures, as GitHub tables."""
    if "data" in summary:
        source = describe_data(summary)
    else:
        source = f"{summary['pred_dir']} against {summary['label_dir']}"
    lines = [
        "# ReasonCD evaluation", "",
        f"- mode: `{summary['mode']}`",
        *([f"- model: `{summary['model']}`"] if "model" in summary else []),
        f"- data: {source}",
        f"- samples: {summary['n_samples']}", "",
        "## Overall (global confusion matrix, change = positive)", "",
        "| " + " | ".join(METRIC_TITLES[name] for name in METRIC_NAMES) + " |",
        "|" + "---:|" * len(METRIC_NAMES),
        "| " + " | ".join(number(summary[name]) for name in METRIC_NAMES) + " |", "",
        f"Pixels: TP {summary['tp']:,}, FP {summary['fp']:,}, FN {summary['fn']:,}, TN {summary['tn']:,}.", "",
    ]
    if "groups" in summary:
        lines += ["## By question kind", "",
                  "| kind | samples | " + " | ".join(METRIC_TITLES[name] for name in METRIC_NAMES) + " |",
                  "|---|---:|" + "---:|" * len(METRIC_NAMES)]
        for group, figures in summary["groups"].items():
            lines.append(f"| {group} | {figures['n_samples']} | "
                         + " | ".join(number(figures[name]) for name in METRIC_NAMES) + " |")
        text, steering = summary["text"], summary["steering"]
        lines += ["", "## Text", "", "| figure | value | over |", "|---|---:|---:|",
                  f"| `[SEG]` emitted where the change of interest is present | "
                  f"{number(text['seg_emission_rate'])} | {text['n_present']} samples |",
                  f"| no `[SEG]` where it is absent (absent-CRoI accuracy) | "
                  f"{number(text['absent_accuracy'])} | {text['n_absent']} samples |",
                  f"| mask closer to the asked change than to another one (steering) | "
                  f"{number(steering['accuracy'])} | {steering['n_comparisons']} comparisons |",
                  *order_and_agreement_rows(summary), ""]
        if summary["mode"] == "teacher_forced":
            lines += ["Teacher forced: `[SEG]` counts as emitted where some answer position's most likely next token "
                      "is `[SEG]` (the masks come from the reference's `[SEG]`).", ""]
        lines += question_use_report(summary)
        lines += multi_target_report(summary)
        lines += phrasing_report(summary)
    lines += ["## Panels", "", "| | sample | IoU |", "|---|---|---:|"]
    lines += [f"| [{label}](panels/{label}.png) | {per_sample[index]['name']} | {number(per_sample[index]['iou'])} |"
              for label, index in chosen]
    return "\n".join(lines) + "\n"


def phrasing_report(summary: dict) -> list[str]:
    """report.md's section on questions in seen and held-out phrasings; none where the samples hold one kind."""
    if not summary.get("by_phrasing"):
        return []
    return ["## Seen and held-out phrasings", "",
            "Questions phrased as some training question is, beside those phrased as none is: a gap here comes from "
            "the wording, not from the pairs.", "",
            *figures_table({PHRASING_TITLES[name]: part for name, part in summary["by_phrasing"].items()}), ""]


def order_and_agreement_rows(summary: dict) -> list[str]:
    """The order-accuracy and answer/map-agreement rows of report.md's text table (metrics of older runs lack them)."""
    rows = []
    order = summary.get("order")
    if order is not None:
        rows.append(f"| with T1 and T2 swapped, map closer to the swapped truth (order accuracy) | "
                    f"{number(order['accuracy'])} | {order['n_questions']} questions |")
    agreement = summary["text"].get("answer_map_agreement")
    if agreement is not None:
        rows.append(f"| answer's words (a change, or none) agree with the map (empty or not) | {number(agreement)} | "
                    f"{summary['n_samples']} samples |")
    return rows


def question_use_report(summary: dict) -> list[str]:
    """report.md's section on whether the masks follow the question (see reasoncd.evaluation.scoring)."""
    sensitivity, counterfactual = summary["question_sensitivity"], summary["counterfactual"]
    return [
        "## Does the mask follow the question?", "",
        "| figure | value | over |", "|---|---:|---:|",
        f"| question sensitivity: mean IoU between masks for different changes of one pair (1 = question ignored) | "
        f"{number(sensitivity['mean_iou'])} | {sensitivity['n_comparisons']} comparisons |",
        f"| the same between their truths (what a perfect model scores) | "
        f"{number(sensitivity['truth_mean_iou'])} | {sensitivity['n_comparisons']} comparisons |",
        f"| F1 of the masks as predicted | {number(counterfactual['f1_original'])} | "
        f"{counterfactual['n_rows']} samples |",
        f"| F1 with the `[SEG]` states swapped between questions of a pair (counterfactual) | "
        f"{number(counterfactual['f1_swapped'])} | {counterfactual['n_rows']} samples |",
        f"| counterfactual F1 drop (about 0 = the mask ignores the prompt) | {number(counterfactual['f1_drop'])} | "
        f"{counterfactual['n_rows']} samples |",
        f"| fidelity score: mean of F1, steering, absent-CRoI accuracy, 1 - sensitivity | "
        f"{number(summary['fidelity_score'])} | |", "",
    ]


def multi_target_report(summary: dict) -> list[str]:
    """report.md's section on questions about several changes (reasoncd.evaluation.targets); none without them."""
    multi = summary.get("multi_target") or {}
    if not multi.get("n_questions"):
        return []
    questions, present, absent = multi["n_questions"], multi["n_present_targets"], multi["n_absent_parts"]
    return [
        "## Questions about several changes", "",
        "| figure | value | over |", "|---|---:|---:|",
        f"| per-target F1, each predicted target matched to its truth by its label | {number(multi['target_f1'])} | "
        f"{present} targets |",
        f"| per-target IoU (global / mean per target), matched by label | {number(multi['target_iou'])} / "
        f"{number(multi['target_miou'])} | {present} targets |",
        f"| per-target F1, matched by mask overlap instead (a check) | {number(multi['target_f1_by_overlap'])} | "
        f"{present} targets |",
        f"| label matches that overlap matching pairs the same way | {number(multi['label_overlap_agreement'])} | "
        f"|",
        f"| answers with as many targets as changes present (target-count accuracy) | "
        f"{number(multi['count_accuracy'])} | {questions} questions |",
        f"| present targets found (T-acc) | {number(multi['t_acc'])} | {present} targets |",
        f"| absent parts refused, no mask with their name (N-acc) | {number(multi['n_acc'])} | {absent} parts |",
        f"| F1 of the union of the masks | {number(multi['union_f1'])} | {questions} questions |",
        f"| each mask closer to its own target's truth than to another target's (steering) | "
        f"{number(multi['steering']['accuracy'])} | {multi['steering']['n_comparisons']} comparisons |", "",
    ]


def question_use_line(summary: dict) -> str:
    """The printed summary's line on question use, with what each figure means when it is missing."""
    sensitivity, counterfactual = summary["question_sensitivity"], summary["counterfactual"]
    if sensitivity["mean_iou"] is None:
        sensitive = "question sensitivity – (no pair with two asked changes whose truths differ)"
    else:
        sensitive = (f"question sensitivity {sensitivity['mean_iou']:.3f} (truths {sensitivity['truth_mean_iou']:.3f},"
                     f" {sensitivity['n_comparisons']} comparisons; 1 = question ignored)")
    if counterfactual["f1_drop"] is None:
        swapped = "counterfactual F1 drop – (no pair with [SEG] answers for two different truths)"
    else:
        swapped = (f"counterfactual F1 drop {counterfactual['f1_drop']:.3f} (F1 {counterfactual['f1_original']:.3f}"
                   f" -> {counterfactual['f1_swapped']:.3f} with [SEG] states swapped, {counterfactual['n_rows']} "
                   "samples; about 0 = prompt ignored)")
    return f"{sensitive}; {swapped}; fidelity score {summary['fidelity_score']:.3f}"


def summary_lines(summary: dict, output_dir: Path) -> list[str]:
    """What eval.py prints when it is done: the headline figures, question use (model mode), where the files are."""
    figures = ", ".join(f"{METRIC_TITLES[name]} {summary[name]:.3f}" for name in METRIC_NAMES)
    lines = [f"{summary['mode']}, {summary['n_samples']} samples: {figures}"]
    if "question_sensitivity" in summary:
        lines.append(question_use_line(summary))
    return lines + [f"wrote {output_dir}/ (metrics.json, report.md, panels/)"]


def write_outputs(staging: Path, summary: dict, per_sample: list[dict], chosen: list[tuple[str, int]]) -> None:
    write_json_atomic(staging / "metrics.json", summary)
    write_json_atomic(staging / "per_sample.json", per_sample)
    write_text_atomic(staging / "report.md", render_report(summary, per_sample, chosen))


def split_figures(summary: dict) -> list[tuple[str, float | None]]:
    """The headline figures of one split's free-generation summary, as (name, value); None where not measured."""
    groups, text = summary.get("groups", {}), summary["text"]
    explicit, heldout = groups.get("explicit", {}).get("f1"), groups.get("implicit_heldout", {}).get("f1")
    return [
        ("steering", summary["steering"]["accuracy"]),
        ("question sensitivity (1 = ignored)", summary["question_sensitivity"]["mean_iou"]),
        ("absent-CRoI accuracy", text["absent_accuracy"]),
        ("`[SEG]` emission", text["seg_emission_rate"]),
        ("order accuracy (T1, T2 swapped)", summary.get("order", {}).get("accuracy")),
        ("answer/map agreement", text.get("answer_map_agreement")),
        ("F1, explicit", explicit),
        ("F1, implicit held-out", heldout),
        ("F1, all questions", summary["f1"]),
        ("fidelity score", summary["fidelity_score"]),
        *multi_target_figures(summary),
    ]


def multi_target_figures(summary: dict) -> list[tuple[str, float | None]]:
    """The headline figures of questions about several changes; None where a split had none."""
    multi = summary.get("multi_target") or {}
    return [
        ("several changes: per-target F1 (by label)", multi.get("target_f1")),
        ("several changes: target-count accuracy", multi.get("count_accuracy")),
        ("several changes: present targets found (T-acc)", multi.get("t_acc")),
        ("several changes: absent parts refused (N-acc)", multi.get("n_acc")),
        ("several changes: union F1", multi.get("union_f1")),
        ("several changes: steering between targets", (multi.get("steering") or {}).get("accuracy")),
    ]


PHRASING_TITLES = {"seen": "seen phrasings", "heldout": "held-out phrasings"}


def with_phrasings(name: str, summary: dict) -> dict[str, dict]:
    """A split's summary followed by its parts in seen and held-out phrasings (`score_by_phrasing`), if any."""
    parts = summary.get("by_phrasing") or {}
    return {name: summary, **{f"{name}: {PHRASING_TITLES[part]}": parts[part] for part in parts}}


def figures_table(splits: dict[str, dict]) -> list[str]:
    """The headline figures of each split (a free-generation summary) side by side, as a GitHub table."""
    names = list(splits)
    rows = [dict(split_figures(summary)) for summary in splits.values()]
    lines = ["| figure | " + " | ".join(f"{name} ({splits[name].get('n_samples', '?')} questions)"
                                       for name in names) + " |",
             "|---|" + "---:|" * len(names)]
    for figure in rows[0]:
        lines.append(f"| {figure} | " + " | ".join(number(row[figure]) for row in rows) + " |")
    return lines


def split_report(splits: dict[str, dict]) -> str:
    """train.py's report.md: the headline figures of each split side by side (the training split's sample beside
    the test split: both low is under-fitting, a gap over-fitting; the test split's seen phrasings beside its
    held-out ones: a gap there is the wording, not the pairs)."""
    return "\n".join(["# ReasonCD training run: free generation", "", *figures_table(splits)]) + "\n"
