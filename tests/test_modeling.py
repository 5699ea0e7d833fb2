"""The model on the `tiny` preset: losses and the trainable set, the [SEG] convention (teacher-forced == cached
generation), one encoding per image pair, the mask decoder against segment-anything's, and a save/reload through
the Hub loader in a clean interpreter."""
import copy
import json
import re
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoProcessor, LogitsProcessorList

from reasoncd import build
from geometry_reasoncd import upscale_mask_logits
from helpers import (REMOTE_CODE, REPO_ROOT, ForceAnswers, answer_token_ids, make_seg_the_only_answer, random_image,
                     run_script, tiny_checkpoint)
from configuration_reasoncd import ReasonCDConfig
from modeling_reasoncd import ANSWER_DECISION_TOKENS, ReasonCDForChangeDetection
from reasoncd.training.lora import apply_lora, module_path

HEIGHT, WIDTH = 200, 300
QUESTIONS = ["new buildings", "changes that provide more living areas for people, and explain why"]
ANSWERS = ["It's [SEG].", "Houses were built on the former fields, so the change is [SEG]."]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


def load_model(checkpoint):
    model, info = AutoModel.from_pretrained(checkpoint, trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint).eval()


@pytest.fixture(scope="module")
def processor(checkpoint):
    return AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)


@pytest.fixture(scope="module")
def pair():
    """T1, T2 (T2 has a new bright block) and the change mask, 200x300 (non-square)."""
    t1 = random_image(HEIGHT, WIDTH, seed=1)
    t2 = t1.copy()
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[40:120, 60:180] = True
    t2[mask] = [230, 220, 210]
    return t1, t2, mask


def forced_generate(model, processor, inputs, answers, **kwargs):
    rows = answer_token_ids(processor, answers)
    out = model.generate(**inputs, max_new_tokens=max(map(len, rows)) + 1,
                         logits_processor=LogitsProcessorList([ForceAnswers(rows, model.config.eos_token_id)]),
                         **kwargs)
    for row, answer in enumerate(rows):
        assert out.sequences[row, : len(answer)].tolist() == answer
    return out


def assert_masks_agree(processor, low_res_a, low_res_b, reshaped_sizes, size):
    """Low-res logits equal up to float noise, and the full-size binary masks equal wherever the decision is not
    within that noise of the threshold."""
    low_res_a, low_res_b = low_res_a.detach(), low_res_b.detach()
    scale = float(low_res_b.abs().max())
    assert scale > 0, "the masks to compare are all zero: nothing was decoded"
    torch.testing.assert_close(low_res_a, low_res_b, rtol=0, atol=1e-3 * scale)
    frame = processor.sam_image_size
    for row in range(low_res_a.shape[0]):
        full_a = upscale_mask_logits(low_res_a[row], reshaped_sizes[row], size, frame)
        full_b = upscale_mask_logits(low_res_b[row], reshaped_sizes[row], size, frame)
        decided = full_b.abs() > 1e-2 * scale
        assert decided.float().mean() > 0.9
        assert torch.equal((full_a > 0)[decided], (full_b > 0)[decided])


# --- losses and the trainable set -------------------------------------------------------------------------------
LORA_NAME = re.compile(
    r"language_model\.model\.layers\.(\d+)\.self_attn\.(q_proj|v_proj)\.lora_([AB])\.default\.weight"
)
TOKEN_ADAPTERS = {
    "language_model.model.embed_tokens.token_adapter.trainable_tokens_delta.default": "embed_tokens",
    "language_model.lm_head.token_adapter.trainable_tokens_delta.default": "lm_head",
}
FULLY_TRAINED = ("multi_modal_projector", "text_hidden_fc", "sam_mask_decoder", "feature_fusion")
FROZEN = ("vision_tower", "sam_image_encoder", "sam_prompt_encoder")


