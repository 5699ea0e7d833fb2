"""reasoncd.evaluation.targets: the figures of questions about several changes, against hand-made masks."""
import numpy as np
import pytest

from reasoncd.evaluation.targets import MultiTargetScore, match_by_label, match_by_overlap

SHAPE = (10, 10)


def _rows(first, last):
    mask = np.zeros(SHAPE, bool)
    mask[first:last + 1] = True
    return mask


def _cols(first, last):
    mask = np.zeros(SHAPE, bool)
    mask[:, first:last + 1] = True
    return mask


A, B, D = _rows(0, 3), _rows(6, 9), _cols(0, 3)  # 40 pixels each; A and D share 16 (IoU 0.25)


def _truth(label, mask=None):
    return {"label": label, "present": mask is not None, "mask": mask}


def _scored():
    score = MultiTargetScore()
    # 1: both present changes found under their names (one half covered), the absent one refused.
    score.update([{"label": "new buildings", "mask": A}, {"label": "New  Water Bodies", "mask": _rows(6, 7)}],
                 [_truth("new buildings", A), _truth("new water bodies", B), _truth("new playgrounds")], SHAPE)
    # 2: the masks swapped against their words, and a mask for the absent part.
    score.update([{"label": "new buildings", "mask": D}, {"label": "new playgrounds", "mask": A}],
                 [_truth("new buildings", A), _truth("removed trees", D), _truth("new playgrounds")], SHAPE)
    return score.compute()


def test_targets_are_matched_by_their_words_and_scored_pixel_by_pixel():
    result = _scored()
    # By label: A (40 hit), B (20 hit, 20 missed); question 2: A against D's mask (16 hit, 24 false, 24 missed),
    # D missed (40), the absent part's mask false (40).
    tp, fp, fn = 40 + 20 + 16, 24 + 40, 20 + 24 + 40
    assert result["target_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert result["target_iou"] == pytest.approx(tp / (tp + fp + fn))
    assert result["target_miou"] == pytest.approx(np.mean([1.0, 0.5, 16 / 64, 0.0, 0.0]))
    # By overlap the masks find the truths they cover: only B's missing half is wrong.
    assert result["target_f1_by_overlap"] == pytest.approx(2 * 140 / (2 * 140 + 20))
    assert result["label_overlap_agreement"] == pytest.approx(2 / 3)  # question 2's label match is not the overlap's
    assert result["union_f1"] == pytest.approx(2 * 124 / (2 * 124 + 20))


def test_count_found_refused_and_steering_between_targets():
    result = _scored()
    assert result["n_questions"] == 2 and result["n_present_targets"] == 4 and result["n_absent_parts"] == 2
    assert result["count_accuracy"] == 1.0  # two masks each, two changes present each
    assert result["t_acc"] == pytest.approx(3 / 4)  # "removed trees" was never named
    assert result["n_acc"] == pytest.approx(1 / 2)  # "new playgrounds" got a mask in question 2
    # Question 1: each mask closer to its own truth; question 2: "new buildings" lies on the trees' truth.
    assert result["steering"] == {"accuracy": pytest.approx(2 / 3), "n_comparisons": 3}


def test_too_many_or_too_few_targets_miss_the_count():
    score = MultiTargetScore()
    truths = [_truth("new buildings", A), _truth("new water bodies", B)]
    score.update([{"label": "new buildings", "mask": A}], truths, SHAPE)
    score.update([], truths, SHAPE)
    score.update([{"label": "new buildings", "mask": A}, {"label": "new water bodies", "mask": B},
                  {"label": "new buildings", "mask": B}], truths, SHAPE)
    result = score.compute()
    assert result["count_accuracy"] == 0.0 and result["t_acc"] == pytest.approx(3 / 6)
    assert result["n_acc"] is None and MultiTargetScore().compute() == {"n_questions": 0}


def test_matching_rules():
    truths = [{"label": "new buildings"}, {"label": "new buildings"}, {"label": "new ponds"}]
    assert match_by_label([{"label": "New buildings"}, {"label": "new buildings "}, {"label": "trees"}],
                          truths) == {0: 0, 1: 1}
    # Largest overlap first, each mask once; no overlap, no match.
    # IoUs 0.75 (A, rows 0-2), then 0.67 (rows 0-1, rows 0-2: taken), 0.25 (A, D: A taken), 0.15 (rows 0-1, D).
    assert match_by_overlap([A, _rows(0, 1), _cols(8, 9)], [_rows(0, 2), D]) == {0: 0, 1: 1}
    # Rows 0-1 fit rows 0-2 better (0.67) than rows 0-4 do (0.6); rows 0-4 never touch B: no match.
    assert match_by_overlap([A | _rows(4, 4), _rows(0, 1)], [_rows(0, 2), B]) == {1: 0}
    assert match_by_overlap([_rows(0, 1)], [B]) == {}
