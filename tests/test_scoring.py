"""reasoncd.evaluation.scoring: the question-use figures on hand-made masks, scoring, and the counterfactual's decode
path on a tiny model."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reasoncd.evaluation.scoring import (Counterfactual, QuestionSensitivity, Steering, counterfactual_masks,
                                       encode_batch, fidelity_score, predict_samples, score,
                                       seg_predicted_teacher_forced, swap_sources, truth_key)
from reasoncd.data.samples import SEG, load_split
from reasoncd.training.dataset import ReasonCDCollator


def _block(top: int, left: int, height: int = 8, width: int = 8, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + height, left:left + width] = True
    return mask


def _iou(a, b) -> float:
    return (a & b).sum() / (a | b).sum()


# Three changes on one pair: A and B overlap a little, C is elsewhere; A2 is A asked another way (same truth).
A, B, C = _block(0, 0), _block(4, 4), _block(20, 20)
A2 = A.copy()


# ------------------------------------------------------------------------------------------ question sensitivity


def test_a_question_blind_predictor_has_sensitivity_one():
    sensitivity = QuestionSensitivity()
    anything = A | B | C  # the same mask whatever is asked
    sensitivity.update([(anything, A), (anything, A2), (anything, B), (anything, C)])
    result = sensitivity.compute()
    assert result["mean_iou"] == 1.0
    # A-B, A-C, B-C, A2-B, A2-C: the A/A2 pair asks about one change twice and tests nothing
    assert result["n_comparisons"] == 5


def test_a_question_following_predictor_scores_the_iou_of_the_truths():
    sensitivity = QuestionSensitivity()
    sensitivity.update([(A, A), (B, B), (C, C)])
    result = sensitivity.compute()
    expected = np.mean([_iou(A, B), 0.0, 0.0])
    assert result["mean_iou"] == pytest.approx(expected) and result["truth_mean_iou"] == pytest.approx(expected)
    assert 0 < result["mean_iou"] < 0.1 and result["n_comparisons"] == 3


def test_sensitivity_counts_missing_answers_as_empty_masks_and_needs_two_truths():
    sensitivity = QuestionSensitivity()
    sensitivity.update([(np.zeros_like(A), A), (np.zeros_like(B), B)])  # neither answer had [SEG]
    sensitivity.update([(A, A)])  # one question: nothing to compare
    sensitivity.update([(A, A), (A, A2)])  # one truth asked twice
    assert sensitivity.compute() == {"mean_iou": 1.0, "truth_mean_iou": pytest.approx(_iou(A, B)),
                                     "n_comparisons": 1}
    assert QuestionSensitivity().compute() == {"mean_iou": None, "truth_mean_iou": None, "n_comparisons": 0}


# ------------------------------------------------------------------------------------------------ counterfactual


def test_swap_sources_pairs_rows_with_different_truths_within_a_pair():
    pairs = ["p", "p", "p", "p", "q", "q", "r", "r", "r"]
    truths = ["a", "b", "a", "c", "a", "a", "a", "b", "c"]
    has_seg = [True, True, True, True, True, True, True, False, True]
    sources = swap_sources(pairs, truths, has_seg)
    # p: groups a=[0, 2], b=[1], c=[3]; a takes b's state, b takes c's, c takes a's
    assert sources[:4] == [1, 3, 1, 0]
    assert sources[4:6] == [None, None]  # one truth only
    assert sources[6:] == [8, None, 6]  # row 7 has no [SEG]
    for row, source in enumerate(sources):
        if source is not None:
            assert pairs[source] == pairs[row] and truths[source] != truths[row] and has_seg[source]


def test_truth_key_names_the_content_not_the_file():
    assert truth_key(A) == truth_key(A2.astype(np.uint8)) != truth_key(B)
    assert truth_key(np.zeros((4, 8), bool)) != truth_key(np.zeros((8, 4), bool))


def test_a_prompt_blind_mask_path_loses_nothing_and_a_prompt_following_one_does():
    blind, following = Counterfactual(), Counterfactual()
    mask = A | B  # what a decoder that ignores its prompt draws for either state
    for truth, other in ((A, B), (B, A)):
        blind.update(mask, mask, truth)
        following.update(truth, other, truth)  # its mask for the other question's state is the other truth
    blind, following = blind.compute(), following.compute()
    assert blind["f1_drop"] == 0.0 and blind["n_rows"] == 2
    assert following["f1_original"] == 1.0
    assert following["f1_swapped"] == pytest.approx(2 * (A & B).sum() / (A.sum() + B.sum()))
    assert following["f1_drop"] == pytest.approx(1.0 - following["f1_swapped"]) and following["f1_drop"] > 0.5
    assert Counterfactual().compute() == {"f1_original": None, "f1_swapped": None, "f1_drop": None, "n_rows": 0}


def test_steering_skips_truths_that_overlap_the_asked_one():
    steering = Steering()
    steering.update(A, A, [B, C, A2])  # A2 covers the asked change itself: no test
    steering.update(A | B | C, A, [C])  # as close to C as to A: wrong
    assert steering.compute() == {"accuracy": 2 / 3, "n_comparisons": 3}


def test_fidelity_score_is_the_mean_of_the_measured_terms():
    result = {"f1": 0.6, "steering": {"accuracy": 0.5}, "text": {"absent_accuracy": 1.0},
              "question_sensitivity": {"mean_iou": 0.9}}
    assert fidelity_score(result) == pytest.approx((0.6 + 0.5 + 1.0 + 0.1) / 4)
    result.update(steering={"accuracy": None}, text={"absent_accuracy": None}, question_sensitivity={"mean_iou": None})
    assert fidelity_score(result) == pytest.approx(0.6)


def test_seg_proxy_reads_answer_positions_only():
    seg = 7
    logits = torch.zeros(3, 6, 10)
    labels = torch.full((3, 6), -100)
    labels[:, 3:] = torch.tensor([1, 2, seg])  # answers "1 2 [SEG]" at positions 3-5: predicted at 2-4
    logits[0, 4, seg] = 1.0  # the model would say [SEG] where the reference does
    logits[1, 1, seg] = 1.0  # a prompt position: not the model's answer
    logits[2, 5, seg] = 1.0  # after the last token: nothing follows
    assert seg_predicted_teacher_forced(logits, labels, seg).tolist() == [True, False, False]


def test_seg_proxy_reads_an_absent_answers_decision_in_its_opening():
    """Fed an absent answer, no position predicts [SEG]: the model's "absent" is whether it opens like the reference."""
    logits = torch.zeros(3, 6, 10)
    labels = torch.full((3, 6), -100)
    labels[:, 3:] = torch.tensor([4, 5, 6])  # "There is no ..."
    logits[:, 2, 4] = logits[:, 3, 5] = logits[:, 4, 6] = 1.0  # opens as the reference: answers "absent"
    logits[1, 2, 3] = 2.0  # would open differently ("It's the ..."): answers "present"
    logits[2, 4, 3] = 2.0  # differs only after the opening: still "absent"
    assert seg_predicted_teacher_forced(logits, labels, 7).tolist() == [False, True, False]