def test_lora_trains_exactly_the_papers_parts(checkpoint, processor, pair):
    t1, t2, mask = pair
    model = load_model(checkpoint)
    config = model.config
    module_params = {name: {n for n, _ in getattr(model, name).named_parameters()} for name in FULLY_TRAINED}
    peft_model = apply_lora(model)
    peft_model.train()
    params = {n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters()}
    trainable = {n for n, p in params.items() if p.requires_grad}

    lora = {n: LORA_NAME.fullmatch(n) for n in trainable if "lora_" in n}
    assert all(lora.values()), [n for n, m in lora.items() if not m]
    layers = config.text_config.num_hidden_layers
    assert {(m[1], m[2], m[3]) for m in lora.values()} == {
        (str(i), proj, ab) for i in range(layers) for proj in ("q_proj", "v_proj") for ab in "AB"}
    hidden = config.text_config.hidden_size
    for name in lora:
        assert tuple(params[name].shape) == ((8, hidden) if ".lora_A." in name else (hidden, 8))
    # No LoRA anywhere else: not in CLIP, not in SAM's two-way transformer (which has its own q_proj/v_proj).
    assert not [n for n in params if "lora_" in n and not n.startswith("language_model.")]

    assert set(TOKEN_ADAPTERS) <= trainable
    for name in TOKEN_ADAPTERS:
        assert tuple(params[name].shape) == (5, hidden)

    copies = {n for n in trainable if ".modules_to_save.default." in n}
    # Each fully trained module is trained whole but for the parts no loss reaches (SAM's IoU head and multi-mask
    # hypernetworks), which stay frozen.
    unused = tuple(f"{name}." for name in model.unused_module_names)
    assert "sam_mask_decoder.iou_prediction_head." in unused
    trained = {module_path(n) for n in copies}
    for module in FULLY_TRAINED:
        expected = {f"{module}.{n}" for n in module_params[module]}
        assert {n for n in trained if n.startswith(f"{module}.")} == {n for n in expected if not n.startswith(unused)}
    assert trainable == set(lora) | set(TOKEN_ADAPTERS) | copies

    frozen = set(params) - trainable
    assert any(n.startswith("language_model.") and n.endswith("q_proj.base_layer.weight") for n in frozen)
    assert all(any(n.startswith(m) for m in FROZEN) or n.startswith("language_model.")
               or ".original_module." in n or n.startswith(unused) for n in frozen), sorted(frozen)
    for module in FROZEN:
        assert any(n.startswith(module) for n in frozen)
        assert not any(n.startswith(module) for n in trainable)

    inputs = processor(images_t1=[t1, t1], images_t2=[t2, t2], text=QUESTIONS, answers=ANSWERS,
                       masks=[mask, mask])
    out = peft_model(**inputs)
    for part in ("loss", "ce_loss", "bce_loss", "dice_loss"):
        value = getattr(out, part)
        assert torch.isfinite(value) and value > 0, (part, value)
    expected = config.ce_loss_weight * out.ce_loss + config.bce_loss_weight * out.bce_loss \
        + config.dice_loss_weight * out.dice_loss
    if out.presence_loss is not None:  # the tiny preset's presence head and question mask
        expected = expected + config.presence_loss_weight * out.presence_loss
        expected = expected + config.question_mask_loss_weight * out.question_mask_loss
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()

    def has_grad(name):
        grad = params[name].grad
        return grad is not None and bool(grad.abs().sum() > 0)

    for name in frozen:
        assert params[name].grad is None, name
    # The trainable set is exactly what the loss reaches: no optimizer state, and no DDP "unused parameter", for
    # anything that never gets a gradient.
    assert [name for name in trainable if params[name].grad is None] == []
    # LoRA starts as the base model (B = 0): B receives a gradient, A does not yet.
    for name in lora:
        assert has_grad(name) == (".lora_B." in name), name
    # New token rows: `<T1>`/`<T2>` embeddings are replaced by image features, so only `<p>`, `</p>`, `[SEG]`
    # rows of embed_tokens learn; every new row of lm_head does (they are classes of the softmax).
    new_ids = [config.t1_token_id, config.t2_token_id, config.p_start_token_id, config.p_end_token_id,
               config.seg_token_id]
    assert new_ids == list(range(new_ids[0], new_ids[0] + 5))
    embed_rows = params["language_model.model.embed_tokens.token_adapter.trainable_tokens_delta.default"].grad
    assert (embed_rows.abs().sum(dim=1) > 0).tolist() == [False, False, True, True, True]
    head_rows = params["language_model.lm_head.token_adapter.trainable_tokens_delta.default"].grad
    assert (head_rows.abs().sum(dim=1) > 0).all()
    for module in FULLY_TRAINED:
        assert any(has_grad(n) for n in copies if n.startswith(module + ".")), module
    # The ResNet branch of the fusion module and the decoder's transformer are trained too.
    assert has_grad("feature_fusion.modules_to_save.default.resnet_fpn.backbone.conv1.weight")
    assert has_grad("sam_mask_decoder.transformer.modules_to_save.default.layers.0.self_attn.q_proj.weight")


def test_answers_without_seg_give_text_loss_only_and_empty_masks(model, processor, pair):
    t1, t2, mask = pair
    no_seg = ["There is no change of interest between the two images.", "No roads were built."]
    inputs = processor(images_t1=t1, images_t2=t2, text=["rivers", "roads"], answers=no_seg, masks=[mask, mask])
    out = model(**inputs)
    assert not out.seg_present.any()
    assert out.ce_loss > 0 and out.bce_loss == 0 and out.dice_loss == 0
    presence = 0.0 if out.presence_loss is None else model.config.presence_loss_weight * out.presence_loss
    # With the question mask, absent questions still teach the mask path: toward an empty map.
    question = 0.0 if out.question_mask_loss is None else \
        model.config.question_mask_loss_weight * out.question_mask_loss
    torch.testing.assert_close(out.loss, model.config.ce_loss_weight * out.ce_loss + presence + question)
    assert not out.pred_masks.any() and not out.seg_hidden_states.any()

    # In a mixed batch the row without [SEG] adds nothing to the mask losses.
    mixed = model(**processor(images_t1=t1, images_t2=t2, text=["new buildings", "rivers"],
                              answers=[ANSWERS[0], no_seg[0]], masks=[mask, mask]))
    alone = model(**processor(images_t1=t1, images_t2=t2, text="new buildings", answers=ANSWERS[0], masks=[mask]))
    assert mixed.seg_present.tolist() == [True, False]
    torch.testing.assert_close(mixed.bce_loss, alone.bce_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mixed.dice_loss, alone.dice_loss, rtol=1e-4, atol=1e-6)
    assert mixed.pred_masks[0].abs().sum() > 0 and not mixed.pred_masks[1].any()

    # Generation that answers without [SEG] gives the answer text and an empty full-size mask.
    gen_inputs = processor(images_t1=t1, images_t2=t2, text=["rivers", "new buildings"])
    out = forced_generate(model, processor, gen_inputs, [no_seg[0], ANSWERS[0]])
    assert out.seg_present.tolist() == [False, True]
    results = processor.post_process_generation(out, target_sizes=[(HEIGHT, WIDTH)])
    assert results[0]["text"] == no_seg[0]
    assert results[0]["mask"].shape == (HEIGHT, WIDTH) and results[0]["mask"].dtype == bool
    assert not results[0]["mask"].any()
    assert results[1]["raw_text"] == "It's [SEG]." and results[1]["text"] == "It's the area marked in the mask."


