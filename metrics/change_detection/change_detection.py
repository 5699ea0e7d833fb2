"""Change-detection metrics for `evaluate`: F1, precision, recall, OA, IoU, kappa, gIoU and cIoU of binary masks.

Load it from a checkout with ``evaluate.load("/abs/path/to/metrics/change_detection")``. `evaluate` copies this file
into its module cache and imports it from there, so the arithmetic is imported from the installed
``reasoncd.evaluation.metrics`` (``pip install -e .`` at the repository root) instead of being copied here: one
implementation serves this module, the training loop and the evaluation script.
"""
import datasets
import evaluate

from reasoncd.evaluation.metrics import ChangeMetrics

_DESCRIPTION = """
Binary change-detection metrics, change = positive class. F1, precision, recall, overall accuracy (OA), IoU and
Cohen's kappa come from the confusion matrix summed over all pixels of all samples; gIoU is the mean per-sample IoU
(an empty prediction of an empty target scores 1) and cIoU the total intersection over the total union (LISA).
Undefined ratios are 0.0, as scikit-learn's zero_division=0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of 2-D arrays): predicted change masks, bool or 0/1, one per sample.
    references (`list` of 2-D arrays): ground-truth change masks of the same shapes.
Returns:
    dict with `f1`, `precision`, `recall`, `oa`, `iou`, `kappa`, `giou`, `ciou` (fractions) and the counts
    `tp`, `fp`, `fn`, `tn`, `n_samples`.
Examples:
    >>> metric = evaluate.load("metrics/change_detection")
    >>> metric.compute(predictions=[[[1, 0], [0, 0]]], references=[[[1, 1], [0, 0]]])["f1"]
    0.6666666666666666
"""

_CITATION = """
@misc{reasoncd,
  title={ReasonCD: A Multimodal Reasoning Large Model for Implicit Change-of-Interest Semantic Mining}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ChangeDetection(evaluate.Metric):
    def _info(self):
        mask = datasets.Sequence(datasets.Sequence(datasets.Value("bool")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": mask, "references": mask}),
        )

    def _compute(self, predictions, references):
        # Arrow hands each mask back as nested lists of rows; ChangeMetrics turns them into arrays.
        metrics = ChangeMetrics()
        for prediction, reference in zip(predictions, references):
            metrics.update(prediction, reference)
        return metrics.compute()
