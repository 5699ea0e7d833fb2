"""eval.py's work: a model on samples (model mode) or any method's saved masks against labels (prediction mode),
every input checked before anything is written, all outputs written at once into the output folder.

Model mode reads JSON samples or converts a change-detection folder on the fly, runs the model
(reasoncd.evaluation.scoring) and saves its masks; prediction mode matches masks to labels by file name. Both write
metrics.json, per_sample.json, report.md (reasoncd.evaluation.report) and panels of the best, median and worst
sample by IoU.
"""

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from reasoncd.data.folders import find_layout, prepare_folder
from reasoncd.data.images import IMAGE_SUFFIXES, ImageReadError, image_size, images_by_stem, read_mask, read_rgb
from reasoncd.data.samples import SPLITS, PrepareError, training_sample
from reasoncd.evaluation.figures import mask_panels, prediction_panels, samples_figure, targets_row
from reasoncd.evaluation.metrics import ChangeMetrics
from reasoncd.evaluation.report import best_median_worst, describe_data, split_report, with_phrasings, write_outputs
from reasoncd.io import OutputDir, write_json_atomic, write_png_atomic, write_text_atomic
from reasoncd.messages import listed, size_mismatch
from reasoncd.loading import require_bitsandbytes

# reasoncd.evaluation.scoring, reasoncd.loading's model loading and torch pull in the model code (seconds to
# import): model mode imports them where it needs them, so scoring saved masks starts at once.

COMMAND = "eval.py"  # the name the output folder's marker records


class EvalError(Exception):
    """A problem with the user's input, reported without a traceback."""


def _listed(items: list[str]) -> str:
    return "\n  " + listed(items)


def evaluate(*, output_dir: Path, overwrite: bool = False, model: Path | None = None, data: Path | None = None,
             pred_dir: Path | None = None, label_dir: Path | None = None, t1_dir: Path | None = None,
             t2_dir: Path | None = None, threshold: int | None = None, **model_options) -> dict:
    """
    Evaluates into `output_dir` and returns the summary (metrics.json's content): prediction mode when `pred_dir`
    is given (with `label_dir`, optionally `t1_dir`/`t2_dir` for the panels), model mode otherwise (`model`,
    `data` and the options of `evaluate_model`). The keywords are eval.py's options.

    Raises EvalError, ImageReadError, FileNotFoundError, ImportError, CheckpointError or OutputDirError for bad
    input; nothing is written then.
    """
    inputs = [model, data, pred_dir, label_dir, t1_dir, t2_dir]
    # Before any work: a folder eval.py may not write (a training run, the model, ...) is refused now.
    with OutputDir(output_dir, COMMAND, inputs=inputs, overwrite=overwrite) as output:
        if pred_dir:
            return evaluate_predictions(output, pred_dir, label_dir, t1_dir=t1_dir, t2_dir=t2_dir,
                                        threshold=threshold)
        return evaluate_model(output, model, data, threshold=threshold, **model_options)


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
        mismatch = size_mismatch({sample[field]: image_size(sample[field]) for field in fields})
        if mismatch:
            problems.append(f"{sample['source']}: {mismatch}")
    if problems:
        raise EvalError(f"{len(problems)} samples have images and masks of different sizes (height x width):"
                        + _listed(problems))


def prediction_names(samples: list[dict]) -> list[str]:
    """File names for the predicted masks: the sample's JSON name, prefixed by its folder where names repeat."""
    stems = [Path(sample["source"]).stem for sample in samples]
    counts = Counter(stems)
    return [stem if counts[stem] == 1 else f"{Path(sample['source']).parent.name}_{stem}"
            for stem, sample in zip(stems, samples)]


def evaluate_model(output: OutputDir, model: Path, data: Path, *, split: str = "test", question: str = "Building",
                   threshold: int | None = None, teacher_forced: bool = False, batch_size: int = 8,
                   max_samples: int | None = None, max_new_tokens: int = 48, device: str | None = None,
                   quantize: int | None = None, presence_threshold: float | None = None) -> dict:
    """The checkpoint `model` on the samples of `data` (see load_samples): predictions/, panels/ and the metrics
    files in `output`; returns the summary."""
    import torch

    from reasoncd.data.samples import SampleError, load_pair
    from reasoncd.evaluation.scoring import predict_samples, score
    from reasoncd.loading import check_checkpoint, load_model

    check_checkpoint(model)
    require_bitsandbytes(quantize)
    with tempfile.TemporaryDirectory(prefix="reasoncd-eval-") as scratch:
        try:
            samples, source = load_samples(data, split, question, Path(scratch) / "samples", threshold)
        except SampleError as error:
            raise EvalError(str(error)) from None
        samples = samples[:max_samples] if max_samples else samples
        check_sample_sizes(samples)
        print(f"evaluating {len(samples)} samples from {describe_data(source)}", file=sys.stderr)

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        network, processor = load_model(model, quantize=quantize, device=device, presence_threshold=presence_threshold)
        predictions = predict_samples(network, processor, samples, batch_size=batch_size,
                                      teacher_forced=teacher_forced, max_new_tokens=max_new_tokens)
        metrics = score(samples, predictions)
        names = prediction_names(samples)
        per_sample = [{"name": name, "img1_path": sample["img1_path"], "img2_path": sample["img2_path"],
                       "group": row["group"], "question": row["question"], "answer": row["answer"],
                       "seg": prediction["seg"], "iou": row["iou"],
                       "targets": [target["label"] for target in prediction.get("targets") or []]}
                      for name, sample, prediction, row in zip(names, samples, predictions, metrics["per_sample"])]
        summary = {
            "mode": "teacher_forced" if teacher_forced else "generate",
            "model": str(model.resolve()),
            **source,
            "n_samples": len(samples),
            **{key: value for key, value in metrics.items() if key != "per_sample"},
        }
        if not teacher_forced:
            summary["max_new_tokens"] = max_new_tokens
        if getattr(network, "presence", None) is not None:  # the decision's threshold these figures were read at
            summary["presence_threshold"] = network.config.presence_threshold
        with output.staged() as staging:
            for name, prediction in zip(names, predictions):
                write_png_atomic(staging / "predictions" / f"{name}.png", np.asarray(prediction["mask"], dtype=bool))
            chosen = best_median_worst(per_sample)
            for label, index in chosen:
                entry = per_sample[index]
                if samples[index].get("targets"):  # each target in its own colour
                    row = targets_row(samples[index], predictions[index])
                else:
                    t1, t2, truth = load_pair(samples[index])
                    row = {"t1": t1, "t2": t2, "truth": truth, "question": entry["question"],
                           "pred": np.asarray(predictions[index]["mask"], dtype=bool), "answer": entry["answer"]}
                row["note"] = f"{label} by IoU: {entry['name']}, IoU {entry['iou']:.3f}, {entry['group']}"
                prediction_panels(staging / "panels" / f"{label}.png", [row])
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


