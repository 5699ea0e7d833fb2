"""Change-detection metrics of the paper (§IV-B) plus LISA's gIoU and cIoU.

Change is the positive class. F1, precision, recall, OA, IoU and kappa come from one confusion matrix summed over
every pixel of every sample (the convention of the change-detection literature), gIoU is the mean of per-sample
IoUs and cIoU the total intersection over the total union (LISA).

Degenerate cases follow scikit-learn with ``zero_division=0`` so the figures can be checked against it:

* precision is 0.0 when nothing is predicted as change, recall is 0.0 when nothing changed, F1 and IoU are 0.0 when
  neither the prediction nor the target has any change (``f1_score``/``jaccard_score`` with ``zero_division=0``);
* kappa is 0.0 when the expected agreement is 1, i.e. prediction and target are the same constant map (there is no
  agreement beyond chance left to measure; ``cohen_kappa_score(..., replace_undefined_by=0.0)``);
* per sample, an empty prediction of an empty target has IoU 1.0 (LISA), so gIoU rewards correct "no change" answers;
* cIoU is the change-class IoU over all pixels, which makes it equal to ``iou`` by definition (reported under both
  names because the reasoning-segmentation literature quotes it as cIoU); 0.0 when the total union is empty.

Counts are Python integers, so sums over thousands of 30,000-pixel-wide mosaics cannot overflow.

`Steering` compares a mask with its own truth and with other changes' truths (whether the mask follows what was
asked); the scoring of single questions and of questions about several changes both use it.
"""
from __future__ import annotations

import numpy as np

# Another change's truth only tests steering when it covers a different region from the asked one's.
STEERING_MAX_TRUTH_OVERLAP = 0.5

METRIC_NAMES = ("f1", "precision", "recall", "oa", "iou", "kappa", "giou", "ciou")
# How reports, model cards and messages write each metric.
METRIC_TITLES = {"f1": "F1", "precision": "Precision", "recall": "Recall", "oa": "OA", "iou": "IoU",
                 "kappa": "Kappa", "giou": "gIoU", "ciou": "cIoU"}


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, 0.0 for an empty denominator (scikit-learn's zero_division=0)."""
    return numerator / denominator if denominator else 0.0


def binary_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """F1, precision, recall, overall accuracy, IoU and Cohen's kappa of one binary confusion matrix.

    Returns fractions in [0, 1] (kappa in [-1, 1]); see the module docstring for the degenerate cases.
    Raises ValueError when the matrix is empty or has a negative count.
    """
    tp, fp, fn, tn = (int(value) for value in (tp, fp, fn, tn))
    if min(tp, fp, fn, tn) < 0:
        raise ValueError(f"confusion counts must be non-negative, got tp={tp} fp={fp} fn={fn} tn={tn}")
    total = tp + fp + fn + tn
    if total == 0:
        raise ValueError("the confusion matrix is empty: no pixels were counted")

    observed = (tp + tn) / total
    # Chance agreement from the marginals; products of Python ints stay exact for any image size.
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (total * total)
    kappa = (observed - expected) / (1.0 - expected) if expected < 1.0 else 0.0
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "oa": observed,
        "iou": _ratio(tp, tp + fp + fn),
        "kappa": kappa,
    }


def _iou_of_counts(intersection: int, union: int) -> float:
    """Per-sample IoU: 1.0 for an empty prediction of an empty target (LISA's convention)."""
    return intersection / union if union else 1.0


def mask_iou(a, b) -> float:
    """IoU of two boolean masks of one sample (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return _iou_of_counts(int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b)))


def _as_binary(array, name: str) -> np.ndarray:
    """A bool view of a bool or 0/1 array; anything else is a caller error, not something to guess about."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be a boolean or 0/1 mask, got values {np.unique(array)[:8].tolist()}")
    return array.astype(bool)


class ChangeMetrics:
    """Accumulates change-detection metrics over binary masks.

    ``update(pred, target)`` takes one sample as two (H, W) masks or a batch as two (N, H, W) masks (bool or 0/1);
    ``compute()`` returns the metrics as fractions together with the raw counts.

    >>> metrics = ChangeMetrics()
    >>> metrics.update(np.array([[1, 0], [0, 0]], bool), np.array([[1, 1], [0, 0]], bool))
    >>> metrics.compute()["f1"]
    0.6666666666666666
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0
        self.sample_ious: list[float] = []

    def update(self, pred, target) -> None:
        pred = _as_binary(pred, "pred")
        target = _as_binary(target, "target")
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: pred {pred.shape}, target {target.shape}")
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        elif pred.ndim != 3:
            raise ValueError(f"masks must be (H, W) or (N, H, W), got shape {pred.shape}")

        for sample_pred, sample_target in zip(pred, target):
            tp = int(np.count_nonzero(sample_pred & sample_target))
            predicted = int(np.count_nonzero(sample_pred))
            changed = int(np.count_nonzero(sample_target))
            fp, fn = predicted - tp, changed - tp
            self.tp += tp
            self.fp += fp
            self.fn += fn
            self.tn += sample_pred.size - tp - fp - fn
            union = tp + fp + fn
            self.sample_ious.append(_iou_of_counts(tp, union))

    @property
    def n_samples(self) -> int:
        return len(self.sample_ious)

    def compute(self) -> dict[str, float | int]:
        if not self.n_samples:
            raise ValueError("no samples: call update() before compute()")
        result: dict[str, float | int] = binary_metrics(self.tp, self.fp, self.fn, self.tn)
        result["giou"] = float(np.mean(self.sample_ious))
        result["ciou"] = result["iou"]
        result.update(tp=self.tp, fp=self.fp, fn=self.fn, tn=self.tn, n_samples=self.n_samples)
        return result


class Steering:
    """Per comparison with another change's truth (covering a different region): is the mask closer to its own
    truth? Used for the asked CRoI against the pair's other changes, and for each target of a question about several
    changes against the question's other targets."""

    def __init__(self) -> None:
        self.total = self.right = 0

    def update(self, pred: np.ndarray, truth: np.ndarray, others) -> None:
        own = mask_iou(pred, truth)
        for other in others:
            if mask_iou(truth, other) > STEERING_MAX_TRUTH_OVERLAP:
                continue
            self.total += 1
            self.right += own > mask_iou(pred, other)

    def compute(self) -> dict:
        return {"accuracy": self.right / self.total if self.total else None, "n_comparisons": self.total}