def _weighted_ce(logits, labels, seg_id, seg_weight, decision_weight=1.0):
    """The loss (docs/ARCHITECTURE.md, "Data flow") by hand: mean CE over answer tokens, the [SEG] target weighted
    `seg_weight`, each answer's opening (present/absent) tokens `decision_weight`."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    valid = targets != -100
    per_token = F.cross_entropy(logits[valid], targets[valid], reduction="none")
    weights = torch.where(targets[valid] == seg_id, seg_weight, 1.0)
    opening = (valid.long().cumsum(dim=1) <= ANSWER_DECISION_TOKENS)[valid]
    weights = torch.where(opening, weights * decision_weight, weights)
    return (per_token * weights).sum() / weights.sum()


def test_ce_weights_seg_tenfold_only_when_greedy_misses_it(model, processor, pair):
    t1, t2, mask = pair
    config = model.config
    assert config.seg_token_loss_weight == 10.0
    decision = config.answer_decision_loss_weight
    inputs = processor(images_t1=t1, images_t2=t2, text=QUESTIONS, answers=ANSWERS, masks=[mask, mask])
    seg_id, labels = config.seg_token_id, inputs["labels"]
    with torch.no_grad():
        out = model(**inputs)
    # The random model never predicts [SEG] greedily: the [SEG] class weighs 10 in both rows.
    assert not (out.logits.argmax(-1) == seg_id).any()
    torch.testing.assert_close(out.ce_loss, _weighted_ce(out.logits, labels, seg_id, 10.0, decision))
    assert not torch.allclose(out.ce_loss, _weighted_ce(out.logits, labels, seg_id, 1.0, decision))

    # A model whose greedy answer is [SEG] everywhere is not penalised extra: plain mean CE.
    always_seg = copy.deepcopy(model)
    make_seg_the_only_answer(always_seg)
    with torch.no_grad():
        out = always_seg(**inputs)
    assert (out.logits.argmax(-1) == seg_id).all()
    torch.testing.assert_close(out.ce_loss, _weighted_ce(out.logits, labels, seg_id, 1.0, decision))
    assert not torch.allclose(out.ce_loss, _weighted_ce(out.logits, labels, seg_id, 10.0, decision))



def test_answer_logits_only_gives_the_same_loss_and_gradients_for_less(checkpoint, processor, pair):
    """The trainer's `answer_logits_only`: logits from the position before the earliest answer token on, the
    losses and every gradient as with logits everywhere."""
    t1, t2, mask = pair
    inputs = processor(images_t1=t1, images_t2=t2, text=[QUESTIONS[0], "roads"],
                       answers=[ANSWERS[0], "No roads were built."], masks=[mask, mask])
    runs = {}
    for answer_logits_only in (False, True):
        model = load_model(checkpoint).train()
        for module in model.modules():  # dropout off: the two passes must see the same network
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.config.question_token_dropout = 0.0  # and the same question
        out = model(**inputs, answer_logits_only=answer_logits_only)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        runs[answer_logits_only] = out, grads
    (full, full_grads), (trimmed, trimmed_grads) = runs[False], runs[True]
    labels = inputs["labels"]
    first_answer = int((labels != -100).any(dim=0).nonzero()[0])
    assert trimmed.logits.shape[1] == labels.shape[1] - first_answer + 1 < full.logits.shape[1] // 2
    torch.testing.assert_close(trimmed.logits, full.logits[:, first_answer - 1:], rtol=1e-5, atol=1e-5)
    for term in ("loss", "ce_loss", "bce_loss", "presence_loss"):
        torch.testing.assert_close(trimmed[term], full[term], rtol=1e-5, atol=1e-6)
    assert full_grads.keys() == trimmed_grads.keys() and len(full_grads) > 10
    for name, grad in full_grads.items():
        torch.testing.assert_close(trimmed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

# --- the [SEG] convention ---------------------------------------------------------------------------------------
GENERATE_MODES = {"shared prefix cache": {}, "left-padded cache": {"share_prefix": False},
                  "no cache": {"use_cache": False}}


@pytest.mark.parametrize("mode", list(GENERATE_MODES))
@pytest.mark.parametrize("count", [1, 2], ids=["one question", "two questions"])
def test_seg_state_same_in_teacher_forcing_and_cached_generation(model, processor, pair, count, mode):
    t1, t2, mask = pair
    questions, answers = QUESTIONS[:count], ANSWERS[:count]
    prompts = processor(images_t1=t1, images_t2=t2, text=questions)
    if count == 2:  # questions of different lengths: the shorter prompt is left-padded
        lengths = prompts["attention_mask"].sum(dim=1)
        assert lengths[0] < lengths[1] and prompts["attention_mask"][0, 0] == 0

    generated = forced_generate(model, processor, prompts, answers, **GENERATE_MODES[mode])
    assert generated.seg_present.all()
    results = processor.post_process_generation(generated)
    assert [r["raw_text"] for r in results] == answers

    # Teacher forcing on the same prompts + generated tokens (the processor puts answers after the prompts).
    teacher = processor(images_t1=t1, images_t2=t2, text=questions, answers=answers, masks=[mask] * count)
    with torch.no_grad():
        forced = model(**teacher)
    assert forced.seg_present.all()
    torch.testing.assert_close(generated.seg_hidden_states, forced.seg_hidden_states, rtol=0, atol=1e-4)
    if count == 2:
        assert not torch.allclose(forced.seg_hidden_states[0], forced.seg_hidden_states[1], atol=1e-2)

    # It is the state that predicts [SEG]: its logits are those at the position before [SEG], not at [SEG].
    head = model.language_model.get_output_embeddings()
    seg_id = model.config.seg_token_id
    for row in range(count):
        seg_position = int((teacher["input_ids"][row] == seg_id).nonzero()[0])
        with torch.no_grad():
            logits = head(forced.seg_hidden_states[row])
        torch.testing.assert_close(logits, forced.logits[row, seg_position - 1], rtol=0, atol=1e-4)
        assert not torch.allclose(logits, forced.logits[row, seg_position], atol=1e-2)

    assert_masks_agree(processor, generated.pred_masks, forced.pred_masks,
                       teacher["reshaped_sizes"][teacher["pair_index"]], (HEIGHT, WIDTH))
    assert all(r["mask"].shape == (HEIGHT, WIDTH) and r["mask"].any() for r in results)


# --- several targets per answer ---------------------------------------------------------------------------------
MULTI_QUESTIONS = ["new buildings and new ponds", "everything urbanisation changed here"]
MULTI_ANSWERS = ["The new buildings [SEG] and the new water bodies [SEG].",
                 "The new buildings [SEG], the removed trees [SEG] and the removed patches of low vegetation [SEG]."]


@pytest.mark.parametrize("mode", list(GENERATE_MODES))
def test_every_seg_state_same_in_teacher_forcing_and_cached_generation(model, processor, pair, mode):
    t1, t2, mask = pair
    questions = [*MULTI_QUESTIONS, "new buildings"]
    answers = [*MULTI_ANSWERS, "It's the new buildings [SEG]."]
    generated = forced_generate(model, processor, processor(images_t1=t1, images_t2=t2, text=questions), answers,
                                **GENERATE_MODES[mode])
    assert generated.target_present.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    truths = [[mask, ~mask], [mask, ~mask, mask], [mask]]
    teacher = processor(images_t1=t1, images_t2=t2, text=questions, answers=answers, masks=truths)
    assert teacher["masks"].shape == (3, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        forced = model(**teacher)
    assert torch.equal(forced.target_present, generated.target_present)
    torch.testing.assert_close(generated.target_hidden_states, forced.target_hidden_states, rtol=0, atol=1e-4)
    present = forced.target_present
    states = forced.target_hidden_states[present]
    assert not torch.allclose(states[0], states[1], atol=1e-2)  # each [SEG] has a state of its own

    # Each is the state that predicts its own [SEG].
    head = model.language_model.get_output_embeddings()
    for row in range(len(questions)):
        positions = (teacher["input_ids"][row] == model.config.seg_token_id).nonzero().squeeze(1)
        with torch.no_grad():
            logits = head(forced.target_hidden_states[row, : len(positions)])
        torch.testing.assert_close(logits, forced.logits[row, positions - 1], rtol=0, atol=1e-4)

    rows = teacher["pair_index"][present.nonzero()[:, 0]]
    assert_masks_agree(processor, generated.target_masks[present], forced.target_masks[present],
                       teacher["reshaped_sizes"][rows], (HEIGHT, WIDTH))
    # The first target is what single-mask callers read.
    torch.testing.assert_close(forced.pred_masks, forced.target_masks[:, 0])
    torch.testing.assert_close(forced.seg_hidden_states, forced.target_hidden_states[:, 0])

    results = processor.post_process_generation(generated)
    assert [[t["label"] for t in r["targets"]] for r in results] == [
        ["new buildings", "new water bodies"],
        ["new buildings", "removed trees", "removed patches of low vegetation"], ["new buildings"]]
    for row, result in enumerate(results):
        union = np.logical_or.reduce([t["mask"] for t in result["targets"]])
        assert np.array_equal(result["mask"], union)
        for k, target in enumerate(result["targets"]):
            assert target["mask"].shape == (HEIGHT, WIDTH)
            assert target["seg_probability"] == pytest.approx(float(generated.target_seg_probabilities[row, k]))
            assert 0.0 <= target["mask_confidence"] <= 1.0
        assert result["seg_probability"] == pytest.approx(min(t["seg_probability"] for t in result["targets"]))


def test_the_mask_loss_averages_every_target_against_its_own_truth(model, processor, pair):
    t1, t2, mask = pair
    other = np.zeros_like(mask)
    other[150:190, 200:280] = True
    config = model.config
    inputs = processor(images_t1=t1, images_t2=t2, text=MULTI_QUESTIONS[:1] + ["rivers"],
                       answers=[MULTI_ANSWERS[0], "There is no change of interest: no water bodies appear."],
                       masks=[[mask, other], np.zeros_like(mask)])
    with torch.no_grad():
        out = model(**inputs)
    assert out.target_present.tolist() == [[True, True], [False, False]]

    # By hand: per target, weighted BCE and Dice against its own truth; pixels of the answer's other target weigh
    # other_change_bce_weight (they changed, but not for this target).
    bce_terms, dice_terms = [], []
    for k, (own, rival) in enumerate(((mask, other), (other, mask))):
        logits = upscale_mask_logits(out.target_masks[0, k], inputs["reshaped_sizes"][0], (HEIGHT, WIDTH),
                                     processor.sam_image_size).float()
        target = torch.from_numpy(own).float()
        weight = 1.0 + (config.other_change_bce_weight - 1.0) * torch.from_numpy(rival & ~own).float()
        bce_terms.append(F.binary_cross_entropy_with_logits(logits, target, weight=weight,
                                                            pos_weight=torch.tensor(config.bce_pos_weight)))
        probability = logits.sigmoid()
        dice_terms.append(1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1))
    torch.testing.assert_close(out.bce_loss, torch.stack(bce_terms).mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.dice_loss, torch.stack(dice_terms).mean(), rtol=1e-4, atol=1e-6)

    # The second target's truth counts: another truth for it, another loss.
    with torch.no_grad():
        moved = model(**processor(images_t1=t1, images_t2=t2, text=MULTI_QUESTIONS[:1], answers=MULTI_ANSWERS[:1],
                                  masks=[[mask, ~other]]))
    assert not torch.allclose(moved.bce_loss, out.bce_loss) and not torch.allclose(moved.dice_loss, out.dice_loss)

    with pytest.raises(ValueError, match="one mask per"):
        processor(images_t1=t1, images_t2=t2, text=MULTI_QUESTIONS[:1], answers=MULTI_ANSWERS[:1], masks=[[mask]])
    with pytest.raises(ValueError, match="one mask per"):
        model(**processor(images_t1=t1, images_t2=t2, text=MULTI_QUESTIONS[:1], answers=MULTI_ANSWERS[:1],
                          masks=[mask]))


def test_a_partly_absent_answer_masks_only_what_changed(model, processor, pair):
    t1, t2, mask = pair
    answers = ["The new buildings [SEG]; there are no new water bodies.",
               "There is no change of interest: there are no new water bodies and no new playgrounds."]
    inputs = processor(images_t1=t1, images_t2=t2, text=MULTI_QUESTIONS[:1] + ["new ponds and new playgrounds"])
    generated = forced_generate(model, processor, inputs, answers)
    assert generated.target_present.tolist() == [[True], [False]]
    present, absent = processor.post_process_generation(generated)
    assert [t["label"] for t in present["targets"]] == ["new buildings"]
    assert np.array_equal(present["mask"], present["targets"][0]["mask"])
    assert present["text"] == "The new buildings; there are no new water bodies."
    assert absent["targets"] == [] and not absent["mask"].any()
    assert absent["mask_confidence"] == pytest.approx(1.0 - absent["seg_probability"])

    # In training the absent part has no mask: one truth for the one [SEG].
    teacher = processor(images_t1=t1, images_t2=t2, text=MULTI_QUESTIONS[:1], answers=answers[:1], masks=[[mask]])
    with torch.no_grad():
        out = model(**teacher)
    assert out.target_present.tolist() == [[True]] and out.bce_loss > 0


# --- one encoding per pair --------------------------------------------------------------------------------------
def test_several_questions_encode_the_pair_once(model, processor, pair):
    t1, t2, _ = pair
    questions = ["new buildings", "changes caused by heavy rainfall", "roads that were removed to make space"]
    calls = {"vision_tower": [], "sam_image_encoder": []}

    def recorder(name):
        def hook(module, args, kwargs, output):
            pixels = args[0] if args else next(iter(kwargs.values()))
            calls[name].append(pixels.shape[0])
        return hook

    handles = [getattr(model, name).register_forward_hook(recorder(name), with_kwargs=True) for name in calls]
    try:
        batch_inputs = processor(images_t1=t1, images_t2=t2, text=questions)
        assert batch_inputs["pair_index"].tolist() == [0, 0, 0]
        assert batch_inputs["pixel_values_t1"].shape[0] == 1
        batch = model.generate(**batch_inputs, max_new_tokens=8)
        assert calls == {"vision_tower": [2], "sam_image_encoder": [2]}
        batch_forced = forced_generate(model, processor, batch_inputs, ["It's [SEG]."] * 3)
    finally:
        for handle in handles:
            handle.remove()

    batch_texts = [r["text"] for r in processor.post_process_generation(batch)]
    for row, question in enumerate(questions):
        single_inputs = processor(images_t1=t1, images_t2=t2, text=question)
        single = model.generate(**single_inputs, max_new_tokens=8)
        assert processor.post_process_generation(single)[0]["text"] == batch_texts[row]
        assert torch.equal(single.sequences[0], batch.sequences[row, : single.sequences.shape[1]])
        single_forced = forced_generate(model, processor, single_inputs, ["It's [SEG]."])
        torch.testing.assert_close(single_forced.seg_hidden_states[0], batch_forced.seg_hidden_states[row],
                                   rtol=0, atol=1e-4)
        assert_masks_agree(processor, batch_forced.pred_masks[row : row + 1], single_forced.pred_masks,
                           single_inputs["reshaped_sizes"], (HEIGHT, WIDTH))
    # Different questions about one pair give different [SEG] states (the prompt matters).
    assert not torch.allclose(batch_forced.seg_hidden_states[0], batch_forced.seg_hidden_states[1], atol=1e-3)


def test_finished_answers_leave_the_batch_and_change_nothing(model, processor, pair):
    """ReasonCD's own decoding loop drops each row once it ends; its tokens, [SEG] states and masks equal those of
    the language model's `generate` (which keeps every row to the end) from the same shared-prefix cache."""
    t1, t2, _ = pair
    questions = ["new buildings", "water", "changes that provide more living areas for people, and explain why"]
    answers = ["It's [SEG].", "No water changed.", "Houses were built on the former fields, so the change is [SEG]."]
    inputs = processor(images_t1=t1, images_t2=t2, text=questions)
    batch_sizes = []
    handle = model.language_model.register_forward_hook(
        lambda module, args, kwargs, output: batch_sizes.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    try:
        ours = forced_generate(model, processor, inputs, answers)
    finally:
        handle.remove()
    lengths = [len(row) for row in answer_token_ids(processor, answers)]  # answer + </s>
    # One prefill of the shared prefix (one pair), then the suffixes of all three rows (with a presence head, first
    # up to `</p>`, where it decides, then the rest); each row stays until its `</s>`, then leaves.
    decisions = int(model.presence is not None)
    assert batch_sizes[0] == 1 and batch_sizes[1:1 + decisions] == [3] * decisions
    assert batch_sizes[1 + decisions:] == [sum(length > step for length in lengths) for step in range(max(lengths))]
    # A logits processor that changes nothing routes through the language model's own `generate`.
    reference = forced_generate(model, processor, inputs, answers, repetition_penalty=1.0)
    assert torch.equal(ours.sequences, reference.sequences)
    assert torch.equal(ours.seg_present, reference.seg_present)
    assert ours.seg_present.tolist() == [True, False, True]
    torch.testing.assert_close(ours.seg_hidden_states, reference.seg_hidden_states, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.pred_masks, reference.pred_masks, rtol=0, atol=1e-4)
    # Free greedy decoding agrees as well.
    free, free_reference = (model.generate(**inputs, max_new_tokens=6, **extra)
                            for extra in ({}, {"repetition_penalty": 1.0}))
    assert torch.equal(free.sequences, free_reference.sequences)
    torch.testing.assert_close(free.pred_masks, free_reference.pred_masks, rtol=0, atol=1e-4)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"max_new_tokens must be a positive integer, got {bad!r}"):
            model.generate(**inputs, max_new_tokens=bad)


