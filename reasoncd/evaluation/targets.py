"""Scoring questions about several changes (kind `multi`): each predicted target against its own truth.

A question lists its targets (the sample's `targets`: label, present or not, a present one's mask); an answer gives
one `{"label", "mask"}` per `[SEG]` (`ReasonCDProcessor.post_process_generation`). Predicted targets are matched to
the truth's by their label (the words naming them in the answer, compared without case and extra spaces), and, as a
check that the masks agree with the words, by mask overlap (largest IoU first, each target used once).

* per-target F1 / IoU: one confusion matrix over every present truth (its matched prediction, or nothing) and every
  prediction no truth matched (against an empty map), so both a missed target and a target the question did not
  ask about cost pixels; `target_miou` is the mean IoU per target;
* the same under overlap matching, and `label_overlap_agreement`: the share of label matches that overlap matching
  pairs the same way (low: the masks do not go with the words that name them);
* target-count accuracy: answers with as many targets as the question has present parts;
* T-acc: the share of present targets found (a predicted target with their label);
* N-acc: the share of absent parts correctly refused (no predicted target with their label);
* union F1 / IoU: the union of the predicted masks against the union of the truths;
* steering: each label-matched mask against every other present target of its question whose truth covers a
  different region: is it closer (IoU) to its own truth?
"""

import numpy as np

from reasoncd.evaluation.metrics import ChangeMetrics, Steering, mask_iou


def normalise_label(label: str) -> str:
    return " ".join(label.lower().split())


def match_by_label(predicted: list[dict], truths: list[dict]) -> dict[int, int]:
    """`{prediction index: truth index}`: each prediction takes the first unmatched truth with its label."""
    matched: dict[int, int] = {}
    for p, prediction in enumerate(predicted):
        for t, truth in enumerate(truths):
            if t not in matched.values() and normalise_label(prediction["label"]) == normalise_label(truth["label"]):
                matched[p] = t
                break
    return matched


def match_by_overlap(predicted: list[np.ndarray], truths: list[np.ndarray]) -> dict[int, int]:
    """`{prediction index: truth index}` by mask overlap: pairs taken by IoU, largest first, each mask used once;
    pairs that do not overlap at all stay unmatched."""
    candidates = sorted(((mask_iou(pred, truth), -p, -t) for p, pred in enumerate(predicted)
                         for t, truth in enumerate(truths)), reverse=True)
    matched: dict[int, int] = {}
    for iou, p, t in candidates:
        if iou > 0 and -p not in matched and -t not in matched.values():
            matched[-p] = -t
    return matched


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


class MultiTargetScore:
    """Accumulates the figures of questions about several changes (see the module docstring)."""

    def __init__(self) -> None:
        self.by_label, self.by_overlap, self.union = ChangeMetrics(), ChangeMetrics(), ChangeMetrics()
        self.steering = Steering()
        self.questions = self.right_count = 0
        self.present = self.found = self.absent = self.refused = 0
        self.label_matches = self.agreeing = 0

    def update(self, predicted: list[dict], truths: list[dict], shape: tuple[int, int]) -> None:
        """One question: its predicted targets `{"label", "mask"}` and its truth's `{"label", "present", "mask"}`
        (an absent part's mask is None), all masks of `shape`."""
        present = [truth for truth in truths if truth["present"]]
        absent = [truth for truth in truths if not truth["present"]]
        empty = np.zeros(shape, dtype=bool)
        self.questions += 1
        self.right_count += len(predicted) == len(present)
        by_label = match_by_label(predicted, present)
        self._pixels(self.by_label, predicted, present, by_label, empty)
        by_overlap = match_by_overlap([p["mask"] for p in predicted], [t["mask"] for t in present])
        self._pixels(self.by_overlap, predicted, present, by_overlap, empty)
        self.label_matches += len(by_label)
        self.agreeing += sum(by_overlap.get(p) == t for p, t in by_label.items())
        self.present += len(present)
        self.found += len(by_label)
        named = {normalise_label(p["label"]) for p in predicted}
        self.absent += len(absent)
        self.refused += sum(normalise_label(truth["label"]) not in named for truth in absent)
        self.union.update(np.any([p["mask"] for p in predicted] or [empty], axis=0),
                          np.any([t["mask"] for t in present] or [empty], axis=0))
        for p, t in by_label.items():
            self.steering.update(predicted[p]["mask"], present[t]["mask"],
                                 [other["mask"] for o, other in enumerate(present) if o != t])

    @staticmethod
    def _pixels(metrics: ChangeMetrics, predicted, present, matched: dict[int, int], empty) -> None:
        prediction_of = {t: p for p, t in matched.items()}
        for t, truth in enumerate(present):
            metrics.update(predicted[prediction_of[t]]["mask"] if t in prediction_of else empty, truth["mask"])
        for p, prediction in enumerate(predicted):
            if p not in matched:
                metrics.update(prediction["mask"], empty)

    def compute(self) -> dict:
        if not self.questions:
            return {"n_questions": 0}
        by_label, by_overlap, union = self.by_label.compute(), self.by_overlap.compute(), self.union.compute()
        return {
            "n_questions": self.questions,
            "n_present_targets": self.present,
            "n_absent_parts": self.absent,
            "target_f1": by_label["f1"], "target_iou": by_label["iou"], "target_miou": by_label["giou"],
            "target_f1_by_overlap": by_overlap["f1"], "target_iou_by_overlap": by_overlap["iou"],
            "label_overlap_agreement": _ratio(self.agreeing, self.label_matches),
            "count_accuracy": self.right_count / self.questions,
            "t_acc": _ratio(self.found, self.present),
            "n_acc": _ratio(self.refused, self.absent),
            "union_f1": union["f1"], "union_iou": union["iou"],
            "steering": self.steering.compute(),
        }