# ---------------------------------------------------------------------------------------------------- scoring


def _png(path: Path, mask: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return str(path)


@pytest.fixture
def pair_samples(tmp_path) -> list[dict]:
    """One pair with questions about A, B, C, A again (another file of the same mask) and an absent change."""
    image = _png(tmp_path / "t.png", np.zeros((32, 32), bool))
    empty = _png(tmp_path / "empty.png", np.zeros((32, 32), bool))
    paths = {name: _png(tmp_path / f"{name}.png", mask) for name, mask in
             (("a", A), ("b", B), ("c", C), ("a2", A2))}
    samples = []
    for name in ("a", "b", "c", "a2", "absent"):
        samples.append({"img1_path": image, "img2_path": image, "mask_path": paths.get(name, empty),
                        "question": name, "answer": "no" if name == "absent" else f"It's {SEG}.",
                        "kind": "absent" if name == "absent" else "explicit", "pair_id": "p",
                        "other_masks": {other: path for other, path in paths.items() if other != name}})
    return samples


def test_score_reports_question_use(pair_samples):
    truths = [A, B, C, A2, np.zeros_like(A)]
    # a question-following model that also answers the absent question with a mask
    predictions = [{"text": "", "mask": truth, "seg": True, "swapped_mask": None, "swap_source": None}
                   for truth in truths]
    predictions[4]["mask"] = C
    for row, source in ((0, 1), (1, 2), (2, 0), (3, 0)):  # row 3 takes A's state: its own truth, left out
        predictions[row].update(swapped_mask=truths[source], swap_source=source)
    result = score(pair_samples, predictions)
    assert result["question_sensitivity"]["n_comparisons"] == 5
    assert result["question_sensitivity"]["mean_iou"] == pytest.approx(result["question_sensitivity"]["truth_mean_iou"])
    expected = Counterfactual()
    for row, source in ((0, 1), (1, 2), (2, 0)):
        expected.update(truths[row], truths[source], truths[row])
    assert result["counterfactual"] == pytest.approx(expected.compute())
    assert result["counterfactual"]["n_rows"] == 3 and result["counterfactual"]["f1_original"] == 1.0
    assert result["text"]["absent_accuracy"] == 0.0
    terms = [result["f1"], result["steering"]["accuracy"], 0.0, 1 - result["question_sensitivity"]["mean_iou"]]
    assert result["fidelity_score"] == pytest.approx(np.mean(terms))
    assert [row["question"] for row in result["per_sample"]] == ["a", "b", "c", "a2", "absent"]

    # the same masks whatever the question: sensitivity 1, no counterfactual drop, a lower fidelity score
    blind = [{**p, "mask": A | B, "swapped_mask": None if p["swapped_mask"] is None else A | B} for p in predictions]
    blind_result = score(pair_samples, blind)
    assert blind_result["question_sensitivity"]["mean_iou"] == 1.0
    assert blind_result["counterfactual"]["f1_drop"] == 0.0
    assert blind_result["fidelity_score"] < result["fidelity_score"]


# ------------------------------------------------------------------------------------------- on a tiny model


@pytest.fixture(scope="module")
def synthetic_samples(tmp_path_factory) -> list[dict]:
    from helpers import synthetic_samples

    return load_split(synthetic_samples(tmp_path_factory.mktemp("second"), 6, seed=3), "train")


@pytest.fixture(scope="module")
def tiny():
    from reasoncd.build import build_tiny

    model, processor = build_tiny(seed=0)
    return model.eval(), processor


@pytest.mark.parametrize("release", ["shared fusion", "fusion_film", "saved before fusion_film"])
def test_counterfactual_decoding_with_each_rows_own_state_gives_the_models_masks(synthetic_samples, release):
    from reasoncd.build import build_tiny

    # With fusion_film each state fuses its pair's levels.
    model, processor = build_tiny(seed=0, fusion_film=release == "fusion_film")
    model.eval()
    batch = [sample for sample in synthetic_samples if SEG in sample["answer"] and sample["kind"] != "multi"][:5]
    assert len({sample["pair_id"] for sample in batch}) > 1  # rows must find their own pair's embedding
    inputs = ReasonCDCollator(processor)(batch)
    with torch.no_grad():
        features = encode_batch(model, inputs)
        outputs = model(**inputs, frozen_features=features)
    if release == "saved before fusion_film":  # its modeling code: the embedding alone, no per-date features
        embeddings, decode = model.mask_embeddings, model.decode_masks
        model.mask_embeddings = lambda *args: embeddings(*args)[0]
        model.decode_masks = lambda image_embeddings, seg_hidden_states: decode(image_embeddings, seg_hidden_states)
    rows = inputs["pair_index"]
    own = processor.post_process_masks(outputs.pred_masks, outputs.seg_present, inputs["reshaped_sizes"][rows],
                                       inputs["image_sizes"][rows].tolist())
    again = counterfactual_masks(model, processor, inputs, features, outputs.seg_hidden_states,
                                 list(range(len(batch))))
    assert any(mask.any() for mask in own)
    for mask, redone in zip(own, again):
        np.testing.assert_array_equal(mask, redone)
    # a real swap changes the masks: the tiny model's decoder does read its prompt
    swapped = counterfactual_masks(model, processor, inputs, features, outputs.seg_hidden_states,
                                   [1, 0, None, None, None])
    assert swapped[2:] == [None, None, None] and not np.array_equal(swapped[0], own[0])


@pytest.mark.parametrize("teacher_forced", [True, False])
def test_predict_samples_swaps_states_within_a_pair_between_different_truths(tiny, synthetic_samples,
                                                                           teacher_forced):
    from reasoncd.build import build_tiny
    from helpers import make_seg_the_only_answer

    model, processor = tiny
    if not teacher_forced:  # a random model rarely says [SEG]: this one always does
        model, processor = build_tiny(seed=0)
        make_seg_the_only_answer(model)
        model.eval()
    predictions = predict_samples(model, processor, synthetic_samples, batch_size=4, teacher_forced=teacher_forced,
                                  max_new_tokens=2, progress=False)
    swapped = [(i, p) for i, p in enumerate(predictions) if p["swap_source"] is not None]
    assert swapped
    for index, prediction in swapped:
        source = synthetic_samples[prediction["swap_source"]]
        assert source["pair_id"] == synthetic_samples[index]["pair_id"]
        assert prediction["swapped_mask"].shape == prediction["mask"].shape
    result = score(synthetic_samples, predictions)
    json.dumps({key: value for key, value in result.items() if key != "per_sample"})  # metrics.json can hold it
    assert result["counterfactual"]["n_rows"] > 0 and result["question_sensitivity"]["n_comparisons"] > 0
    if not teacher_forced:
        assert result["text"]["absent_accuracy"] == 0.0  # [SEG] for every question, absent ones included


# ------------------------------------------------------------------------- order accuracy, answer/map agreement


def test_order_accuracy_needs_the_map_closer_to_the_swapped_truth():
    from reasoncd.evaluation.scoring import OrderAccuracy

    order = OrderAccuracy()
    order.update(C, A, C)  # follows the swap
    order.update(A, A, C)  # the same map whatever the order
    order.update(np.zeros_like(A), A, np.zeros_like(A))  # the swapped truth is empty: an empty map is right
    order.update(A, A, A)  # both orders have one truth: no test of the order
    assert order.compute() == {"accuracy": pytest.approx(2 / 3), "n_questions": 3}


def test_order_truth_is_the_opposite_directions_mask_file(tmp_path):
    from reasoncd.data.second import mask_file_name, swapped_order_truth_path
    from reasoncd.evaluation.scoring import with_dates_swapped

    own = tmp_path / mask_file_name("007", "building", "increase")
    sample = {"mask_path": str(own), "answer": f"It's {SEG}.", "pair_id": "007", "croi": "building",
              "direction": "increase", "img1_path": "a.png", "img2_path": "b.png"}
    assert swapped_order_truth_path(sample) == tmp_path / mask_file_name("007", "building", "decrease")
    assert swapped_order_truth_path({**sample, "direction": "any"}) is None  # "any" is the same either way
    assert swapped_order_truth_path({**sample, "answer": "no"}) is None  # absent: both truths empty
    assert swapped_order_truth_path({**sample, "mask_path": str(tmp_path / "other.png")}) is None
    assert (with_dates_swapped(sample)["img1_path"], with_dates_swapped(sample)["img2_path"]) == ("b.png", "a.png")


def test_only_a_present_question_about_one_change_in_any_direction_holds_in_both_orders():
    from reasoncd.data.second import holds_in_both_orders

    sample = {"answer": f"It's {SEG}.", "croi": "building", "direction": "any"}
    assert holds_in_both_orders(sample)
    assert not holds_in_both_orders({**sample, "direction": "increase"})  # its truth changes with the order
    assert not holds_in_both_orders({**sample, "answer": "There are none."})  # absent: the presence decision's
    assert not holds_in_both_orders({**sample, "targets": [{"croi": "building", "direction": "any"}]})


def test_score_reports_order_accuracy_and_answer_map_agreement(pair_samples, tmp_path):
    from reasoncd.data.second import mask_file_name

    # question "a" asks for an increase; its decrease mask (the swapped truth) is C
    a = pair_samples[0]
    a.update(pair_id="p", croi="building", direction="increase",
             mask_path=_png(tmp_path / "m" / mask_file_name("p", "building", "increase"), A))
    _png(tmp_path / "m" / mask_file_name("p", "building", "decrease"), C)
    truths = [A, B, C, A2, np.zeros_like(A)]
    predictions = [{"text": "It's the change.", "mask": truth, "seg": True, "swapped_mask": None,
                    "swap_source": None, "order_mask": None} for truth in truths]
    predictions[0]["order_mask"] = C
    predictions[4]["text"] = "There is no change of interest: no new buildings appear between the two images."
    predictions[1]["text"] = "No new trees can be found in the later image (T2), so there is nothing to mark."
    result = score(pair_samples, predictions)
    assert result["order"] == {"accuracy": 1.0, "n_questions": 1}
    # row 1 says "absent" beside a mask; rows 0, 2, 3 name a change beside one; row 4 says absent, empty map
    assert result["text"]["answer_map_agreement"] == pytest.approx(4 / 5)


def test_questions_about_several_changes_are_scored_target_by_target(synthetic_samples):
    from reasoncd.data.images import read_mask

    multi = [sample for sample in synthetic_samples if sample["kind"] == "multi"]
    assert multi and any(sum(t["present"] for t in s["targets"]) >= 2 for s in multi)

    def perfect(sample):  # what a model that gets every target right answers
        targets = [{"label": t["label"], "mask": read_mask(t["mask_path"])} for t in sample["targets"] if t["present"]]
        union = np.logical_or.reduce([t["mask"] for t in targets])
        return {"text": sample["answer"].replace(" [SEG]", ""), "mask": union, "targets": targets, "seg": True}

    result = score(multi, [perfect(sample) for sample in multi])["multi_target"]
    assert result["n_questions"] == len(multi)
    assert result["target_f1"] == result["union_f1"] == result["t_acc"] == result["count_accuracy"] == 1.0
    assert result["n_acc"] in (None, 1.0) and result["label_overlap_agreement"] == 1.0

    # The same masks under each other's names: the union is still right, the targets are not.
    def swapped(sample):
        answer = perfect(sample)
        masks = [t["mask"] for t in answer["targets"]]
        answer["targets"] = [{**t, "mask": m} for t, m in zip(answer["targets"], masks[1:] + masks[:1])]
        return answer

    several = [sample for sample in multi if sum(t["present"] for t in sample["targets"]) >= 2]
    result = score(several, [swapped(sample) for sample in several])
    assert result["multi_target"]["union_f1"] == 1.0 and result["multi_target"]["target_f1"] < 0.9
    assert result["groups"]["multi"]["f1"] == 1.0
    assert result["steering"]["n_comparisons"] == 0  # single-change steering leaves these questions out


def test_questions_in_held_out_phrasings_are_scored_apart_from_seen_ones(pair_samples):
    for sample in pair_samples:
        sample["heldout"] = sample["question"] in ("a", "b", "absent")
    truths = [A, B, C, A2, np.zeros_like(A)]
    predictions = [{"text": "", "mask": truth, "seg": True, "swapped_mask": None, "swap_source": None}
                   for truth in truths]
    predictions[0]["mask"] = B  # a held-out "a" answered with b's change, the held-out absent one with a mask
    predictions[4]["mask"] = C
    predictions[2].update(swapped_mask=A, swap_source=0)  # a swap across the two parts takes no part in them
    result = score(pair_samples, predictions)
    seen, heldout = result["by_phrasing"]["seen"], result["by_phrasing"]["heldout"]
    assert (seen["n_samples"], heldout["n_samples"]) == (2, 3)
    assert seen["steering"]["accuracy"] == 1.0 and seen["text"]["absent_accuracy"] is None
    assert heldout["steering"]["accuracy"] < 1.0 and heldout["text"]["absent_accuracy"] == 0.0
    assert seen["counterfactual"]["n_rows"] == 0 and "per_sample" not in seen and "by_phrasing" not in seen
    alone = score([pair_samples[i] for i in (2, 3)], [predictions[i] for i in (2, 3)])
    assert seen["f1"] == alone["f1"] and alone["by_phrasing"] == {}  # one kind of phrasing: nothing to split

    from reasoncd.evaluation.report import render_report, split_report, with_phrasings

    summary = {**{k: v for k, v in result.items() if k != "per_sample"}, "mode": "free_generation",
               "n_samples": 5, "data": "d", "split": "test"}
    splits = with_phrasings("test", summary)
    assert list(splits) == ["test", "test: seen phrasings", "test: held-out phrasings"]
    table = split_report(splits)
    assert "| absent-CRoI accuracy | 0.000 | – | 0.000 |" in table
    per_sample = [{**row, "name": row["question"]} for row in result["per_sample"]]
    report = render_report(summary, per_sample, [("best", 2)])
    assert "## Seen and held-out phrasings" in report and "held-out phrasings (3 questions)" in report