def test_questions_about_one_pair_share_its_prompt_in_teacher_forcing(model, processor, pair):
    """Outside training, the prompt up to `<p>` runs once per pair for all its questions; the losses, logits,
    presence decisions and gradients are those of one pass over every row (padding differs from row to row: answers
    of several lengths). Training keeps one pass per row."""
    a1, a2, mask = pair
    b1, b2 = random_image(HEIGHT, WIDTH, seed=7), random_image(HEIGHT, WIDTH, seed=8)
    questions = ["new buildings", "rivers", "new buildings", QUESTIONS[1], "water"]
    answers = [ANSWERS[0], "No rivers changed.", ANSWERS[1], ANSWERS[1], "There is no change of interest."]
    rows_pairs = [0, 0, 1, 0, 1]
    images = {0: (a1, a2), 1: (b1, b2)}
    encoded = processor(images_t1=[images[p][0] for p in rows_pairs], images_t2=[images[p][1] for p in rows_pairs],
                        text=questions, answers=answers, masks=[mask] * len(questions))
    inputs = {**encoded, "pair_index": torch.tensor(rows_pairs)}
    for key in ("pixel_values_t1", "pixel_values_t2", "sam_pixel_values_t1", "sam_pixel_values_t2",
                "reshaped_sizes", "image_sizes"):
        inputs[key] = encoded[key][[0, 2]]
    assert (inputs["attention_mask"] == 0).any()  # some rows are padded
    twin = copy.deepcopy(model)

    def run(share):
        twin.share_prompt_prefix = share
        twin.zero_grad(set_to_none=True)
        calls = []
        handle = twin.language_model.register_forward_hook(
            lambda module, args, kwargs, output: calls.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
        try:
            out = twin(**inputs)
        finally:
            handle.remove()
        out.loss.backward()
        return out, calls, {name: p.grad.clone() for name, p in twin.named_parameters() if p.grad is not None}

    (each, each_calls, each_grads), (shared, shared_calls, shared_grads) = run(False), run(True)
    assert each_calls[0] == 5 and shared_calls[:2] == [2, 5]  # the prefix once per pair, then every suffix
    torch.testing.assert_close(shared.loss, each.loss, rtol=1e-5, atol=1e-6)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(shared.logits[real], each.logits[real], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shared.presence_logits, each.presence_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shared.pred_masks, each.pred_masks, rtol=1e-4, atol=1e-4)
    assert shared_grads.keys() == each_grads.keys()
    compared = 0
    for name, grad in each_grads.items():
        if grad.norm() > 1e-6:  # parameters whose gradient is zero in exact arithmetic are left out
            assert (shared_grads[name] - grad).norm() <= 1e-3 * grad.norm(), name
            compared += 1
    assert compared > 50
    twin.train()
    _, training_calls, _ = run(True)
    assert training_calls == [5]


def test_rows_about_different_pairs_use_their_own_images(model, processor, pair):
    """Rows in any order refer to their pair through `pair_index`: each gets its own pair's images (and prompt
    cache), exactly as if asked alone."""
    a1, a2, _ = pair
    b1, b2 = random_image(WIDTH, HEIGHT, seed=7), random_image(WIDTH, HEIGHT, seed=8)  # 300x200: another shape
    questions = ["new buildings", "water", "roads that were removed"]
    pair_index = [1, 0, 1]
    encoded = processor(images_t1=[b1, a1, b1], images_t2=[b2, a2, b2], text=questions)
    # Keep pairs 0 (B) and 1 (A) only, and point the rows at them out of order.
    inputs = {**encoded, "pair_index": torch.tensor([0, 1, 0])}
    for key in ("pixel_values_t1", "pixel_values_t2", "sam_pixel_values_t1", "sam_pixel_values_t2",
                "reshaped_sizes", "image_sizes"):
        inputs[key] = encoded[key][:2]
    calls = []
    handle = model.vision_tower.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        together = forced_generate(model, processor, inputs, ["It's [SEG]."] * 3)
    finally:
        handle.remove()
    assert calls == [4]  # two pairs, both dates, one call
    results = processor.post_process_generation(together)
    images = {0: (b1, b2), 1: (a1, a2)}
    for row, question in enumerate(questions):
        t1, t2 = images[[0, 1, 0][row]]
        alone_inputs = processor(images_t1=t1, images_t2=t2, text=question)
        alone = forced_generate(model, processor, alone_inputs, ["It's [SEG]."])
        torch.testing.assert_close(together.seg_hidden_states[row], alone.seg_hidden_states[0], rtol=0, atol=1e-4)
        assert_masks_agree(processor, together.pred_masks[row : row + 1], alone.pred_masks,
                           alone_inputs["reshaped_sizes"], t1.shape[:2])
        assert results[row]["mask"].shape == t1.shape[:2]
    assert pair_index == [1, 0, 1]


# --- the mask decoder -------------------------------------------------------------------------------------------
def test_decode_masks_equals_segment_anythings_single_mask_decoder():
    """`decode_masks` inlines `MaskDecoder.predict_masks` to give each prompt its own image embedding."""
    torch.manual_seed(0)
    config = ReasonCDConfig.from_preset("tiny", seg_state_norm=False, mask_conditioning="sparse")
    model = ReasonCDForChangeDetection(config).eval()
    grid = config.sam_config.embedding_grid
    embeds = torch.randn(3, 64, grid, grid)
    states = torch.randn(3, config.text_config.hidden_size)
    with torch.no_grad():
        ours = model.decode_masks(embeds, states)
        prompts = model.text_hidden_fc(states)
        for row in range(3):
            upstream, _ = model.sam_mask_decoder(
                image_embeddings=embeds[row:row + 1],
                image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=prompts[row:row + 1, None],
                dense_prompt_embeddings=model.sam_prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
                .expand(1, -1, grid, grid),
                multimask_output=False,
            )
            torch.testing.assert_close(ours[row], upstream[0, 0], rtol=1e-4, atol=1e-5)


# --- the fusion module's ResNet ---------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [18, 34])
def test_a_narrower_resnet_keeps_torchvisions_blocks_and_names_at_a_fraction_of_the_width(depth):
    import torchvision

    from modeling_reasoncd import ResNetFPN, resnet_backbone

    official = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    official = {key: value for key, value in official.items() if not key.startswith("fc.")}
    assert {key: value.shape for key, value in resnet_backbone(depth).state_dict().items()} == \
        {key: value.shape for key, value in official.items()}
    narrow = resnet_backbone(depth, base_width=16).state_dict()
    assert narrow.keys() == official.keys()
    for key, value in official.items():
        # Every channel count is a quarter of torchvision's; the stem still reads three colour channels, and
        # kernels keep their size.
        kept = lambda dim: (key == "conv1.weight" and dim == 1) or (value.dim() == 4 and dim >= 2)  # noqa: E731
        expected = [size if kept(dim) else size // 4 for dim, size in enumerate(value.shape)]
        assert list(narrow[key].shape) == expected, key
    fpn = ResNetFPN(depth, out_channels=32, base_width=16).eval()
    with torch.no_grad():
        levels = fpn(torch.randn(2, 3, 128, 128))
    assert [tuple(level.shape) for level in levels] == [(2, 32, 32 // 2**i, 32 // 2**i) for i in range(4)]
    with pytest.raises(ValueError, match="resnet_base_width=0"):
        resnet_backbone(depth, base_width=0)


# --- save and reload through the Hub loader ---------------------------------------------------------------------
RELOAD_SCRIPT = textwrap.dedent(
    """
    import inspect, json, sys
    from pathlib import Path
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor

    checkpoint, data, questions_file, out = sys.argv[1:5]
    ours = json.loads(sys.argv[5])
    for name in ours:
        sys.modules.pop(name, None)
    model, info = AutoModel.from_pretrained(checkpoint, trust_remote_code=True, output_loading_info=True)
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    arrays = np.load(data)
    spec = json.loads(Path(questions_file).read_text())
    images = dict(images_t1=arrays["t1"], images_t2=arrays["t2"])
    prompts = processor(**images, text=spec["questions"])
    generated = model.generate(**prompts, max_new_tokens=6)
    teacher = processor(**images, text=spec["questions"], answers=spec["answers"],
                        masks=[arrays["mask"]] * len(spec["answers"]))
    with torch.no_grad():
        forward = model(**teacher)
    torch.save({"input_ids": teacher["input_ids"], "pixel_values_t1": teacher["pixel_values_t1"],
                "sam_pixel_values_t1": teacher["sam_pixel_values_t1"], "sequences": generated.sequences,
                "loss": forward.loss, "pred_masks": forward.pred_masks,
                "seg_hidden_states": forward.seg_hidden_states}, out)
    print(json.dumps({
        "loading_info": {k: sorted(map(str, v)) for k, v in info.items()},
        "model_module": type(model).__module__,
        "model_file": inspect.getfile(type(model)),
        "processor_module": type(processor).__module__,
        "repo_modules": [name for name in ours if name in sys.modules],
        "training": model.training,
    }))
    """
)


def test_save_and_reload_in_a_clean_interpreter(tmp_path, pair):
    t1, t2, mask = pair
    spec = {"questions": QUESTIONS, "answers": ANSWERS}
    model, processor = build.build_tiny(seed=3)
    checkpoint = tmp_path / "checkpoint"
    build.save_checkpoint(model, processor, checkpoint)
    model.eval()
    # The model's and the processor's code, and every file they import, travel with the checkpoint.
    assert {f"{name}.py" for name in REMOTE_CODE} - {"pipeline_reasoncd.py"} <= {p.name for p in checkpoint.iterdir()}

    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "reload.py").write_text(RELOAD_SCRIPT)
    np.savez(work / "data.npz", t1=t1, t2=t2, mask=mask)
    (work / "spec.json").write_text(json.dumps(spec))
    modules_cache = tmp_path / "hf_modules"
    # -I: no PYTHONPATH, no user site, no script folder or cwd on sys.path: the repository is not on the path
    # (unless it is installed).
    result = run_script(["-I", "reload.py", str(checkpoint), "data.npz", "spec.json", "reloaded.pt",
                         json.dumps(REMOTE_CODE)], cwd=work,
                        extra_env={"HF_MODULES_CACHE": str(modules_cache)})
    assert not str(work).startswith(str(REPO_ROOT)) and not str(checkpoint).startswith(str(REPO_ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loading_info"]["missing_keys"] == [] and report["loading_info"]["unexpected_keys"] == []
    assert report["loading_info"]["mismatched_keys"] == [] and report["loading_info"]["error_msgs"] == []
    # Whether or not the repository is installed (an editable install puts it back on the path), the model and
    # processor classes come from the checkpoint's own code in the modules cache, and the repository's modules
    # were never imported.
    assert report["repo_modules"] == []
    assert report["model_module"].startswith("transformers_modules.")
    assert report["processor_module"].startswith("transformers_modules.")
    assert report["model_file"].startswith(str(modules_cache))
    assert report["training"] is False
    reloaded = torch.load(work / "reloaded.pt")

    images = dict(images_t1=t1, images_t2=t2)
    prompts = processor(**images, text=QUESTIONS)
    generated = model.generate(**prompts, max_new_tokens=6)
    teacher = processor(**images, text=QUESTIONS, answers=ANSWERS, masks=[mask, mask])
    with torch.no_grad():
        forward = model(**teacher)
    assert torch.equal(reloaded["input_ids"], teacher["input_ids"])
    torch.testing.assert_close(reloaded["pixel_values_t1"], teacher["pixel_values_t1"])
    torch.testing.assert_close(reloaded["sam_pixel_values_t1"], teacher["sam_pixel_values_t1"])
    assert torch.equal(reloaded["sequences"], generated.sequences)
    torch.testing.assert_close(reloaded["loss"], forward.loss, rtol=1e-5, atol=1e-6)
    assert forward.pred_masks.abs().max() > 0
    torch.testing.assert_close(reloaded["pred_masks"], forward.pred_masks, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(reloaded["seg_hidden_states"], forward.seg_hidden_states, rtol=1e-4, atol=1e-5)
