"""Evaluate ReasonCD on a test set, or score any method's saved change masks against labels (paper §IV-B).

    python eval.py --model runs/bcdd/model --data data/bcdd --output_dir runs/bcdd/eval            # test split
    python eval.py --model CKPT --data LEVIR-CD --question Building --output_dir OUT               # A/B/label folder
    python eval.py --model CKPT --data data/second --teacher_forced --output_dir OUT               # LISA-style
    python eval.py --model CKPT --data data/bcdd --quantize 4 --output_dir OUT     # LLM in 4 bits (bitsandbytes)
    python eval.py --pred_dir runs/fc-ef/pred --label_dir LEVIR-CD/label --output_dir OUT [--threshold 127]

--data is a folder of JSON samples (with train/ val/ test/, pick one with --split, or the JSON files directly in
it) or a change-detection folder in a standard layout (A/B/label, prev/curr/label, im1/im2/label, ...), which is
converted on the fly (prepare_data.prepare_folder) with --question: its --split pairs where it has train/ val/
test/ folders, otherwise all of its pairs.

Outputs in --output_dir, written all at once after every input has been checked: `metrics.json` (F1, precision,
recall, OA, IoU, kappa from the global confusion matrix with change = positive, gIoU, cIoU, the counts; in model
mode also per question kind, text figures, steering, question sensitivity, the counterfactual F1 drop and the
fidelity score), `report.md`, `per_sample.json`, `panels/{best,median,worst}.png` (by IoU) and, in model mode,
`predictions/<sample>.png` (0/255, the input's size).
Bad input: a message on stderr, exit code 2 and no output. --output_dir must be new, empty or an earlier eval.py
output (see reasoncd/io.py; --overwrite writes beside other files, replacing only eval.py's own).
"""

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from reasoncd.data.folders import PrepareError, find_layout, prepare_folder
from reasoncd.loading import CheckpointError
from reasoncd.evaluation.figures import mask_panels, prediction_panels
from reasoncd.data.images import IMAGE_SUFFIXES, ImageReadError, image_size, images_by_stem, read_mask, read_rgb
from reasoncd.data.samples import SPLITS
from reasoncd.evaluation.metrics import METRIC_NAMES, METRIC_TITLES, ChangeMetrics
from reasoncd.io import OutputDir, OutputDirError, write_json_atomic, write_png_atomic
from reasoncd.loading import add_quantize_argument, require_bitsandbytes

# reasoncd.data.samples, .evaluation and torch pull in the model code (seconds to import): model mode imports
# them where it needs them, so scoring saved masks starts at once.

MAX_LISTED = 20  # names shown in an error before "... and N more"


class EvalError(Exception):
    """A problem with the user's input, reported without a traceback."""


def _listed(items: list[str]) -> str:
    shown = items[:MAX_LISTED] + ([f"... and {len(items) - MAX_LISTED} more"] if len(items) > MAX_LISTED else [])
    return "\n  " + "\n  ".join(shown)


# ---------------------------------------------------------------------------------------------------- model mode