def match_files(pred_dir: Path, label_dir: Path, t1_dir: Path | None = None,
                t2_dir: Path | None = None) -> dict[str, dict[str, Path]]:
    """Per name (file name without extension): the prediction, the label and, if given, T1 and T2."""
    folders = {"pred": ("--pred_dir", pred_dir), "label": ("--label_dir", label_dir)}
    if t1_dir:
        folders.update(t1=("--t1_dir", t1_dir), t2=("--t2_dir", t2_dir))
    listings = {key: _images_by_stem(folder, flag) for key, (flag, folder) in folders.items()}
    if not listings["pred"] and not listings["label"]:
        raise EvalError(f"--pred_dir {pred_dir} and --label_dir {label_dir} hold no images "
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


def check_file_sizes(files: dict[str, dict[str, Path]]) -> None:
    """Each prediction has the size of its label (and images), from the image headers alone."""
    mismatched = []
    for paths in files.values():
        mismatch = size_mismatch({path: image_size(path) for path in paths.values()})
        if mismatch:
            mismatched.append(mismatch)
    if mismatched:
        raise EvalError(f"{len(mismatched)} predictions differ in size from their label or images (height x width):"
                        + _listed(mismatched))


def evaluate_predictions(output: OutputDir, pred_dir: Path, label_dir: Path, *, t1_dir: Path | None = None,
                         t2_dir: Path | None = None, threshold: int | None = None) -> dict:
    """Masks in `pred_dir` against the labels of the same name in `label_dir`: panels/ and the metrics files in
    `output`; returns the summary. `threshold` binarises 8-bit prediction masks that are not 0/1 or 0/255."""
    files = match_files(pred_dir, label_dir, t1_dir, t2_dir)
    check_file_sizes(files)

    def masks(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            pred = read_mask(files[name]["pred"], threshold)
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
        "pred_dir": str(pred_dir.resolve()),
        "label_dir": str(label_dir.resolve()),
        "threshold": threshold,
        **metrics.compute(),
    }
    with output.staged() as staging:
        chosen = best_median_worst(per_sample)
        for label, index in chosen:
            name = per_sample[index]["name"]
            pred, truth = masks(name)
            note = f"IoU {per_sample[index]['iou']:.3f}"
            if t1_dir:
                row = {"t1": read_rgb(files[name]["t1"])[0], "t2": read_rgb(files[name]["t2"])[0], "truth": truth,
                       "pred": pred, "question": name, "answer": files[name]["pred"].name,
                       "note": f"{label} by {note}"}
                prediction_panels(staging / "panels" / f"{label}.png", [row])
            else:
                mask_panels(staging / "panels" / f"{label}.png", [{"truth": truth, "pred": pred, "name": name,
                                                                   "note": note}], title=f"{label} by IoU")
        write_outputs(staging, summary, per_sample, chosen)
    return summary


def final_test(model, processor, samples: list[dict], output_dir: Path, *, batch_size: int,
               max_samples: int | None = None, train_samples: list[dict] | None = None,
               train_eval_samples: int = 0, extra: dict | None = None) -> dict:
    """
    train.py's evaluation in free generation: the test split and a fixed sample of the training split
    (`training_sample`). Writes metrics.json (the test split's figures, the training sample's under "train_split",
    and `extra`'s entries),
    report.md (both side by side), predictions.json and samples.png in `output_dir`; returns metrics.json's content.
    """
    from reasoncd.evaluation.scoring import predict_samples, score

    samples = samples[:max_samples] if max_samples else samples
    predictions = predict_samples(model, processor, samples, batch_size=batch_size)
    metrics = score(samples, predictions)
    summary = {k: v for k, v in metrics.items() if k != "per_sample"}
    splits = with_phrasings("test", summary)
    seen = training_sample(train_samples or [], train_eval_samples)
    if seen:
        train_metrics = score(seen, predict_samples(model, processor, seen, batch_size=batch_size))
        summary["train_split"] = splits["train"] = {k: v for k, v in train_metrics.items() if k != "per_sample"}
        summary["train_split"]["n_samples"] = len(seen)
    summary["n_samples"] = len(samples)
    summary.update(extra or {})
    write_json_atomic(output_dir / "metrics.json", summary)
    write_json_atomic(output_dir / "predictions.json", metrics["per_sample"])
    write_text_atomic(output_dir / "report.md", split_report(splits))
    samples_figure(samples, predictions, output_dir / "samples.png")
    return summary
