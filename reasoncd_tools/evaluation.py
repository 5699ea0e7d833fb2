"""Running a model over samples and scoring it: the paper's pixel metrics plus the reasoning breakdown.

Groups: `explicit`, `implicit_seen`, `implicit_heldout`, `explanation`, `absent` (from the samples' metadata).
Text figures: `[SEG]` emission rate where the CRoI is present, absent-CRoI accuracy (no `[SEG]` where absent), and
steering: on pairs where another CRoI changed elsewhere, the share of masks closer (IoU) to the asked CRoI's truth.
"""

from collections import defaultdict

import numpy as np
import torch

from .images import read_mask
from .metrics import ChangeMetrics
from .samples import SEG, load_images, load_mask

GROUPS = ("explicit", "implicit_seen", "implicit_heldout", "explanation", "absent")
# Another CRoI's truth only tests steering when it covers a different region from the asked one's.
STEERING_MAX_TRUTH_OVERLAP = 0.5


def group_of(sample: dict) -> str:
    kind = sample.get("kind", "explicit")
    if kind == "implicit":
        return "implicit_heldout" if sample.get("heldout") else "implicit_seen"
    return kind if kind in GROUPS else "explicit"


def _batches_by_pair(samples: list[dict], batch_size: int):
    """Batches of sample indices in which questions about one pair stay together (the pair is encoded once)."""
    by_pair = defaultdict(list)
    for index, sample in enumerate(samples):
        by_pair[(sample["img1_path"], sample["img2_path"])].append(index)
    batch = []
    for indices in by_pair.values():
        if batch and len(batch) + len(indices) > batch_size:
            yield batch
            batch = []
        batch.extend(indices)
    if batch:
        yield batch


@torch.no_grad()
def predict_samples(model, processor, samples: list[dict], *, batch_size: int = 8, teacher_forced: bool = False,
                    max_new_tokens: int = 48, progress: bool = True) -> list[dict]:
    """
    One `{"text", "mask", "seg"}` per sample. Free generation (what a user gets) by default; `teacher_forced`
    feeds the reference answer and reads the mask at its `[SEG]` (LISA's validation mode).
    """
    from tqdm.auto import tqdm

    model.eval()
    results: list[dict | None] = [None] * len(samples)
    bar = tqdm(total=len(samples), desc="teacher-forced" if teacher_forced else "generating", disable=not progress)
    for indices in _batches_by_pair(samples, batch_size):
        pair_keys, pairs, pair_index = {}, [], []
        for i in indices:
            key = (samples[i]["img1_path"], samples[i]["img2_path"])
            if key not in pair_keys:
                pair_keys[key] = len(pairs)
                pairs.append(load_images(samples[i]))  # images only: masks are read when scoring
            pair_index.append(pair_keys[key])
        inputs = processor(
            images_t1=[p[0] for p in pairs], images_t2=[p[1] for p in pairs],
            text=[samples[i]["question"] for i in indices], pair_index=pair_index,
            answers=[samples[i]["answer"] for i in indices] if teacher_forced else None,
            return_tensors="pt",
        ).to(model.device)
        if teacher_forced:
            inputs.pop("labels")
            outputs = model(**inputs)
            texts = [samples[i]["answer"] for i in indices]
            rows = inputs["pair_index"]
            masks = processor.post_process_masks(outputs.pred_masks, outputs.seg_present,
                                                 inputs["reshaped_sizes"][rows], inputs["image_sizes"][rows].tolist())
            seg = outputs.seg_present.tolist()
        else:
            outputs = model.generate(**inputs, max_new_tokens=max_new_tokens)
            processed = processor.post_process_generation(outputs)
            texts = [p["text"] for p in processed]
            masks = [p["mask"] for p in processed]
            seg = outputs.seg_present.tolist()
        for row, i in enumerate(indices):
            results[i] = {"text": texts[row], "mask": masks[row], "seg": bool(seg[row])}
        bar.update(len(indices))
    bar.close()
    return results


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def score(samples: list[dict], predictions: list[dict]) -> dict:
    """The metrics dict: overall pixel metrics, per group, text figures, steering, and per-sample IoU."""
    overall = ChangeMetrics()
    groups = {name: ChangeMetrics() for name in GROUPS}
    seg_expected = seg_emitted = absent_total = absent_right = 0
    steer_total = steer_right = 0
    per_sample = []
    for sample, prediction in zip(samples, predictions):
        truth = load_mask(sample, prediction["mask"].shape)  # the images themselves are not needed here
        overall.update(prediction["mask"], truth)
        group = group_of(sample)
        groups[group].update(prediction["mask"], truth)
        present = SEG in sample["answer"]
        if present:
            seg_expected += 1
            seg_emitted += prediction["seg"]
        else:
            absent_total += 1
            absent_right += not prediction["seg"]
        if present:
            own = _iou(prediction["mask"], truth)
            for other_path in sample.get("other_masks", {}).values():
                other = read_mask(other_path)
                if _iou(truth, other) > STEERING_MAX_TRUTH_OVERLAP:
                    continue
                steer_total += 1
                steer_right += own > _iou(prediction["mask"], other)
        per_sample.append({"source": sample.get("source"), "group": group, "question": sample["question"],
                           "answer": prediction["text"], "iou": _iou(prediction["mask"], truth)})
    result = overall.compute()
    result["groups"] = {name: {**m.compute(), "n_samples": m.n_samples} for name, m in groups.items() if m.n_samples}
    result["text"] = {
        "seg_emission_rate": seg_emitted / seg_expected if seg_expected else None,
        "absent_accuracy": absent_right / absent_total if absent_total else None,
        "n_present": seg_expected,
        "n_absent": absent_total,
    }
    result["steering"] = {"accuracy": steer_right / steer_total if steer_total else None, "n_comparisons": steer_total}
    result["per_sample"] = per_sample
    return result
