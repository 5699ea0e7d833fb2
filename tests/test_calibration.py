"""The presence threshold placed on validation questions: the rule that places it, the questions it refuses, the
logits it reads (generation's), and the threshold deciding in generation and teacher-forced evaluation."""

import numpy as np
import pytest
import torch

from reasoncd.build import build_tiny
from reasoncd.data.samples import load_split
from reasoncd.evaluation.calibration import (CalibrationError, balanced_threshold, calibrate_presence,
                                             check_calibration_samples, decision_figures, presence_logits)
from reasoncd.evaluation.scoring import batch_inputs, seg_decided_teacher_forced


def test_the_threshold_weighs_present_and_absent_questions_alike():
    # Eight present questions and two absent ones, one of which scores above two present ones.
    present = np.array([True] * 8 + [False] * 2)
    logits = np.array([0.5, 1.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -1.0, 2.0])
    threshold = balanced_threshold(logits, present)
    assert threshold == pytest.approx(2.5)  # every absent question absent, six of eight present ones present
    figures = decision_figures(logits, present, threshold)
    assert figures == pytest.approx({"present_recall": 0.75, "absent_accuracy": 1.0, "balanced_accuracy": 0.875})
    # Plain accuracy would keep the head's own threshold here (9 of 10 right at 0, 8 of 10 at 2.5): the minority
    # of absent questions would weigh a fifth as much.
    head = decision_figures(logits, present, 0.0)
    assert head["balanced_accuracy"] == pytest.approx(0.75)
    # Separable questions: halfway between the highest absent and the lowest present logit.
    assert balanced_threshold(np.array([-3.0, -1.0, 2.0, 4.0]), np.array([False, False, True, True])) == 0.5


def test_of_equally_good_thresholds_the_one_nearest_the_heads_own_is_kept():
    present = np.array([False, True, False, True])
    logits = np.array([-2.0, -1.0, 1.0, 2.0])  # -1.5 and 1.5 both give balanced accuracy 0.75
    assert balanced_threshold(logits, present) in (-1.5, 1.5)
    assert balanced_threshold(logits + 1.0, present) == pytest.approx(-0.5)  # -0.5 is nearer 0 than 2.5


def test_questions_of_one_kind_only_are_refused_naming_their_source():
    present = {"answer": "It's the new buildings [SEG]."}
    absent = {"answer": "There is no change of interest: no new buildings appear between the two images."}
    with pytest.raises(CalibrationError, match=r"data/val: 2 questions, none of them absent"):
        check_calibration_samples([present, present], "data/val")
    with pytest.raises(CalibrationError, match=r"none of them present"):
        check_calibration_samples([absent], "data/val")
    check_calibration_samples([present, absent], "data/val")


@pytest.fixture(scope="module")
def val_questions(samples_dir):
    """Nine present and three absent questions (the small set's validation pairs have no absent class)."""
    samples = load_split(samples_dir, "train")
    present = [sample for sample in samples if "[SEG]" in sample["answer"]]
    absent = [sample for sample in samples if "[SEG]" not in sample["answer"]]
    return present[:9] + absent[:3]


def test_calibration_reads_the_logits_generation_decides_on(val_questions):
    model, processor = build_tiny(0)
    model.eval()
    logits = presence_logits(model, processor, val_questions, batch_size=4, progress=False)
    inputs, _, _ = batch_inputs(model, processor, val_questions[:3])
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=4)
    np.testing.assert_allclose(generated.presence_probabilities.numpy(), 1 / (1 + np.exp(-logits[:3])), rtol=1e-4)
    result = calibrate_presence(model, processor, val_questions, where="samples_dir", batch_size=4, progress=False)
    present = np.array(["[SEG]" in sample["answer"] for sample in val_questions])
    assert result["questions"] == 12 and result["absent_questions"] == int((~present).sum())
    assert result["threshold"] == balanced_threshold(logits, present)
    assert result["at_threshold"]["balanced_accuracy"] >= result["at_head_threshold"]["balanced_accuracy"]
    assert model.config.presence_threshold == 0.0  # calibrating does not change the model


def test_the_threshold_decides_in_generation_and_in_teacher_forced_evaluation():
    from reasoncd.build import make_seg_the_only_answer

    model, processor = build_tiny(0)
    make_seg_the_only_answer(model)  # the language model alone would point at a mask every time
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a decision that tells the two questions apart (the helper makes it say "present")
        model.presence.classifier[-1].weight.normal_()
        model.presence.classifier[-1].bias.zero_()
    rng = np.random.default_rng(0)
    before, after = (list(rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)) for _ in range(2))
    pairs = dict(images_t1=before, images_t2=after, text=["new buildings"] * 2, pair_index=[0, 1])  # two pairs
    prompts = processor(**pairs)
    forced = processor(**pairs, answers=["It's the new buildings [SEG]."] * 2)
    labels = forced.pop("labels")
    with torch.no_grad():
        logits = model(**forced).presence_logits
        assert abs(float(logits[0] - logits[1])) > 0.1
        model.config.presence_threshold = float(logits.mean())  # between the two questions
        generated = model.generate(**prompts, max_new_tokens=6)
        evaluated = model(**forced)
        decided_teacher_forced = seg_decided_teacher_forced(model, evaluated, labels).tolist()
        model.config.presence_threshold = float(logits.min()) - 1.0  # both present
        both_present = model(**forced)
    higher = int(logits.argmax())
    # In evaluation the answer reads the decision after </p>: only the question decided absent reads another one.
    assert torch.allclose(evaluated.logits[higher], both_present.logits[higher], atol=1e-5)
    assert not torch.allclose(evaluated.logits[1 - higher], both_present.logits[1 - higher], atol=1e-3)
    assert generated.seg_present.tolist() == [row == higher for row in range(2)]
    torch.testing.assert_close(generated.presence_probabilities, (logits - logits.mean()).sigmoid(), rtol=1e-4,
                               atol=1e-5)
    assert decided_teacher_forced == [row == higher for row in range(2)]


def test_the_config_refuses_a_threshold_that_is_not_a_number():
    from configuration_reasoncd import ReasonCDConfig

    for bad in (float("nan"), float("inf"), "high", None):
        with pytest.raises(ValueError, match="presence_threshold"):
            ReasonCDConfig(presence_threshold=bad)
    assert ReasonCDConfig(presence_threshold=2).presence_threshold == 2.0