def _has_json(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.json"))


def load_samples(data: Path, split: str, question: str, scratch: Path, threshold: int | None) -> tuple[list, dict]:
    """The samples to evaluate and where they came from: DATA/SPLIT/*.json, DATA/*.json, or a change-detection
    folder converted into `scratch`, asked `question`: its SPLIT/ pairs where it has train/val/test folders (as
    LEVIR-CD is distributed), otherwise all of its pairs."""
    from reasoncd.data.samples import load_split

    data = data.resolve()
    if not data.is_dir():
        raise EvalError(f"--data {data}: no such folder")
    if _has_json(data / split):
        return load_split(data, split), {"data": str(data), "split": split}
    if _has_json(data):
        return load_split(data.parent, data.name), {"data": str(data), "split": None}
    other_splits = [name for name in SPLITS if _has_json(data / name)]
    if other_splits:
        raise EvalError(f"--data {data}: no JSON samples in {split}/; samples are in {', '.join(other_splits)} "
                        "(choose one with --split)")
    if not question.strip():
        raise EvalError("--question is empty; name the change of interest, e.g. 'Building'")
    try:
        own_splits = [name for name, *_ in find_layout(data) if name]
        if own_splits and split not in own_splits:
            raise EvalError(f"--data {data}: no {split}/ folder; its splits are {', '.join(own_splits)} "
                            "(choose one with --split)")
        prepare_folder(data, question, scratch, threshold=threshold)
    except PrepareError as error:
        raise EvalError(f"--data {data}: no JSON samples ({split}/*.json or *.json), and as a change-detection "
                        f"folder: {error}") from None
    if own_splits:
        return load_split(scratch, split), {"data": str(data), "split": split, "question": question}
    samples = [sample for name in SPLITS if _has_json(scratch / name) for sample in load_split(scratch, name)]
    # One order for every pair, whatever split the conversion drew for it, so --max_samples is predictable.
    samples.sort(key=lambda sample: sample["pair_id"])
    return samples, {"data": str(data), "split": None, "question": question}


def check_sample_sizes(samples: list[dict]) -> None:
    """Image headers only, so a size mismatch stops the run before the model has spent any time."""
    from reasoncd.data.samples import PATH_FIELDS, SEG

    problems = []
    for sample in samples:
        fields = [f for f in PATH_FIELDS if f != "mask_path" or SEG in sample["answer"]]
        sizes = [image_size(sample[field]) for field in fields]
        if len(set(sizes)) > 1:
            problems.append(f"{sample['source']}: " + ", ".join(
                f"{sample[field]} {h} x {w}" for field, (h, w) in zip(fields, sizes)))
    if problems:
        raise EvalError(f"{len(problems)} samples have images and masks of different sizes (height x width):"
                        + _listed(problems))


def prediction_names(samples: list[dict]) -> list[str]:
    """File names for the predicted masks: the sample's JSON name, prefixed by its folder where names repeat."""
    stems = [Path(sample["source"]).stem for sample in samples]
    counts = Counter(stems)
    return [stem if counts[stem] == 1 else f"{Path(sample['source']).parent.name}_{stem}"
            for stem, sample in zip(stems, samples)]


def run_model(args) -> dict:
    import torch

    from reasoncd.loading import check_checkpoint, load_model
    from reasoncd.evaluation.scoring import predict_samples, score
    from reasoncd.data.samples import SampleError, load_pair

    check_checkpoint(args.model)
    require_bitsandbytes(args.quantize)
    with tempfile.TemporaryDirectory(prefix="reasoncd-eval-") as scratch:
        try:
            samples, data = load_samples(args.data, args.split, args.question, Path(scratch) / "samples",
                                         args.threshold)
        except SampleError as error:
            raise EvalError(str(error)) from None
        samples = samples[:args.max_samples] if args.max_samples else samples
        check_sample_sizes(samples)
        print(f"evaluating {len(samples)} samples from {_describe_data(data)}", file=sys.stderr)

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, processor = load_model(args.model, quantize=args.quantize, device=device)
        predictions = predict_samples(model, processor, samples, batch_size=args.batch_size,
                                      teacher_forced=args.teacher_forced, max_new_tokens=args.max_new_tokens)
        metrics = score(samples, predictions)
        names = prediction_names(samples)
        per_sample = [{"name": name, "img1_path": sample["img1_path"], "img2_path": sample["img2_path"],
                       "group": row["group"], "question": row["question"], "answer": row["answer"],
                       "seg": prediction["seg"], "iou": row["iou"]}
                      for name, sample, prediction, row in zip(names, samples, predictions, metrics["per_sample"])]
        summary = {
            "mode": "teacher_forced" if args.teacher_forced else "generate",
            "model": str(args.model.resolve()),
            **data,
            "n_samples": len(samples),
            **{key: value for key, value in metrics.items() if key != "per_sample"},
        }
        if not args.teacher_forced:
            summary["max_new_tokens"] = args.max_new_tokens
        with args.output.staged() as staging:
            for name, prediction in zip(names, predictions):
                write_png_atomic(staging / "predictions" / f"{name}.png", np.asarray(prediction["mask"], dtype=bool))
            chosen = best_median_worst(per_sample)
            for label, index in chosen:
                t1, t2, truth = load_pair(samples[index])
                entry = per_sample[index]
                prediction_panels(staging / "panels" / f"{label}.png", [{
                    "t1": t1, "t2": t2, "truth": truth, "pred": np.asarray(predictions[index]["mask"], dtype=bool),
                    "question": entry["question"], "answer": entry["answer"],
                    "note": f"{label} by IoU: {entry['name']}, IoU {entry['iou']:.3f}, {entry['group']}"}])
            write_outputs(staging, summary, per_sample, chosen)
    return summary


# ----------------------------------------------------------------------------------------------- prediction mode


def _images_by_stem(folder: Path, flag: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvalError(f"{flag} {folder}: no such folder")
    try:
        return images_by_stem(folder)
    except ValueError as error:
        raise EvalError(f"{flag} {error}") from None


def match_files(args) -> dict[str, dict[str, Path]]:
    """Per name (file name without extension): the prediction, the label and, if given, T1 and T2."""
    folders = {"pred": ("--pred_dir", args.pred_dir), "label": ("--label_dir", args.label_dir)}
    if args.t1_dir:
        folders.update(t1=("--t1_dir", args.t1_dir), t2=("--t2_dir", args.t2_dir))
    listings = {key: _images_by_stem(folder, flag) for key, (flag, folder) in folders.items()}
    if not listings["pred"] and not listings["label"]:
        raise EvalError(f"--pred_dir {args.pred_dir} and --label_dir {args.label_dir} hold no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    names = sorted(set(listings["pred"]) | set(listings["label"]))
    unmatched = []
    for name in names:
        missing = [f"{flag} {folder}" for key, (flag, folder) in folders.items() if name not in listings[key]]
        if missing:
            unmatched.append(f"{name}: not in {', '.join(missing)}")
    if unmatched:
        raise EvalError(f"{len(unmatched)} names are not in every folder (files are matched by name without "
                        f"extension):" + _listed(unmatched))
    return {name: {key: listing[name] for key, listing in listings.items()} for name in names}


def run_predictions(args) -> dict:
    files = match_files(args)
    mismatched = []
    for name, paths in files.items():
        sizes = {key: image_size(path) for key, path in paths.items()}
        if len(set(sizes.values())) > 1:
            mismatched.append(" vs ".join(f"{paths[key]} ({h} x {w})" for key, (h, w) in sizes.items()))
    if mismatched:
        raise EvalError(f"{len(mismatched)} predictions differ in size from their label or images (height x width):"
                        + _listed(mismatched))

    def masks(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            pred = read_mask(files[name]["pred"], args.threshold)
        except ImageReadError as error:
            raise EvalError(f"{error} (--threshold T binarises prediction masks with > T)") from None
        return pred, read_mask(files[name]["label"])

    metrics = ChangeMetrics()
    per_sample = []
    for name in files:
        pred, truth = masks(name)
        metrics.update(pred, truth)
        per_sample.append({"name": name, "prediction": str(files[name]["pred"]), "label": str(files[name]["label"]),
                           "iou": metrics.sample_ious[-1]})
    summary = {
        "mode": "predictions",
        "pred_dir": str(args.pred_dir.resolve()),
        "label_dir": str(args.label_dir.resolve()),
        "threshold": args.threshold,
        **metrics.compute(),
    }
    with args.output.staged() as staging:
        chosen = best_median_worst(per_sample)
        for label, index in chosen:
            name = per_sample[index]["name"]
            pred, truth = masks(name)
            note = f"IoU {per_sample[index]['iou']:.3f}"
            if args.t1_dir:
                row = {"t1": read_rgb(files[name]["t1"])[0], "t2": read_rgb(files[name]["t2"])[0], "truth": truth,
                       "pred": pred, "question": name, "answer": files[name]["pred"].name,
                       "note": f"{label} by {note}"}
                prediction_panels(staging / "panels" / f"{label}.png", [row])
            else:
                mask_panels(staging / "panels" / f"{label}.png", [{"truth": truth, "pred": pred, "name": name,
                                                                   "note": note}], title=f"{label} by IoU")
        write_outputs(staging, summary, per_sample, chosen)
    return summary


# --------------------------------------------------------------------------------------------------------- outputs


def best_median_worst(per_sample: list[dict]) -> list[tuple[str, int]]:
    """Indices of the best, median and worst sample by IoU (ties broken by name, so reruns pick the same)."""
    order = sorted(range(len(per_sample)), key=lambda i: (per_sample[i]["iou"], per_sample[i]["name"]))
    return [("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])]


def _describe_data(data: dict) -> str:
    if data.get("question") is not None:
        pairs = f"split {data['split']}" if data["split"] else "all pairs"
        return f"{data['data']} (change-detection folder, {pairs}, question {data['question']!r})"
    return data["data"] + (f" (split {data['split']})" if data["split"] else "")


def _number(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_report(summary: dict, per_sample: list[dict], chosen: list[tuple[str, int]]) -> str:
    """report.md: the overall figures, the breakdown by question kind and the text figures, as GitHub tables."""
    if "data" in summary:
        source = _describe_data(summary)
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
        "| " + " | ".join(_number(summary[name]) for name in METRIC_NAMES) + " |", "",
        f"Pixels: TP {summary['tp']:,}, FP {summary['fp']:,}, FN {summary['fn']:,}, TN {summary['tn']:,}.", "",
    ]
    if "groups" in summary:
        lines += ["## By question kind", "",
                  "| kind | samples | " + " | ".join(METRIC_TITLES[name] for name in METRIC_NAMES) + " |",
                  "|---|---:|" + "---:|" * len(METRIC_NAMES)]
        for group, figures in summary["groups"].items():
            lines.append(f"| {group} | {figures['n_samples']} | "
                         + " | ".join(_number(figures[name]) for name in METRIC_NAMES) + " |")
        text, steering = summary["text"], summary["steering"]
        lines += ["", "## Text", "", "| figure | value | over |", "|---|---:|---:|",
                  f"| `[SEG]` emitted where the change of interest is present | "
                  f"{_number(text['seg_emission_rate'])} | {text['n_present']} samples |",
                  f"| no `[SEG]` where it is absent (absent-CRoI accuracy) | "
                  f"{_number(text['absent_accuracy'])} | {text['n_absent']} samples |",
                  f"| mask closer to the asked change than to another one (steering) | "
                  f"{_number(steering['accuracy'])} | {steering['n_comparisons']} comparisons |", ""]
        if summary["mode"] == "teacher_forced":
            lines += ["Teacher forced: `[SEG]` counts as emitted where some answer position's most likely next token "
                      "is `[SEG]` (the masks come from the reference's `[SEG]`).", ""]
        lines += question_use_report(summary)
    lines += ["## Panels", "", "| | sample | IoU |", "|---|---|---:|"]
    lines += [f"| [{label}](panels/{label}.png) | {per_sample[index]['name']} | {_number(per_sample[index]['iou'])} |"
              for label, index in chosen]
    return "\n".join(lines) + "\n"


def question_use_report(summary: dict) -> list[str]:
    """report.md's section on whether the masks follow the question (see reasoncd.evaluation.scoring)."""
    sensitivity, counterfactual = summary["question_sensitivity"], summary["counterfactual"]
    return [
        "## Does the mask follow the question?", "",
        "| figure | value | over |", "|---|---:|---:|",
        f"| question sensitivity: mean IoU between masks for different changes of one pair (1 = question ignored) | "
        f"{_number(sensitivity['mean_iou'])} | {sensitivity['n_comparisons']} comparisons |",
        f"| the same between their truths (what a perfect model scores) | "
        f"{_number(sensitivity['truth_mean_iou'])} | {sensitivity['n_comparisons']} comparisons |",
        f"| F1 of the masks as predicted | {_number(counterfactual['f1_original'])} | "
        f"{counterfactual['n_rows']} samples |",
        f"| F1 with the `[SEG]` states swapped between questions of a pair (counterfactual) | "
        f"{_number(counterfactual['f1_swapped'])} | {counterfactual['n_rows']} samples |",
        f"| counterfactual F1 drop (about 0 = the mask ignores the prompt) | {_number(counterfactual['f1_drop'])} | "
        f"{counterfactual['n_rows']} samples |",
        f"| fidelity score: mean of F1, steering, absent-CRoI accuracy, 1 - sensitivity | "
        f"{_number(summary['fidelity_score'])} | |", "",
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


def write_outputs(staging: Path, summary: dict, per_sample: list[dict], chosen: list[tuple[str, int]]) -> None:
    write_json_atomic(staging / "metrics.json", summary)
    write_json_atomic(staging / "per_sample.json", per_sample)
    (staging / "report.md").write_text(render_report(summary, per_sample, chosen), encoding="utf-8")


# ------------------------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model mode")
    model.add_argument("--model", type=Path, help="checkpoint folder (build_reasoncd.py or train.py's model/)")
    model.add_argument("--data", type=Path, help="JSON samples (split folders or flat) or a change-detection folder")
    model.add_argument("--split", default="test", choices=SPLITS,
                       help="split to evaluate where the data has split folders (default test)")
    model.add_argument("--question", default="Building",
                       help="question asked about every pair of a change-detection folder (default 'Building')")
    model.add_argument("--teacher_forced", action="store_true",
                       help="feed the reference answer and read the mask at its [SEG] (LISA's validation mode) "
                            "instead of free generation")
    model.add_argument("--batch_size", type=int, default=8, help="questions per forward pass (default 8)")
    model.add_argument("--max_samples", type=int, help="evaluate only the first N samples")
    model.add_argument("--max_new_tokens", type=int, default=48, help="answer length limit (default 48)")
    model.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    add_quantize_argument(model)
    predictions = parser.add_argument_group("prediction mode")
    predictions.add_argument("--pred_dir", type=Path, help="predicted masks of any method, named like the labels")
    predictions.add_argument("--label_dir", type=Path, help="ground-truth change labels (0/1 or 0/255)")
    predictions.add_argument("--t1_dir", type=Path, help="earlier images, for the panels (with --t2_dir)")
    predictions.add_argument("--t2_dir", type=Path, help="later images, for the panels (with --t1_dir)")
    parser.add_argument("--threshold", type=int,
                        help="binarise non-binary 8-bit masks with > T: prediction masks (prediction mode) or the "
                             "labels of a change-detection folder (model mode)")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder holding other files; only eval.py's outputs are replaced")
    args = parser.parse_args(argv)
    if args.quantize is not None and args.pred_dir:
        parser.error("--quantize applies to model mode (--model/--data), not to --pred_dir")

    if args.pred_dir or args.label_dir:
        if args.model or args.data:
            parser.error("give either --model/--data (model mode) or --pred_dir/--label_dir (prediction mode)")
        if not (args.pred_dir and args.label_dir):
            parser.error("prediction mode needs both --pred_dir and --label_dir")
        if bool(args.t1_dir) != bool(args.t2_dir):
            parser.error("--t1_dir and --t2_dir go together")
    elif not (args.model and args.data):
        parser.error("model mode needs --model and --data (or use --pred_dir/--label_dir)")
    for name in ("batch_size", "max_samples", "max_new_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.threshold is not None and not 0 <= args.threshold < 255:
        parser.error("--threshold must be in 0..254 (8-bit masks, change is > T)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    inputs = [args.model, args.data, args.pred_dir, args.label_dir, args.t1_dir, args.t2_dir]
    try:
        # Before any work: a folder eval.py may not write (a training run, the model, ...) is refused now.
        args.output = OutputDir(args.output_dir, "eval.py", inputs=inputs, overwrite=args.overwrite)
        summary = run_predictions(args) if args.pred_dir else run_model(args)
    except (EvalError, ImageReadError, FileNotFoundError, ImportError, CheckpointError, OutputDirError) as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        return 2
    figures = ", ".join(f"{METRIC_TITLES[name]} {summary[name]:.3f}" for name in METRIC_NAMES)
    print(f"{summary['mode']}, {summary['n_samples']} samples: {figures}")
    if "question_sensitivity" in summary:
        print(question_use_line(summary))
    print(f"wrote {args.output_dir}/ (metrics.json, report.md, panels/)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
