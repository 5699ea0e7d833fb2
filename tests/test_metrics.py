"""Change-detection metrics checked against scikit-learn, a hand-worked gIoU/cIoU example and the evaluate module."""
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)

from reasoncd.evaluation.metrics import ChangeMetrics, binary_metrics, mask_iou

METRIC_MODULE = Path(__file__).resolve().parents[1] / "metrics" / "change_detection"


def sklearn_metrics(preds, targets) -> dict:
    """The global metrics scikit-learn gives on all pixels of all samples, flattened into one vector."""
    y_pred = np.concatenate([p.ravel() for p in preds]).astype(int)
    y_true = np.concatenate([t.ravel() for t in targets]).astype(int)
    with warnings.catch_warnings():
        # The degenerate cases are the point of some tests; scikit-learn warns about each of them.
        warnings.simplefilter("ignore")
        return {
            "f1": f1_score(y_true, y_pred, zero_division=0),
            "precision": precision_score(y_true, y_pred, zero_division=0),
            "recall": recall_score(y_true, y_pred, zero_division=0),
            "oa": accuracy_score(y_true, y_pred),
            "iou": jaccard_score(y_true, y_pred, zero_division=0),
            "kappa": cohen_kappa_score(y_true, y_pred, replace_undefined_by=0.0),
        }


def accumulate(preds, targets) -> dict:
    metrics = ChangeMetrics()
    for pred, target in zip(preds, targets):
        metrics.update(pred, target)
    return metrics.compute()


def random_masks(seed: int):
    rng = np.random.default_rng(seed)
    shapes = [(32, 48), (64, 64), (17, 5), (128, 96)]
    targets = [rng.random(shape) < rng.uniform(0.05, 0.6) for shape in shapes]
    # Predictions correlated with the targets so kappa and F1 are far from their chance values.
    preds = [np.where(rng.random(t.shape) < 0.8, t, rng.random(t.shape) < 0.3) for t in targets]
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_match_sklearn(seed):
    preds, targets = random_masks(seed)
    result = accumulate(preds, targets)
    expected = sklearn_metrics(preds, targets)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert 0.3 < result["kappa"] < 1.0
    assert result["n_samples"] == 4
    assert result["tp"] + result["fp"] + result["fn"] + result["tn"] == sum(t.size for t in targets)


EMPTY = np.zeros((8, 8), bool)
FULL = np.ones((8, 8), bool)
HALF = np.zeros((8, 8), bool)
HALF[:4] = True


@pytest.mark.parametrize(
    "pred, target",
    [
        (EMPTY, EMPTY),  # nothing changed, nothing predicted
        (FULL, FULL),  # everything changed and predicted
        (EMPTY, HALF),  # empty prediction
        (EMPTY, FULL),
        (HALF, HALF),  # perfect prediction
        (FULL, EMPTY),  # all false alarms
        (HALF, FULL),
    ],
    ids=["all-empty", "all-change", "empty-pred", "empty-pred-full", "perfect", "false-alarm", "half-of-full"],
)
def test_edge_cases_match_sklearn(pred, target):
    result = accumulate([pred], [target])
    for name, value in sklearn_metrics([pred], [target]).items():
        assert result[name] == pytest.approx(value, abs=1e-12), name


def test_edge_case_conventions():
    nothing = accumulate([EMPTY], [EMPTY])
    assert (nothing["f1"], nothing["iou"], nothing["kappa"], nothing["oa"]) == (0.0, 0.0, 0.0, 1.0)
    assert nothing["giou"] == 1.0  # LISA: an empty prediction of an empty target is a perfect sample
    assert nothing["ciou"] == 0.0
    perfect = accumulate([HALF], [HALF])
    assert all(perfect[name] == 1.0 for name in ("f1", "precision", "recall", "oa", "iou", "kappa", "giou", "ciou"))
    missed = accumulate([EMPTY], [HALF])
    assert (missed["precision"], missed["recall"], missed["f1"], missed["giou"]) == (0.0, 0.0, 0.0, 0.0)


def test_giou_and_ciou_by_hand():
    # Sample 1: 2 predicted, 2 true, 1 shared -> IoU 1/3. Sample 2: empty vs empty -> IoU 1.
    # Sample 3: 4 predicted inside 8 true -> IoU 4/8.
    pred1 = np.zeros((4, 4), bool)
    pred1[0, :2] = True
    target1 = np.zeros((4, 4), bool)
    target1[0, 1:3] = True
    pred3 = np.zeros((4, 4), bool)
    pred3[0] = True
    target3 = np.zeros((4, 4), bool)
    target3[:2] = True
    result = accumulate([pred1, EMPTY[:4, :4], pred3], [target1, EMPTY[:4, :4], target3])
    assert result["giou"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    # Totals: intersection 1 + 0 + 4 = 5, union 3 + 0 + 8 = 11.
    assert result["ciou"] == pytest.approx(5 / 11)
    assert result["iou"] == result["ciou"]
    assert (result["tp"], result["fp"], result["fn"]) == (5, 1, 5)


def test_mask_iou_is_the_per_sample_iou_of_the_metrics():
    rng = np.random.default_rng(5)
    pairs = [(rng.random((12, 12)) < 0.4, rng.random((12, 12)) < 0.4) for _ in range(3)] + [(EMPTY, EMPTY)]
    metrics = ChangeMetrics()
    for pred, target in pairs:
        metrics.update(pred, target)
    assert [mask_iou(pred, target) for pred, target in pairs] == metrics.sample_ious
    assert mask_iou(*pairs[0]) == pytest.approx(jaccard_score(pairs[0][1].ravel(), pairs[0][0].ravel()))
    assert mask_iou(EMPTY, EMPTY) == 1.0 and mask_iou(pairs[0][0].astype(np.uint8) * 255, pairs[0][0]) == 1.0


def test_batched_update_equals_per_sample_updates():
    rng = np.random.default_rng(3)
    preds, targets = list(rng.random((5, 16, 16)) < 0.3), list(rng.random((5, 16, 16)) < 0.3)
    batched = ChangeMetrics()
    batched.update(np.stack(preds), np.stack(targets).astype(np.uint8))
    assert batched.compute() == accumulate(preds, targets)


def test_invalid_inputs_are_named():
    metrics = ChangeMetrics()
    with pytest.raises(ValueError, match=r"pred \(4, 5\), target \(5, 4\)"):
        metrics.update(np.zeros((4, 5), bool), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match=r"target must be a boolean or 0/1 mask, got values \[0, 2\]"):
        metrics.update(np.zeros((2, 2), bool), np.array([[0, 2], [0, 0]]))
    with pytest.raises(ValueError, match="no samples"):
        metrics.compute()
    with pytest.raises(ValueError, match="empty"):
        binary_metrics(0, 0, 0, 0)


def test_large_counts_stay_exact():
    # Counts of a few hundred full BCDD mosaics: products of the marginals exceed int64.
    tp, fp, fn, tn = 3 * 10**10, 10**9, 2 * 10**9, 5 * 10**11
    result = binary_metrics(tp, fp, fn, tn)
    total = tp + fp + fn + tn
    observed = (tp + tn) / total
    expected = ((tp + fp) / total) * ((tp + fn) / total) + ((fn + tn) / total) * ((fp + tn) / total)
    assert result["kappa"] == pytest.approx((observed - expected) / (1 - expected), rel=1e-12)
    assert result["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_evaluate_module_gives_the_same_numbers():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(METRIC_MODULE))
    preds, targets = random_masks(4)
    preds.append(EMPTY)
    targets.append(EMPTY)
    result = metric.compute(predictions=preds, references=targets)
    assert result == pytest.approx(accumulate(preds, targets), abs=1e-12)
    assert result["n_samples"] == 5
