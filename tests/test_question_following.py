"""The mask must follow the question: a short training of the mask path alone, on pairs where two questions have
disjoint truths, must give each question its own mask.

The `[SEG]` states are made the way a collapsed language model makes them: one large component shared by every
question (the "say [SEG] next" direction) plus a small part that names the change. The tiny preset's mask path
(standardised states, FiLM) separates the two questions; the paper's (`seg_state_norm=False`,
`mask_conditioning="sparse"`) does not pass in this budget.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configuration_reasoncd import ReasonCDConfig
from modeling_reasoncd import (ANSWER_DECISION_TOKENS, ReasonCDForChangeDetection, SegStateStandardizer,
                               _changed_for_other_targets, answer_loss, changed_in_each_rows_pair)
from reasoncd.build import build_tiny

SIZE = 256  # the tiny preset's SAM frame: no resize, no padding
STEPS = 120


def _pair(rng: np.random.Generator):
    """T1/T2 with two kinds of change in disjoint places: red roofs appear (A), a dark pond appears (B)."""
    t1 = (rng.normal(0.45, 0.05, (SIZE, SIZE, 3)) * 255).clip(0, 255)
    t2 = t1 + rng.normal(0, 6, t1.shape)
    truth_a, truth_b = np.zeros((SIZE, SIZE), bool), np.zeros((SIZE, SIZE), bool)
    left = rng.integers(0, 2)  # which half gets which change
    for truth, x0 in ((truth_a, 0 if left else SIZE // 2), (truth_b, SIZE // 2 if left else 0)):
        y, x = rng.integers(16, SIZE - 96), x0 + rng.integers(16, SIZE // 2 - 80)
        truth[y:y + 64 + rng.integers(0, 16), x:x + 64 + rng.integers(0, 16)] = True
    t2[truth_a] = (200, 40, 30)
    t2[truth_b] = (20, 40, 90)
    return t1.clip(0, 255).astype(np.uint8), t2.clip(0, 255).astype(np.uint8), truth_a, truth_b


# The part of a [SEG] state that names the change, relative to the part all states share: cosine 0.998 between two
# questions, as measured between the prompts of a collapsed quickstart model.
CLASS_SCALE = 0.134


def _seg_states(hidden: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shared = 3.0 * torch.randn(hidden, generator=generator)
    return shared + CLASS_SCALE * torch.randn(2, hidden, generator=generator)  # rows: question A, question B


def _sam_pixels(image: np.ndarray, config: ReasonCDConfig) -> torch.Tensor:
    """SAM's normalisation; a 256-px image fills the tiny preset's frame, so there is nothing to resize or pad."""
    mean = torch.tensor(config.sam_config.pixel_mean).view(3, 1, 1)
    std = torch.tensor(config.sam_config.pixel_std).view(3, 1, 1)
    return (torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


@pytest.mark.timeout(600)
def test_a_short_training_of_the_mask_path_gives_each_question_its_own_mask():
    torch.manual_seed(0)
    config = ReasonCDConfig.from_preset("tiny")
    model = ReasonCDForChangeDetection(config)
    rng = np.random.default_rng(0)
    train_pairs, test_pairs = [_pair(rng) for _ in range(8)], [_pair(rng) for _ in range(4)]
    states = _seg_states(config.text_config.hidden_size, seed=0)

    def encode(pairs):
        t1 = torch.stack([_sam_pixels(p[0], config) for p in pairs])
        t2 = torch.stack([_sam_pixels(p[1], config) for p in pairs])
        truths = torch.tensor(np.stack([np.stack([p[2], p[3]]) for p in pairs]), dtype=torch.float32)
        with torch.no_grad():
            sam = model.sam_image_encoder(torch.cat([t1, t2]))
        return t1, t2, sam[: len(pairs)], sam[len(pairs):], truths

    def masks_for(batch):
        t1, t2, sam1, sam2, _ = batch
        embeds = model.feature_fusion(sam1, sam2, t1, t2)
        n = embeds.shape[0]
        per_row = embeds.repeat_interleave(2, dim=0)  # each pair asked both questions
        logits = model.decode_masks(per_row, states.repeat(n, 1))
        return F.interpolate(logits[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]

    trainable = [p for name in model.trainable_module_names if name != "multi_modal_projector"
                 for p in getattr(model, name).parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    train = encode(train_pairs)
    model.train()
    for step in range(STEPS):
        chosen = torch.tensor(np.random.default_rng(step).choice(len(train_pairs), 4, replace=False))
        batch = tuple(part[chosen] for part in train)
        logits = masks_for(batch)
        target = batch[4].reshape(-1, SIZE, SIZE)
        probability = logits.sigmoid()
        dice = 1 - (2 * (probability * target).sum((1, 2)) + 1) / (probability.sum((1, 2)) + target.sum((1, 2)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0)) + dice.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    test = encode(test_pairs)
    with torch.no_grad():
        predicted = (masks_for(test) > 0).reshape(len(test_pairs), 2, SIZE, SIZE)
    truths = test[4].bool()
    for index in range(len(test_pairs)):
        mask_a, mask_b = predicted[index]
        truth_a, truth_b = truths[index]
        assert _iou(mask_a, mask_b) < 0.5, f"pair {index}: the two questions got (nearly) the same mask"
        assert _iou(mask_a, truth_a) > _iou(mask_a, truth_b), f"pair {index}: question A's mask is closer to B's truth"
        assert _iou(mask_b, truth_b) > _iou(mask_b, truth_a), f"pair {index}: question B's mask is closer to A's truth"


# --- the options beyond the paper, one by one ---
def test_the_papers_preset_keeps_the_papers_mask_path():
    config = ReasonCDConfig.from_preset("reasoncd-7b")
    assert (config.seg_state_norm, config.mask_conditioning) == (False, "sparse")
    assert (config.answer_decision_loss_weight, config.other_change_bce_weight) == (1.0, 1.0)
    with pytest.raises(ValueError, match="mask_conditioning='dense'"):
        ReasonCDConfig.from_preset("tiny", mask_conditioning="dense")


def test_standardizer_learns_statistics_in_training_and_keeps_them_at_inference():
    norm = SegStateStandardizer(4, momentum=0.5)
    first = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 6.0, 3.0, 0.0]])
    out = norm.train()(first)
    assert torch.allclose(norm.running_mean, torch.tensor([2.0, 4.0, 3.0, 2.0]))  # the first batch sets them
    assert torch.allclose(out[:, [0, 1, 3]].abs(), torch.ones(2, 3), atol=1e-4)
    norm(torch.zeros(2, 4))  # later batches move them by `momentum`
    assert torch.allclose(norm.running_mean, torch.tensor([1.0, 2.0, 1.5, 1.0]))
    norm.eval()
    frozen = norm.running_mean.clone()
    single = norm(first[:1])
    assert torch.equal(norm.running_mean, frozen)  # inference never moves the statistics
    assert torch.allclose(norm(first)[:1], single)  # a question's state does not depend on its batch


def test_film_starts_as_the_papers_decoder_and_then_conditions_on_the_question():
    torch.manual_seed(0)
    config = ReasonCDConfig.from_preset("tiny")
    assert config.mask_conditioning == "film"
    model = ReasonCDForChangeDetection(config).eval()
    paper = ReasonCDForChangeDetection(ReasonCDConfig.from_preset("tiny", mask_conditioning="sparse")).eval()
    paper.load_state_dict(model.state_dict(), strict=False)
    grid = config.sam_config.embedding_grid
    embeds = torch.randn(2, 64, grid, grid)
    states = torch.randn(2, config.text_config.hidden_size)
    with torch.no_grad():
        assert torch.equal(model.decode_masks(embeds, states), paper.decode_masks(embeds, states))
        model.prompt_film.out.weight.normal_()
        conditioned = model.prompt_film(embeds[:1].expand(2, -1, -1, -1), states)
    assert not torch.allclose(conditioned[0], conditioned[1])  # two questions, two image embeddings
    assert "prompt_film" in model.trainable_module_names and "prompt_film" not in paper.trainable_module_names


def test_other_questions_changes_are_the_hard_negatives_of_each_question():
    masks = torch.zeros(4, 2, 2, 3)  # (questions, targets per answer, height, width)
    masks[0, 0, 0, :] = 1  # pair 0, question A: top row
    masks[1, 0, :, 0] = 1  # pair 0, question B: left column (overlaps A at (0, 0))
    masks[2, 0, 1, :] = 1  # pair 1: a change of another pair
    pair_index = torch.tensor([0, 0, 1, 0])  # row 3: an absent question about pair 0

    def hard(row, k):
        return _changed_for_other_targets(changed_in_each_rows_pair(masks, pair_index)[row], masks[row, k])

    assert hard(0, 0).tolist() == [[0, 0, 0], [1, 0, 0]]  # B's pixels outside A's truth; never pair 1's
    assert hard(2, 0).sum() == 0
    assert hard(3, 0).tolist() == [[1, 1, 1], [1, 0, 0]]  # the absent question: every change of its pair
    # A second target of A's answer (bottom right): each of A's targets is a hard negative of the other.
    masks[0, 1, 1, 2] = 1
    assert hard(0, 0).tolist() == [[0, 0, 0], [1, 0, 1]]
    assert hard(0, 1).tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.fixture(scope="module")
def tiny():
    """A random `tiny` model (with the question-following options) and its processor."""
    torch.manual_seed(0)
    model, processor = build_tiny(0)
    return model, processor


def _pair_inputs(processor, questions, answers, masks=None):
    rng = np.random.default_rng(1)
    t1 = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    t2 = t1.copy()
    t2[20:60, 30:90] = 240
    return processor(images_t1=t1, images_t2=t2, text=questions, answers=answers, masks=masks)


def test_a_batch_without_any_mask_reaches_the_same_parameters_as_one_with_masks(tiny):
    """Only absent CRoIs on a process: its mask path must still take part in the gradient reduction (with zeros),
    or the processes of a distributed run reduce different parameter sets."""
    model, processor = tiny
    mask = np.zeros((96, 128), bool)
    mask[20:60, 30:90] = True

    def reached(answers):
        model.zero_grad()
        out = model(**_pair_inputs(processor, ["new buildings", "roads"], answers, masks=[mask, mask]))
        out.loss.backward()
        return out, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    model.train()
    try:
        _, with_masks = reached(["It's the new buildings [SEG].", "No roads."])
        out, without = reached(["There is no change of interest.", "No roads."])
    finally:
        model.eval()
    assert not out.seg_present.any()
    assert set(without) == set(with_masks)
    mask_path = [name for name in without if name.startswith(("text_hidden_fc", "sam_mask_decoder", "prompt_film"))]
    # With the question mask, absent questions teach the mask path an empty map; without it, the path is reached
    # with zeros and learns nothing.
    assert mask_path and any(without[name].any() for name in mask_path) == (model.question_mask is not None)


def test_answer_decision_weight_reweighs_only_the_answers_opening_tokens(tiny):
    model, processor = tiny
    inputs = _pair_inputs(processor, ["new buildings"], ["It's the new buildings [SEG]."])
    logits = torch.randn(1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    labels = inputs["labels"]
    weight = model.config.answer_decision_loss_weight
    targets = labels[0, 1:]
    per_token = F.cross_entropy(logits[0, :-1], targets.clamp(min=0), reduction="none")[targets != -100]
    weights = torch.ones_like(per_token)
    weights[:ANSWER_DECISION_TOKENS] = weight
    if bool((logits[0, :-1].argmax(-1)[targets != -100] != model.config.seg_token_id).all()):
        weights[targets[targets != -100] == model.config.seg_token_id] *= model.config.seg_token_loss_weight
    expected = (per_token * weights).sum() / weights.sum()
    torch.testing.assert_close(answer_loss(logits, labels, model.config), expected)


def test_change_tokens_show_the_language_model_the_fused_change_embedding(tiny):
    model, processor = tiny
    inputs = _pair_inputs(processor, ["new buildings"], None)
    with torch.no_grad():
        features = model.encode_frozen(inputs["pixel_values_t1"], inputs["pixel_values_t2"],
                                       inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
        embeds, _ = model.mask_embeddings(features, inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
        pair_index = torch.zeros(1, dtype=torch.long)
        before = model._merge_image_tokens(inputs["input_ids"], features, pair_index, embeds)
        saved = model.change_projector.weight.clone()
        model.change_projector.weight.normal_()
        after = model._merge_image_tokens(inputs["input_ids"], features, pair_index, embeds)
        model.change_projector.weight.copy_(saved)
    t1 = inputs["input_ids"][0] == model.config.t1_token_id
    t2 = inputs["input_ids"][0] == model.config.t2_token_id
    assert torch.equal(before[0, t1], after[0, t1])  # the earlier image's tokens are CLIP's alone
    assert not torch.allclose(before[0, t2], after[0, t2])  # the later image's carry what changed
    assert torch.equal(before[0, ~(t1 | t2)], after[0, ~(t1 | t2)])


def test_the_papers_ablation_without_fusion_decodes_from_sam_features_alone():
    torch.manual_seed(0)
    config = ReasonCDConfig.from_preset("tiny", use_feature_fusion=False)
    model = ReasonCDForChangeDetection(config).eval()
    assert not hasattr(model.feature_fusion, "resnet_fpn")
    grid, side = config.sam_config.embedding_grid, config.sam_config.low_res_mask_size
    sam_t1, sam_t2 = torch.randn(2, 64, grid, grid), torch.randn(2, 64, grid, grid)
    with torch.no_grad():
        embeds = model.feature_fusion(sam_t1, sam_t2)  # no pixels needed: no ResNet branch
        swapped = model.feature_fusion(sam_t2, sam_t1)
        masks = model.decode_masks(embeds, torch.randn(2, config.text_config.hidden_size))
    assert embeds.shape == (2, 64, grid, grid) and masks.shape == (2, side, side)
    assert not torch.allclose(embeds, swapped)  # the order of the dates matters


# --- the presence decision (`presence_head`) ---
def _one_change_pair(rng: np.random.Generator, which: int):
    """T1/T2 where only one of the two changes of `_pair` happened: red roofs (0) or a dark pond (1)."""
    t1, t2, truth_a, truth_b = _pair(rng)
    gone = truth_b if which == 0 else truth_a
    t2[gone] = t1[gone]
    return t1, t2, which


def _presence_task(distinct_questions: bool):
    """A random tiny model and 28 pairs where one of two changes happened, each asked about both (rows 0-39 to
    train on, 40-55 held out): the model, the frozen fusion embedding and the state at </p> of each row, and
    whether its change happened. Without distinct questions both questions give one state, so nothing can tell
    which change was asked about."""
    torch.manual_seed(0)
    config = ReasonCDConfig.from_preset("tiny")
    model = ReasonCDForChangeDetection(config)
    rng = np.random.default_rng(1)
    pairs = [_one_change_pair(rng, i % 2) for i in range(28)]
    states = torch.randn(2, config.text_config.hidden_size)  # the states at </p> of the two questions
    if not distinct_questions:
        states = states[:1].repeat(2, 1)
    t1 = torch.stack([_sam_pixels(p[0], config) for p in pairs])
    t2 = torch.stack([_sam_pixels(p[1], config) for p in pairs])
    with torch.no_grad():
        sam = model.sam_image_encoder(torch.cat([t1, t2]))
        embeds = model.feature_fusion.eval()(sam[: len(pairs)], sam[len(pairs):], t1, t2)
    # each pair asked about both changes: present for the one that happened
    targets = torch.tensor([[float(p[2] == 0), float(p[2] == 1)] for p in pairs]).reshape(-1)
    return model, embeds.repeat_interleave(2, dim=0), states.repeat(len(pairs), 1), targets


def _presence_accuracy(distinct_questions: bool, steps: int = 100) -> float:
    """Trains the tiny preset's presence head alone (fusion features frozen) on `_presence_task`; returns its
    accuracy on the held-out pairs."""
    model, rows, questions, targets = _presence_task(distinct_questions)
    train, test = slice(0, 40), slice(40, 56)
    optimizer = torch.optim.AdamW(model.presence.parameters(), lr=3e-3)
    model.presence.train()
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model.presence(questions[train], rows[train]), targets[train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        decided = model.presence.eval()(questions[test], rows[test]) > 0
    return (decided == targets[test].bool()).float().mean().item()


@pytest.mark.timeout(300)
def test_a_short_training_of_the_presence_head_decides_per_question():
    assert _presence_accuracy(distinct_questions=True) >= 0.9
    # The same training without the question (one state for both questions) stays at chance: the head decides
    # from the question and the change together, not from "something changed".
    assert _presence_accuracy(distinct_questions=False) <= 0.5


def test_the_answer_follows_the_presence_decision_in_generation():
    from reasoncd.build import make_seg_the_only_answer

    model, processor = build_tiny(0)
    make_seg_the_only_answer(model)  # the language model alone would point at a mask every time
    model.eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    inputs = processor(images_t1=image, images_t2=image, text=["new buildings", "river"], pair_index=[0, 0])
    last = model.presence.classifier[-1]
    with torch.no_grad():
        model.question_mask.evidence_scale.zero_()  # the head alone decides
        last.weight.zero_()
        last.bias.fill_(-5.0)  # the head says "absent" for every question
        absent = model.generate(**inputs, max_new_tokens=4)
        last.bias.fill_(5.0)
        present = model.generate(**inputs, max_new_tokens=4)
    assert not absent.seg_present.any() and bool((absent.presence_probabilities < 0.5).all())
    assert present.seg_present.all() and bool((present.presence_probabilities > 0.5).all())
    assert not present.pred_masks.eq(0).all()


def test_teacher_forcing_feeds_the_references_decision_in_training_and_the_heads_in_evaluation():
    model, processor = build_tiny(0)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    kwargs = dict(images_t1=image, images_t2=image, text="new buildings", masks=[np.zeros((64, 64))])
    present = processor(**kwargs, answers="It's the new buildings [SEG].")
    absent = processor(**kwargs,
                       answers="There is no change of interest: no new buildings appear between the two images.")
    end = int((present["input_ids"][0] == model.config.p_end_token_id).nonzero().max())
    with torch.no_grad():
        model.presence.decision_embeddings.weight.normal_()
        model.train()
        out_present, out_absent = model(**present), model(**absent)
        # Up to </p> both runs see the same prompt (the decision comes after it), so the head reads the same state.
        assert torch.allclose(out_present.logits[0, : end + 1], out_absent.logits[0, : end + 1], atol=1e-5)
        assert torch.allclose(out_present.presence_logits, out_absent.presence_logits, atol=1e-5)
        assert not torch.allclose(out_present.logits[0, end + 1], out_absent.logits[0, end + 1], atol=1e-3)
        assert out_present.loss is not None and out_present.presence_logits.shape == (1,)
        # In evaluation both references get the head's own decision, as generation does.
        model.eval()
        eval_present, eval_absent = model(**present), model(**absent)
        assert torch.allclose(eval_present.logits[0, : end + 2], eval_absent.logits[0, : end + 2], atol=1e-5)
        own = out_present if bool(eval_present.presence_logits > 0) else out_absent
        assert torch.allclose(eval_present.logits[0, end + 1], own.logits[0, end + 1], atol=1e-4)


@pytest.mark.parametrize("croi_plan", [False, True])
def test_generation_and_teacher_forcing_read_the_same_seg_state_with_the_presence_head(croi_plan):
    model, processor = _plan_model() if croi_plan else build_tiny(0)  # with it, the head's units join the decision
    model.eval()
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    answers = ["It's the new buildings [SEG].", "The change map shows the new trees [SEG]."]
    questions = ["new buildings", "land covered by new trees"]
    labels = processor(images_t1=image, images_t2=image, text=questions, answers=answers)["labels"]
    rows = [row[row != -100].tolist() for row in labels]
    from transformers import LogitsProcessorList
    from helpers import ForceAnswers

    forcing = LogitsProcessorList([ForceAnswers(rows, model.config.eos_token_id)])
    with torch.no_grad():
        generated = model.generate(**processor(images_t1=image, images_t2=image, text=questions),
                                   max_new_tokens=max(map(len, rows)) + 1, logits_processor=forcing)
        forward = model(**processor(images_t1=image, images_t2=image, text=questions, answers=answers))
    torch.testing.assert_close(generated.seg_hidden_states, forward.seg_hidden_states, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(generated.presence_probabilities, forward.presence_logits.sigmoid(), rtol=1e-4,
                               atol=1e-5)
    if croi_plan:
        with torch.no_grad():
            model.croi_plan.weight.zero_()
            unplanned = model(**processor(images_t1=image, images_t2=image, text=questions, answers=answers))
        assert (forward.seg_hidden_states - unplanned.seg_hidden_states).abs().max() > 1e-2  # the units were read


def test_the_papers_preset_has_no_presence_head_and_old_configs_load_without_it():
    assert ReasonCDConfig.from_preset("reasoncd-7b").presence_head is False
    assert ReasonCDConfig.from_preset("medium").presence_head is False
    assert ReasonCDConfig.from_preset("tiny").presence_head is True
    saved = ReasonCDConfig.from_preset("tiny").to_dict()
    # a config written before the options existed
    for name in ("presence_head", "presence_loss_weight", "question_mask", "question_mask_loss_weight", "croi_units",
                 "croi_loss_weight"):
        del saved[name]
    old = ReasonCDConfig(**saved)
    assert old.presence_head is False and old.question_mask is False and old.croi_units == []
    with pytest.raises(ValueError, match="needs presence_head"):
        ReasonCDConfig.from_preset("tiny", presence_head=False)


# --- the question mask (`question_mask`): presence read off a mask learned on every question ---
def test_question_truths_are_the_union_of_targets_and_empty_when_absent():
    from modeling_reasoncd import question_truths

    masks = torch.zeros(3, 2, 4, 4)
    masks[0, 0, 0, 0] = 1.0  # two targets
    masks[0, 1, 3, 3] = 1.0
    masks[1, 0, 1, 1] = 1.0  # one target
    truths = question_truths(masks, torch.tensor([True, True, False]))  # row 2: the asked change is absent
    assert truths.shape == (3, 1, 4, 4)
    assert truths[0, 0].sum() == 2 and truths[1, 0].sum() == 1 and truths[2].sum() == 0
    assert torch.equal(question_truths(masks[:, 0], torch.ones(3, dtype=torch.bool)), masks[:, :1])
    # whatever mask comes with an answer that points at none, its question's truth is empty
    assert question_truths(masks, torch.tensor([False, True, True]))[0].sum() == 0


def test_an_absent_question_trains_its_question_mask_toward_an_empty_map(tiny):
    model, processor = tiny
    mask = np.zeros((96, 128), bool)
    mask[20:60, 30:90] = True
    inputs = _pair_inputs(processor, ["new buildings", "roads"],
                          ["It's the new buildings [SEG].", "There is no change of interest."], masks=[mask, mask])
    model.train()
    try:
        out = model(**inputs)
        # The absent question's truth is empty: pushing its mask up everywhere must raise the loss.
        with torch.no_grad():
            model.question_mask.evidence_offset.zero_()
        logits = out.question_masks
    finally:
        model.eval()
    assert logits.shape[0] == 2 and out.question_mask_loss is not None and float(out.question_mask_loss) > 0
    from modeling_reasoncd import mask_losses, question_truths

    every_row = torch.ones(2, 1, dtype=torch.bool)
    masks = inputs["masks"]
    truths = question_truths(masks, out.seg_present)
    assert truths[0].sum() > 0 and truths[1].sum() == 0  # the absent answer holds no mask
    base = mask_losses(logits.detach()[:, None], every_row, truths, inputs["reshaped_sizes"], inputs["pair_index"],
                       model.config)
    raised = logits.detach().clone()
    raised[1] += 5.0
    worse = mask_losses(raised[:, None], every_row, truths, inputs["reshaped_sizes"], inputs["pair_index"],
                        model.config)
    assert worse[0] > base[0] and worse[1] >= base[1]


def test_the_question_masks_evidence_enters_the_presence_decision(tiny):
    model, _ = tiny
    states = torch.randn(3, model.config.text_config.hidden_size)
    sam = model.config.sam_config
    change = torch.randn(3, sam.prompt_embed_dim, sam.embedding_grid, sam.embedding_grid)
    with torch.no_grad():
        head_only = model.presence(states, change)
        logits, question_masks = model.question_presence(states, change)
        strongest = question_masks.flatten(1).topk(model.question_mask.top_k, dim=1).values.mean(dim=1)
    scale, offset = model.question_mask.evidence_scale, model.question_mask.evidence_offset
    torch.testing.assert_close(logits, head_only + scale * strongest + offset)
    assert question_masks.shape == (3, sam.low_res_mask_size, sam.low_res_mask_size)


def _same_croi_different_wording(model, generator):
    """Two states at `</p>` that differ (as two wordings would) but give the CRoI head the same logits: the second
    is the first plus a vector the head's weights cannot see."""
    weight = model.croi_head.weight.detach()  # (units, hidden)
    first = torch.randn(1, weight.shape[1], generator=generator)
    other = torch.randn(1, weight.shape[1], generator=generator)
    unseen = other - (other @ torch.linalg.pinv(weight)) @ weight  # its projection onto the head's rows removed
    return torch.cat([first, first + 3.0 * unseen])


def test_a_presence_decision_that_reads_the_croi_sees_what_was_asked_not_the_wording():
    generator = torch.Generator().manual_seed(0)
    model, _ = build_tiny(0, presence_reads_croi=True)
    plain, _ = build_tiny(0)
    states = _same_croi_different_wording(model, generator)
    sam = model.config.sam_config
    change = torch.randn(1, sam.prompt_embed_dim, sam.embedding_grid, sam.embedding_grid,
                         generator=generator).expand(2, -1, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(model.croi_head(states)[0], model.croi_head(states)[1])
        logits, question_masks = model.question_presence(states, change)
        plain_logits, _ = plain.question_presence(states, change)
    torch.testing.assert_close(logits[0], logits[1])
    torch.testing.assert_close(question_masks[0], question_masks[1])
    assert abs(float(plain_logits[0] - plain_logits[1])) > 1e-3  # reading the state, the wording counts
    # The decision's loss does not reach the CRoI head: what was asked is learned from the question alone.
    logits, _ = model.question_presence(states.requires_grad_(), change)
    logits.sum().backward()
    assert model.croi_head.weight.grad is None and states.grad is None
    assert model.croi_reader.weight.grad is not None and model.croi_reader.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="presence_reads_croi=True needs presence_head=True and croi_units"):
        ReasonCDConfig.from_preset("tiny", presence_reads_croi=True)  # no croi_units given


# --- the CRoI head (`croi_units`): the state at </p> names what was asked ---
def test_the_croi_head_learns_from_known_rows_only(tiny):
    model, processor = tiny
    units = model.config.croi_units
    inputs = _pair_inputs(processor, ["new buildings", "roads"],
                          ["It's the new buildings [SEG].", "There is no change of interest."],
                          masks=[np.ones((96, 128), bool), np.zeros((96, 128), bool)])
    known = torch.zeros(2, len(units))
    known[0, units.index("building:increase")] = 1.0
    known[1] = -1.0  # unknown: no loss from this row
    model.train()
    try:
        out = model(**inputs, croi_targets=known)
        expected = F.binary_cross_entropy_with_logits(out.croi_logits[:1], known[:1])
        torch.testing.assert_close(out.croi_loss, expected)
        assert out.croi_logits.shape == (2, len(units))
        without = model(**inputs)
        torch.testing.assert_close(out.loss - without.loss, model.config.croi_loss_weight * out.croi_loss)
    finally:
        model.eval()


def test_the_papers_preset_has_no_croi_head_and_the_quickstarts_names_the_question_banks_units():
    from reasoncd.data.questions import CLASSES

    assert ReasonCDConfig.from_preset("reasoncd-7b").croi_units == []
    model, _ = build_tiny(0)
    assert model.croi_head is not None and len(model.config.croi_units) == 2 * len(CLASSES)


# --- the question's token dropout: unseen phrasings, read as words seen in other phrasings plus noise ---
def test_question_token_dropout_replaces_question_tokens_only_and_never_a_whole_question(tiny):
    from modeling_reasoncd import noised_question_tokens

    model, processor = tiny
    config = ReasonCDConfig.from_dict({**model.config.to_dict(), "question_token_dropout": 0.3})
    questions = ["new buildings near the old river bank", "trees", "changes that give more room to live"]
    input_ids = processor(images_t1=np.zeros((64, 64, 3), np.uint8), images_t2=np.zeros((64, 64, 3), np.uint8),
                          text=questions)["input_ids"].repeat(200, 1)
    columns = torch.arange(input_ids.shape[1])
    opening = (input_ids == config.p_start_token_id).int().argmax(dim=1, keepdim=True)
    closing = (input_ids == config.p_end_token_id).int().argmax(dim=1, keepdim=True)
    question = (columns > opening) & (columns < closing)
    torch.manual_seed(0)
    noised = noised_question_tokens(input_ids, config)
    replaced = noised != input_ids
    assert not replaced[~question].any()  # the prompt, the images' slots, </p> and the answer are untouched
    assert ((noised[replaced] > config.eos_token_id) & (noised[replaced] < min(config.new_token_ids))).all()
    assert (replaced.sum(dim=1) < question.sum(dim=1)).all()  # some token of every question is kept
    rate = replaced.sum() / question.sum()  # a draw equal to the token it replaces counts as kept
    assert 0.25 < float(rate) < 0.31
    with pytest.raises(ValueError, match="question_token_dropout=1.0: a probability in"):
        ReasonCDConfig.from_preset("tiny", question_token_dropout=1.0)


def _present_and_absent_questions(processor):
    return _pair_inputs(processor, ["new buildings", "new ponds and lakes"],
                        ["It's the new buildings [SEG].", "There is no change of interest."],
                        masks=[np.ones((96, 128), bool), np.zeros((96, 128), bool)])


def _read_with_dropout(model, inputs, field: str, module, read) -> tuple[list, list, list, object]:
    """What `module` is called with (`read(args, kwargs)`, every call) in an evaluation pass, in a training pass
    with the option `field` (a dropout, or `scheduled_sampling`) at 0.5 (seed 0) and in a training pass with it at
    0; and the dropped pass's output."""
    calls = {"evaluation": [], "dropped": [], "undropped": []}
    phase = ["evaluation"]
    hook = module.register_forward_pre_hook(lambda _, args, kwargs: calls[phase[0]].append(read(args, kwargs)),
                                            with_kwargs=True)
    before = getattr(model.config, field)
    setattr(model.config, field, 0.5)
    try:
        with torch.no_grad():
            model.eval()
            model(**inputs)
            phase[0] = "dropped"
            torch.manual_seed(0)
            model.train()
            out = model(**inputs)
            phase[0] = "undropped"
            setattr(model.config, field, 0.0)
            model(**inputs)
    finally:
        hook.remove()
        setattr(model.config, field, before)
        model.eval()
    return calls["evaluation"], calls["dropped"], calls["undropped"], out


def test_question_token_dropout_reaches_the_language_model_in_training_only(tiny):
    model, processor = tiny
    inputs = _present_and_absent_questions(processor)
    evaluated, dropped, _, out = _read_with_dropout(model, inputs, "question_token_dropout",
                                                    model.get_input_embeddings(), lambda args, kwargs: args[0])
    evaluated, trained = evaluated[0], dropped[0]
    assert torch.equal(evaluated, inputs["input_ids"])
    changed = (trained != inputs["input_ids"]).nonzero(as_tuple=True)[1]
    assert changed.numel() > 0
    # Only question positions changed, and the losses read the real answer: the labels are the reference's.
    closing = (inputs["input_ids"] == model.config.p_end_token_id).int().argmax(dim=1)
    assert int(changed.max()) < int(closing.max())
    assert torch.isfinite(out.loss)


# --- scheduled sampling: the [SEG] state learns from the words generation writes, not only the reference's ---
def test_scheduled_sampling_replaces_wrongly_predicted_ordinary_answer_tokens_only(tiny):
    from modeling_reasoncd import self_fed_answer_tokens

    model, processor = tiny
    config = ReasonCDConfig.from_dict({**model.config.to_dict(), "scheduled_sampling": 1.0})
    inputs = _pair_inputs(processor, ["new buildings, and explain why."] * 2,
                          ["The question is about new houses. In the later image (T2) there are buildings where the "
                           "earlier image (T1) had bare ground; the change map marks these new buildings [SEG]."] * 2,
                          masks=[np.ones((96, 128), bool)] * 2)
    input_ids, labels = inputs["input_ids"], inputs["labels"]
    vocab, seg, eos = model.config.text_config.vocab_size, config.seg_token_id, config.eos_token_id
    ordinary = min(config.new_token_ids) - 1
    # Predictions: the reference everywhere, except the highest ordinary id at every position, and [SEG] at one.
    predicted = input_ids.roll(-1, dims=1).clone()
    wrong = torch.rand(input_ids.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    answer_start = int((labels[0] != -100).nonzero()[0])
    wrong[:, answer_start - 1 : answer_start - 1 + ANSWER_DECISION_TOKENS] = True  # the opening, predicted wrongly
    predicted[wrong] = ordinary
    predicted[:, answer_start + 2] = seg
    logits = F.one_hot(predicted, vocab).float()
    fed = self_fed_answer_tokens(input_ids, input_ids, labels, logits, config)
    replaced = fed != input_ids
    expected = wrong.roll(1, dims=1) & (labels != -100) & (input_ids > eos) & (input_ids < ordinary + 1)
    expected[:, answer_start : answer_start + ANSWER_DECISION_TOKENS] = False  # the opening says the decision
    expected[:, answer_start + 3] = False  # a new token is never read in place of a word
    assert torch.equal(replaced, expected) and int(replaced.sum()) > 10
    assert (fed[replaced] == ordinary).all()
    assert torch.equal(fed == seg, input_ids == seg) and torch.equal(fed == eos, input_ids == eos)
    # Logits of the last positions only (the trainer's `answer_logits_only`) give the same answer tokens.
    kept = input_ids.shape[1] - answer_start + 1
    assert torch.equal(self_fed_answer_tokens(input_ids, input_ids, labels, logits[:, -kept:], config), fed)
    config.scheduled_sampling = 0.0
    assert torch.equal(self_fed_answer_tokens(input_ids, input_ids, labels, logits, config), input_ids)
    with pytest.raises(ValueError, match="scheduled_sampling=1.5: a probability in"):
        ReasonCDConfig.from_preset("tiny", scheduled_sampling=1.5)


def test_scheduled_sampling_runs_a_first_pass_in_training_only(tiny):
    model, processor = tiny
    inputs = _present_and_absent_questions(processor)
    evaluated, sampled, plain, out = _read_with_dropout(model, inputs, "scheduled_sampling",
                                                        model.get_input_embeddings(), lambda args, kwargs: args[0])
    assert len(evaluated) == len(plain) == 1  # without it, or outside training: one pass
    assert len(sampled) == 2  # the pass without gradients, on the reference's tokens, then the one that learns
    assert torch.equal(sampled[0][inputs["labels"] != -100], inputs["input_ids"][inputs["labels"] != -100])
    changed = sampled[1] != sampled[0]
    assert changed.any()  # an untrained model predicts most answer words wrongly
    assert (inputs["labels"][changed] != -100).all()  # only answer tokens: the losses still read the reference's
    assert torch.isfinite(out.loss)
    # The image tokens are projected once per pass, as without it: the second pass only looks up the new words.
    _, projected, unsampled, _ = _read_with_dropout(model, inputs, "scheduled_sampling", model.multi_modal_projector,
                                                    lambda args, kwargs: args[0])
    assert len(projected) == len(unsampled) == 2  # T1's and T2's


# --- fusion_film: the question conditions the fusion module's levels, before the dates are fused ---
def test_fusion_film_starts_as_the_shared_fusion_and_then_fuses_per_question(tiny):
    _, processor = tiny
    model, _ = build_tiny(0, fusion_film=True)
    model.eval()
    inputs = _pair_inputs(processor, ["new buildings", "new ponds"], ["It's the new buildings [SEG].",
                                                                      "It's the new ponds [SEG]."])
    pixels = inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"]
    features = model.encode_frozen(pixel_values_t1=inputs["pixel_values_t1"], pixel_values_t2=inputs["pixel_values_t2"],
                                   sam_pixel_values_t1=pixels[0], sam_pixel_values_t2=pixels[1])
    states = torch.randn(2, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    pairs = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        embeds, date_features = model.mask_embeddings(features, *pixels)
        assert date_features.shape[:2] == (2, 1)  # both dates of the one pair
        torch.testing.assert_close(embeds, model.feature_fusion(features.sam_features_t1, features.sam_features_t2,
                                                                *pixels))
        conditioned = model.decode_masks(embeds[pairs], states, date_features=date_features[:, pairs])
        fusion_film, model.fusion_film = model.fusion_film, None
        shared = model.decode_masks(embeds[pairs], states)
        model.fusion_film = fusion_film
    torch.testing.assert_close(conditioned, shared)  # zero-initialised: the paper's shared fusion at first
    with pytest.raises(ValueError, match="fusion_film: decode_masks needs the per-date features"):
        model.decode_masks(embeds[pairs], states)
    # What the decoder reads: one image embedding per question, the same for both until the FiLM is trained.
    read = []
    hook = model.sam_mask_decoder.transformer.register_forward_hook(lambda module, args, out: read.append(args[0]))
    with torch.no_grad():
        model.decode_masks(embeds[pairs], states, date_features=date_features[:, pairs])
        model.fusion_film.out.weight.normal_(0, 0.5)
    masks = model.decode_masks(embeds[pairs], states, date_features=date_features[:, pairs])
    hook.remove()
    untrained, trained = read
    torch.testing.assert_close(untrained[0], untrained[1])
    assert (trained[0] - trained[1]).abs().max() > 0.1 * trained.abs().max()
    masks.sum().backward()
    assert model.fusion_film.hidden.weight.grad.abs().sum() > 0
    assert model.feature_fusion.pair_attention.mlp[0].weight.grad.abs().sum() > 0  # fused per question
    with pytest.raises(ValueError, match="fusion_film=True needs use_feature_fusion=True"):
        ReasonCDConfig.from_preset("tiny", fusion_film=True, use_feature_fusion=False)


# --- croi_plan: the units the CRoI head names follow the question into the answer ---
def _plan_model():
    model, processor = build_tiny(0, croi_plan=True)
    model.config.question_token_dropout = 0.0  # two training passes must see the same question
    with torch.no_grad():
        model.croi_plan.weight.normal_(0, 1.0)  # zero-initialised: make the units matter
        model.question_mask.evidence_scale.zero_()  # the presence head says "present" to every question, so
        model.presence.classifier[-1].weight.zero_()  # only the units differ between the reference and the head
        model.presence.classifier[-1].bias.fill_(5.0)
    return model, processor


def test_croi_plan_feeds_the_references_units_in_training_and_the_heads_own_in_evaluation():
    model, processor = _plan_model()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    inputs = processor(images_t1=image, images_t2=image, text=["changes caused by drought"] * 2,
                       answers=["Drought leaves less land covered by water [SEG]."] * 2,
                       masks=[np.zeros((64, 64))] * 2)
    units = len(model.config.croi_units)
    asked = torch.zeros(2, units)
    asked[0, model.config.croi_units.index("water:decrease")] = 1
    asked[1, model.config.croi_units.index("building:decrease")] = 1
    end = int((inputs["input_ids"][0] == model.config.p_end_token_id).nonzero().max())
    with torch.no_grad():
        model.train()
        trained = model(**inputs, croi_targets=asked).logits
        # Up to </p> both rows read the same; after it, each its reference's units.
        torch.testing.assert_close(trained[0, : end + 1], trained[1, : end + 1])
        assert (trained[0, end + 1:] - trained[1, end + 1:]).abs().max() > 1e-2
        model.eval()
        evaluated = model(**inputs, croi_targets=asked)
        torch.testing.assert_close(evaluated.logits[0], evaluated.logits[1])  # the head's own units for both
        own = (evaluated.croi_logits > 0).float()
        model.train()
        as_own = model(**inputs, croi_targets=own).logits
    torch.testing.assert_close(evaluated.logits, as_own, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="croi_plan=True needs presence_head=True and croi_units"):
        ReasonCDConfig.from_preset("tiny", croi_plan=True, croi_units=())


def test_image_token_dropout_zeroes_whole_image_tokens_per_pair_in_training_only(tiny):
    model, processor = tiny
    inputs = _present_and_absent_questions(processor)
    evaluated, dropped, undropped, out = _read_with_dropout(model, inputs, "image_token_dropout", model.language_model,
                                                            lambda args, kwargs: kwargs["inputs_embeds"])
    # Evaluation runs the pair's prompt once first; training runs every row in one pass.
    evaluated, trained, undropped = evaluated[0], dropped[0], undropped[0]
    ids = inputs["input_ids"]
    images = (ids == model.config.t1_token_id) | (ids == model.config.t2_token_id)
    zeroed = trained.abs().amax(dim=-1) == 0
    assert not (evaluated.abs().amax(dim=-1) == 0).any()  # evaluation reads every image token
    text = ~images & inputs["attention_mask"].bool()  # padding reads the pad token's zero embedding
    assert bool(zeroed[images].any()) and not bool(zeroed[text].any())  # only image tokens, whole vectors
    assert 0.3 < zeroed[images].float().mean() < 0.7
    # Drawn per pair: both questions of the pair see the same tokens dropped.
    torch.testing.assert_close(zeroed[0][images[0]], zeroed[1][images[1]])
    torch.testing.assert_close(trained[~zeroed & images], undropped[~zeroed & images])  # the rest unchanged
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="image_token_dropout=1.0: a probability in"):
        ReasonCDConfig.from_preset("tiny", image_token_dropout=1.0)


# --- order_loss_weight and order_presence_loss_weight: each question also read with its pair's dates swapped ---
def _order_passes(model, processor, weight_field: str) -> dict:
    """Two questions about a pair, the first with a truth in the swapped order (known), the second without: the
    outputs without the order term ("off"), with it and the known row's swapped truth empty ("empty"), with the
    unknown row's truth changed too ("unknown row changed"), with the known row's truth full ("full"), with no row
    known ("none known"), and with twice the weight ("doubled"); in evaluation mode, where no dropout draws."""
    truth = np.zeros((96, 128), bool)
    truth[20:60, 30:90] = True
    inputs = _pair_inputs(processor, ["new buildings", "removed trees"],
                          ["It's the new buildings [SEG].", "It's the removed trees [SEG]."], masks=[truth, truth])
    known = torch.tensor([True, False])
    empty, full = torch.zeros(2, 96, 128), torch.ones(2, 96, 128)
    model.eval()
    try:
        outputs = {"off": model(**inputs, order_masks=empty, order_known=known)}
        setattr(model.config, weight_field, 1.0)
        outputs["empty"] = model(**inputs, order_masks=empty, order_known=known)
        outputs["unknown row changed"] = model(**inputs, order_masks=torch.stack([empty[0], full[1]]),
                                               order_known=known)
        outputs["full"] = model(**inputs, order_masks=full, order_known=known)
        outputs["none known"] = model(**inputs, order_masks=full, order_known=torch.tensor([False, False]))
        setattr(model.config, weight_field, 2.0)
        outputs["doubled"] = model(**inputs, order_masks=empty, order_known=known)
    finally:
        setattr(model.config, weight_field, 0.0)
    assert outputs["off"].order_loss is None and outputs["none known"].order_loss is None
    torch.testing.assert_close(outputs["empty"].loss, outputs["off"].loss + outputs["empty"].order_loss)
    torch.testing.assert_close(outputs["doubled"].order_loss, 2 * outputs["empty"].order_loss)
    # a row without a swapped truth adds no term; the known row's truth is the target
    torch.testing.assert_close(outputs["unknown row changed"].loss, outputs["empty"].loss)
    assert abs(float(outputs["full"].order_loss - outputs["empty"].order_loss)) > 1e-3
    return outputs


def _reached(model, loss, modules) -> list[bool]:
    """Whether `loss`'s gradient reaches each of `modules`."""
    model.zero_grad()
    loss.backward()
    reached = [bool(sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None) > 0)
               for module in modules]
    model.zero_grad()
    return reached


def test_the_order_loss_trains_the_swapped_pairs_mask_toward_the_swapped_truth_only_where_known(tiny):
    model, processor = tiny
    order_loss = _order_passes(model, processor, "order_loss_weight")["doubled"].order_loss
    assert _reached(model, order_loss, (model.sam_mask_decoder.output_upscaling[0],
                                        model.feature_fusion.pair_attention.mlp[0], model.presence.classifier)) == [
        True, True, False]  # the mask path and the fusion module, not the presence decision
    with pytest.raises(ValueError, match="order_loss_weight=-1.0: a weight of at least 0"):
        ReasonCDConfig.from_preset("tiny", order_loss_weight=-1.0)


def test_the_order_presence_loss_trains_the_decision_and_question_mask_on_the_swapped_pair_only_where_known(tiny):
    model, processor = tiny
    order_loss = _order_passes(model, processor, "order_presence_loss_weight")["doubled"].order_loss
    assert _reached(model, order_loss, (model.presence.classifier, model.question_mask,
                                        model.sam_mask_decoder.output_upscaling[0],
                                        model.feature_fusion.pair_attention.mlp[0])) == [True] * 4


def test_the_order_presence_loss_reads_the_swapped_pair_and_wants_absent_where_the_swapped_truth_is_empty(tiny,
                                                                                                   monkeypatch):
    model, processor = tiny
    truth = np.zeros((96, 128), bool)
    truth[20:60, 30:90] = True
    inputs = _pair_inputs(processor, ["new buildings"], ["It's the new buildings [SEG]."], masks=[truth])
    calls = []

    def sure_it_is_there(states, change_embeddings, date_features=None):  # a decision of logit 3, no question mask
        calls.append(change_embeddings.detach().clone())
        return torch.full((states.shape[0],), 3.0), None

    monkeypatch.setattr(model, "question_presence", sure_it_is_there)
    monkeypatch.setattr(model.config, "order_presence_loss_weight", 1.0)
    model.eval()
    absent = model(**inputs, order_masks=torch.zeros(1, 96, 128), order_known=torch.tensor([True])).order_loss
    present = model(**inputs, order_masks=torch.ones(1, 96, 128), order_known=torch.tensor([True])).order_loss
    expected = F.binary_cross_entropy_with_logits(torch.tensor(3.0), torch.tensor(0.0))
    torch.testing.assert_close(absent, expected)  # an empty swapped truth: the decision is trained toward absent
    torch.testing.assert_close(present, F.binary_cross_entropy_with_logits(torch.tensor(3.0), torch.tensor(1.0)))
    assert not torch.allclose(calls[0], calls[1])  # the pair's fusion with T1 first, then with T2 first


def test_the_order_presence_loss_needs_the_presence_head_and_a_weight_of_at_least_0():
    with pytest.raises(ValueError, match="order_presence_loss_weight=-0.5: a weight of at least 0"):
        ReasonCDConfig.from_preset("tiny", order_presence_loss_weight=-0.5)
    with pytest.raises(ValueError, match="order_presence_loss_weight needs presence_head=True"):
        ReasonCDConfig.from_preset("tiny", presence_head=False, question_mask=False, order_presence_loss_weight=1.0)
    assert ReasonCDConfig.from_preset("tiny", order_presence_loss_weight=1.0).learns_date_order
    assert not ReasonCDConfig.from_preset("tiny").learns_date_order


# --- order_head: a decision of its own on whether the asked change holds in the order the dates are given ---
@pytest.fixture(scope="module")
def tiny_with_order_head():
    torch.manual_seed(0)
    return build_tiny(0, order_head=True)


def _random_order_head_inputs(model, rows: int, seed: int):
    """A seeded generator, then random states at `</p>` and two random 8 x 8 embeddings (as given, swapped)."""
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(rows, model.config.text_config.hidden_size, generator=generator)
    given, swapped = (torch.randn(rows, model.config.sam_config.prompt_embed_dim, 8, 8, generator=generator)
                      for _ in range(2))
    return generator, states, given, swapped


def test_the_order_head_flips_with_the_dates_around_a_bias_read_from_the_question(tiny_with_order_head):
    model, _ = tiny_with_order_head
    head = model.order_head
    generator, states, given, swapped = _random_order_head_inputs(model, 3, 0)
    with torch.no_grad():
        head.bias.weight.normal_()
        forward, backward = head(states, given, swapped), head(states, swapped, given)
        bias = head.bias(head.norm(states)).squeeze(-1)
    torch.testing.assert_close(forward + backward, 2 * bias)
    assert (forward - backward).abs().min() > 1e-4  # the order is read, not only the question
    with torch.no_grad():
        head.bias.weight.zero_()
        head.bias.bias.zero_()


def test_the_order_head_learns_each_known_question_in_both_orders_and_a_directionless_one_as_holding_in_both(
        tiny_with_order_head):
    model, processor = tiny_with_order_head
    truth = np.zeros((96, 128), bool)
    truth[20:60, 30:90] = True
    inputs = _pair_inputs(processor, ["new buildings", "removed trees", "changed water"],
                          ["It's the new buildings [SEG].", "It's the removed trees [SEG].", "It's the water [SEG]."],
                          masks=[truth] * 3)
    known, symmetric = torch.tensor([True, False, False]), torch.tensor([False, False, True])
    calls = []
    hook = model.order_head.register_forward_hook(lambda module, args, output: calls.append((args, output)))
    model.eval()
    try:
        empty = model(**inputs, order_masks=torch.zeros(3, 96, 128), order_known=known, order_symmetric=symmetric)
        (states, given, swapped), as_given = calls[0]
        (other_states, other_given, other_swapped), as_swapped = calls[1]
        full = model(**inputs, order_masks=torch.ones(3, 96, 128), order_known=known, order_symmetric=symmetric)
        nothing = model(**inputs, order_masks=torch.ones(3, 96, 128), order_known=torch.zeros(3, dtype=torch.bool),
                        order_symmetric=torch.zeros(3, dtype=torch.bool))
        model.config.order_head_loss_weight = 2.0
        doubled = model(**inputs, order_masks=torch.zeros(3, 96, 128), order_known=known, order_symmetric=symmetric)
    finally:
        hook.remove()
        model.config.order_head_loss_weight = 1.0
    torch.testing.assert_close(empty.order_logits, as_given)
    # the second reading: the first and third rows (the second names a direction but has no swapped truth), with
    # the dates' fusions exchanged
    torch.testing.assert_close(other_states, states[[0, 2]])
    torch.testing.assert_close(other_given, swapped[[0, 2]])
    torch.testing.assert_close(other_swapped, given[[0, 2]])
    both = torch.cat([as_given[[0, 2]], as_swapped])
    # the first row holds as given, not swapped (its swapped truth is empty); the third holds in both orders
    torch.testing.assert_close(empty.order_loss, F.binary_cross_entropy_with_logits(both, torch.tensor([1., 1, 0, 1])))
    # with the first row's swapped truth not empty, it holds in both orders too
    torch.testing.assert_close(full.order_loss, F.binary_cross_entropy_with_logits(both, torch.ones(4)))
    assert nothing.order_loss is None
    torch.testing.assert_close(doubled.order_loss, 2 * empty.order_loss)
    # the head and the fusion module learn from it; the presence decision does not
    assert _reached(model, doubled.order_loss, (model.order_head, model.feature_fusion.pair_attention.mlp[0],
                                                model.presence.classifier)) == [True, True, False]


@pytest.mark.parametrize("pooling, reads", [("image", "fused"), ("question_mask", "dates"),
                                           ("question_mask", "land_cover")])
def test_a_question_is_present_in_generation_and_evaluation_only_where_the_order_head_agrees(pooling, reads):
    from reasoncd.build import make_seg_the_only_answer
    from reasoncd.data.questions import CLASSES

    land_cover = {"land_cover_classes": list(CLASSES), "land_cover_reads": "dates"} if reads == "land_cover" else {}
    model, processor = build_tiny(0, order_head=True, order_head_pooling=pooling, order_head_reads=reads,
                                  **land_cover)
    make_seg_the_only_answer(model)  # both decisions say "present" for every question
    model.eval()
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    inputs = processor(images_t1=image, images_t2=image, text=["new buildings", "river"], pair_index=[0, 0])
    reference = processor(images_t1=image, images_t2=image, text=["new buildings"],
                          answers=["It's the new buildings [SEG]."])
    with torch.no_grad():
        agreed = model.generate(**inputs, max_new_tokens=4)
        agreed_forward = model(**reference)
        model.order_head.bias.bias.fill_(-10.0)  # the order head says the asked change does not hold
        vetoed = model.generate(**inputs, max_new_tokens=4)
        vetoed_forward = model(**reference)
        model.presence.classifier[-1].bias.fill_(-10.0)  # the presence decision says "absent" too
        absent_forward = model(**reference)
    assert agreed.seg_present.all() and bool((agreed.presence_probabilities > 0.5).all())
    assert not vetoed.seg_present.any() and bool((vetoed.presence_probabilities < 0.5).all())
    assert bool((vetoed_forward.presence_logits > 0).all()) and bool((vetoed_forward.order_logits < 0).all())
    # evaluation's teacher-forced pass reads the answer after the same decision as generation: "absent"
    torch.testing.assert_close(vetoed_forward.logits, absent_forward.logits)
    assert not torch.allclose(vetoed_forward.logits, agreed_forward.logits)


def test_the_order_head_pooled_in_the_question_mask_reads_only_the_cells_the_mask_covers(tiny_with_order_head):
    model, _ = tiny_with_order_head
    head = model.order_head
    generator, states, given, swapped = _random_order_head_inputs(model, 2, 1)
    question_masks = torch.full((2, 32, 32), -40.0)
    question_masks[:, :16, :16] = 40.0  # the top-left quarter of the grid: cells [0:4, 0:4] of the 8 x 8 embedding
    # Outside the mask, each pair's values shuffled across channels and cells: each pair's statistics (which its
    # GroupNorm reads) stay, the features the whole image pools do not. Inside, values changed.
    outside, inside = given.clone(), given.clone()
    values = given[..., 4:, :].flatten(1)
    shuffled = values[:, torch.randperm(values.shape[1], generator=generator)]
    outside[..., 4:, :] = shuffled.view_as(given[..., 4:, :])
    inside[..., :4, :4] += 5 * torch.randn(2, given.shape[1], 4, 4, generator=generator)
    with torch.no_grad():
        head.bias.weight.normal_()
        reference = head(states, given, swapped, question_masks=question_masks)
        moved_outside = head(states, outside, swapped, question_masks=question_masks)
        moved_inside = head(states, inside, swapped, question_masks=question_masks)
        backward = head(states, swapped, given, question_masks=question_masks)
        whole_image, whole_image_moved = head(states, given, swapped), head(states, outside, swapped)
        bias = head.bias(head.norm(states)).squeeze(-1)
        head.bias.weight.zero_()
    torch.testing.assert_close(moved_outside, reference)
    assert (moved_inside - reference).abs().min() > 1e-3
    assert (whole_image_moved - whole_image).abs().min() > 1e-3
    torch.testing.assert_close(reference + backward, 2 * bias)  # still antisymmetric around the question's bias


def test_the_order_head_reads_both_orders_inside_the_questions_own_mask_when_asked():
    model, processor = build_tiny(0, order_head=True, order_head_pooling="question_mask")
    truth = np.zeros((96, 128), bool)
    truth[20:60, 30:90] = True
    inputs = _pair_inputs(processor, ["new buildings", "removed trees"],
                          ["It's the new buildings [SEG].", "It's the removed trees [SEG]."], masks=[truth] * 2)
    calls = []
    hook = model.order_head.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["question_masks"]), with_kwargs=True)
    model.eval()
    try:
        output = model(**inputs, order_masks=torch.zeros(2, 96, 128), order_known=torch.tensor([True, False]))
    finally:
        hook.remove()
    assert len(calls) == 2  # the given order for every row, then the known row swapped
    torch.testing.assert_close(calls[0], output.question_masks)
    torch.testing.assert_close(calls[1], output.question_masks[[0]])  # the same cells in the swapped order
    # the mask tells the head where to look; the head's loss does not teach the mask
    assert _reached(model, output.order_loss, (model.order_head, model.question_mask.prompt)) == [True, False]
    image_pooled, _ = build_tiny(0, order_head=True)
    assert image_pooled.order_head_within(output.question_masks) is None


def test_the_order_head_reading_the_dates_compares_the_later_dates_own_features_with_the_earliers():
    model, processor = build_tiny(0, order_head=True, order_head_reads="dates")
    inputs = _pair_inputs(processor, ["new buildings"], ["It's the new buildings [SEG]."],
                          masks=[np.ones((96, 128), bool)])
    calls = []
    hook = model.order_head.register_forward_hook(lambda module, args, output: calls.append(args))
    model.eval()
    try:
        output = model(**inputs, order_masks=torch.zeros(1, 96, 128), order_known=torch.tensor([True]))
    finally:
        hook.remove()
    with torch.no_grad():
        features = model.encode_frozen(inputs["pixel_values_t1"], inputs["pixel_values_t2"],
                                       inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
        earlier, later = model.feature_fusion.date_features(features.sam_features_t1, features.sam_features_t2,
                                                            inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
    (_, given, swapped), (_, other_given, other_swapped) = calls
    torch.testing.assert_close(given, later)  # as given: T2's own features against T1's
    torch.testing.assert_close(swapped, earlier)
    torch.testing.assert_close(other_given, earlier)  # the dates swapped: the two exchanged
    torch.testing.assert_close(other_swapped, later)
    assert output.order_loss is not None and model.order_head.date_projection is not None
    assert build_tiny(0, order_head=True)[0].order_head.date_projection is None


def _ground_to_building_labels() -> torch.Tensor:
    """Per-date labels of one 96 x 128 pair: a block of ground at T1 that is a building at T2, the rest unchanged."""
    from reasoncd.data.questions import CLASSES

    labels = torch.full((1, 2, 96, 128), len(CLASSES))
    labels[0, 0, 20:60, 30:90] = CLASSES.index("ground")
    labels[0, 1, 20:60, 30:90] = CLASSES.index("building")
    return labels


def _land_cover_at_label_size(logits: torch.Tensor) -> torch.Tensor:
    """One pair's land-cover logits `(2, K, h, w)` at its labels' 96 x 128: the pair fills the top 192 rows of
    SAM's 256 frame."""
    full = F.interpolate(logits.float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False)[..., :192, :]
    return F.interpolate(full, size=(96, 128), mode="bilinear", align_corners=False)


def test_the_order_head_reading_the_land_cover_compares_what_the_land_cover_head_names_at_each_date():
    from reasoncd.data.questions import CLASSES

    model, processor = build_tiny(0, order_head=True, order_head_reads="land_cover",
                                  land_cover_classes=list(CLASSES), land_cover_reads="dates")
    inputs = _pair_inputs(processor, ["new buildings"], ["It's the new buildings [SEG]."],
                          masks=[np.ones((96, 128), bool)])
    labels = _ground_to_building_labels()
    calls, named = [], []
    hooks = [model.order_head.register_forward_hook(lambda module, args, output: calls.append(args)),
             model.land_cover.register_forward_hook(lambda module, args, output: named.append(output))]
    model.eval()
    try:
        output = model(**inputs, order_masks=torch.zeros(1, 96, 128), order_known=torch.tensor([True]),
                       land_cover=labels)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(named) == 1  # the land-cover loss reads the same pass of the head
    log_probabilities = named[0].float().log_softmax(dim=2)
    (_, given, swapped), (_, other_given, other_swapped) = calls
    torch.testing.assert_close(given, log_probabilities[:, 1])  # as given: what T2 shows against T1
    torch.testing.assert_close(swapped, log_probabilities[:, 0])
    torch.testing.assert_close(other_given, log_probabilities[:, 0])
    torch.testing.assert_close(other_swapped, log_probabilities[:, 1])
    assert model.order_head.date_projection.in_channels == len(CLASSES)
    # the land-cover loss is the cross-entropy of the head's own logits, the order loss teaches the head too
    upscaled = _land_cover_at_label_size(named[0][0])
    expected = F.cross_entropy(upscaled, labels[0].masked_fill(labels[0] == len(CLASSES), -100), ignore_index=-100)
    torch.testing.assert_close(output.land_cover_loss, expected)
    assert _reached(model, output.order_loss, (model.land_cover, model.order_head)) == [True, True]
    with pytest.raises(ValueError, match="needs order_head=True and land_cover_reads='dates'"):
        ReasonCDConfig.from_preset("tiny", order_head=True, order_head_reads="land_cover",
                                   land_cover_classes=list(CLASSES))


def test_the_order_head_needs_the_presence_head_and_a_weight_of_at_least_0():
    with pytest.raises(ValueError, match="order_head=True needs presence_head=True"):
        ReasonCDConfig.from_preset("tiny", presence_head=False, question_mask=False, order_head=True)
    with pytest.raises(ValueError, match="order_head_loss_weight=-1.0: a weight of at least 0"):
        ReasonCDConfig.from_preset("tiny", order_head=True, order_head_loss_weight=-1.0)
    assert ReasonCDConfig.from_preset("tiny", order_head=True).learns_date_order
    assert ReasonCDConfig.from_preset("tiny").order_head is False
    with pytest.raises(ValueError, match="order_head_pooling='cells': choose one of"):
        ReasonCDConfig.from_preset("tiny", order_head=True, order_head_pooling="cells")
    with pytest.raises(ValueError, match="needs order_head=True and question_mask=True"):
        ReasonCDConfig.from_preset("tiny", order_head_pooling="question_mask")
    with pytest.raises(ValueError, match="needs order_head=True and question_mask=True"):
        ReasonCDConfig.from_preset("tiny", order_head=True, question_mask=False, order_head_pooling="question_mask")
    with pytest.raises(ValueError, match="order_head_reads='pixels': choose one of"):
        ReasonCDConfig.from_preset("tiny", order_head=True, order_head_reads="pixels")
    with pytest.raises(ValueError, match="needs order_head=True and use_feature_fusion=True"):
        ReasonCDConfig.from_preset("tiny", order_head=True, use_feature_fusion=False, order_head_reads="dates")


# --- the land-cover head: what each changed cell was and became ---
def test_the_land_cover_loss_reads_both_dates_labels_at_their_own_size_and_reaches_the_fusion():
    from reasoncd.data.questions import CLASSES

    model, processor = build_tiny(0, land_cover_classes=list(CLASSES))
    inputs = _pair_inputs(processor, ["new buildings"], ["It's the new buildings [SEG]."],
                          masks=[np.zeros((96, 128), bool)])
    labels = _ground_to_building_labels()
    captured = []
    handle = model.land_cover.register_forward_hook(lambda module, args, output: captured.append(output))
    model.eval()
    try:
        with torch.no_grad():
            out = model(**inputs, land_cover=labels)
            without = model(**inputs)
    finally:
        handle.remove()
    expected = F.cross_entropy(_land_cover_at_label_size(captured[0][0]), labels[0])
    torch.testing.assert_close(out.land_cover_loss, expected)
    torch.testing.assert_close(out.loss - without.loss, model.config.land_cover_loss_weight * out.land_cover_loss)
    assert without.land_cover_loss is None
    # Unknown labels teach nothing; known ones reach the fusion module every question reads.
    with torch.no_grad():
        assert float(model(**inputs, land_cover=torch.full_like(labels, -100)).land_cover_loss) == 0.0
    model.train()
    model.zero_grad()
    model(**inputs, land_cover=labels).land_cover_loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.feature_fusion.parameters())
    model.eval()


def test_the_land_cover_head_reading_the_dates_names_each_dates_changed_pixels_from_that_date_alone():
    from reasoncd.data.questions import CLASSES

    model, processor = build_tiny(0, land_cover_classes=list(CLASSES), land_cover_reads="dates")
    inputs = _pair_inputs(processor, ["new buildings"], ["It's the new buildings [SEG]."],
                          masks=[np.zeros((96, 128), bool)])
    unchanged = len(CLASSES)
    labels = _ground_to_building_labels()
    calls = []
    handle = model.land_cover.register_forward_hook(lambda module, args, output: calls.append((args, output)))
    model.eval()
    try:
        with torch.no_grad():
            out = model(**inputs, land_cover=labels)
    finally:
        handle.remove()
    with torch.no_grad():
        features = model.encode_frozen(inputs["pixel_values_t1"], inputs["pixel_values_t2"],
                                       inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
        earlier, later = model.feature_fusion.date_features(features.sam_features_t1, features.sam_features_t2,
                                                            inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
        (read_earlier, read_later), logits = calls[0]
        torch.testing.assert_close(read_earlier, earlier)
        torch.testing.assert_close(read_later, later)
        # each date's logits come from that date alone: T2's are what T2's features give read as T1's
        torch.testing.assert_close(logits[:, 1], model.land_cover(later, earlier)[:, 0])
    # only the changed pixels teach: "unchanged" is not what one date can show, nor a class the head names
    assert logits.shape[2] == len(CLASSES)
    upscaled = _land_cover_at_label_size(logits[0])
    expected = F.cross_entropy(upscaled, labels[0].masked_fill(labels[0] == unchanged, -100), ignore_index=-100)
    torch.testing.assert_close(out.land_cover_loss, expected)
    with torch.no_grad():
        assert float(model(**inputs, land_cover=torch.full_like(labels, unchanged)).land_cover_loss) == 0.0
    # it teaches the ResNet branch each date goes through, and not the attention that fuses the dates
    model.train()
    fusion = model.feature_fusion
    loss = model(**inputs, land_cover=labels).land_cover_loss
    assert _reached(model, loss, (fusion.resnet_fpn, fusion.pair_attention, fusion.image_attention, fusion.ffn)) \
        == [True, False, False, False]
    model.eval()
    assert build_tiny(0, land_cover_classes=list(CLASSES))[0].land_cover.date_projection is None
    with pytest.raises(ValueError, match="land_cover_reads='pixels': choose one of"):
        ReasonCDConfig.from_preset("tiny", land_cover_classes=list(CLASSES), land_cover_reads="pixels")
    with pytest.raises(ValueError, match="needs land_cover_classes and use_feature_fusion=True"):
        ReasonCDConfig.from_preset("tiny", land_cover_reads="dates")


def test_the_papers_preset_has_no_land_cover_head_and_the_flag_names_the_second_classes():
    import argparse

    from reasoncd.build import add_option_arguments, option_overrides
    from reasoncd.data.questions import CLASSES

    assert ReasonCDConfig.from_preset("reasoncd-7b").land_cover_classes == []
    assert build_tiny(0)[0].land_cover is None
    parser = argparse.ArgumentParser()
    add_option_arguments(parser)
    assert option_overrides(parser.parse_args(["--land_cover_head"]))["land_cover_classes"] == list(CLASSES)
    assert option_overrides(parser.parse_args(["--no-land_cover_head"]))["land_cover_classes"] == []
    assert "land_cover_classes" not in option_overrides(parser.parse_args([]))


# --- the presence decision reading the land-cover head (`presence_reads_land_cover`) ---
def _asking(model, unit: str) -> None:
    """Makes the CRoI head read `unit`, and only it, in any question."""
    with torch.no_grad():
        model.croi_head.weight.zero_()
        model.croi_head.bias.fill_(-20.0)
        model.croi_head.bias[model.config.croi_units.index(unit)] = 20.0


def _ground_became_building(grid: int, cells: int, swapped: bool = False) -> torch.Tensor:
    """Land-cover logits `(1, 2, K + 1, grid, grid)`: a block of `cells` x `cells` cells that was ground and became
    a building (the other way round with `swapped`), every other cell confidently unchanged."""
    from reasoncd.data.questions import CLASSES

    unchanged = len(CLASSES)
    logits = torch.full((1, 2, unchanged + 1, grid, grid), -10.0)
    logits[:, :, unchanged] = 10.0
    block = (slice(2, 2 + cells), slice(3, 3 + cells))
    dates = (CLASSES.index("ground"), CLASSES.index("building"))
    for date, cover in enumerate(dates[::-1] if swapped else dates):
        logits[0, date, unchanged][block] = -10.0
        logits[0, date, cover][block] = 10.0
    return logits


def test_the_presence_decision_reading_the_land_cover_sees_where_the_asked_class_appeared_or_vanished():
    from reasoncd.data.questions import CLASSES

    model, _ = build_tiny(0, land_cover_classes=list(CLASSES), presence_reads_land_cover=True)
    model.eval()
    sam = model.config.sam_config
    grid = sam.embedding_grid
    states = torch.randn(1, model.config.text_config.hidden_size)
    change = torch.randn(1, sam.prompt_embed_dim, grid, grid)
    evidence = model.land_cover_evidence
    assert evidence.evidence_scale.tolist() == [1.0] and evidence.evidence_offset.tolist() == [0.0]

    def read(unit, land_cover):
        _asking(model, unit)
        with torch.no_grad():
            return float(evidence(land_cover, torch.sigmoid(model.croi_head(states)))[0])

    appeared, vanished = _ground_became_building(grid, 2), _ground_became_building(grid, 2, swapped=True)
    assert read("building:increase", appeared) > 5.0  # four cells surely became a building: log-odds near 9
    assert read("building:decrease", appeared) < -5.0
    assert read("ground:decrease", appeared) > 5.0  # the same cells lost their ground
    assert read("water:increase", appeared) < -5.0
    # Swapping the dates turns the increase into a decrease.
    assert read("building:decrease", vanished) > 5.0 and read("building:increase", vanished) < -5.0
    # One cell of four is not an object: the strongest four cells' mean stays below even odds.
    assert read("building:increase", _ground_became_building(grid, 1)) < 0.0
    # The composed evidence enters the decision; its gradient reaches only its scale and offset, not the heads
    # whose outputs it composes (the land-cover head learns from its labels, the CRoI head from the question).
    _asking(model, "building:increase")
    handle = model.land_cover.register_forward_hook(lambda module, args, output: appeared.expand(len(args[0]), -1,
                                                                                               -1, -1, -1))
    try:
        logits, question_masks = model.question_presence(states, change)
        with torch.no_grad():
            expected = (model.presence(states, change) + model.question_mask.evidence(question_masks)
                        + read("building:increase", appeared))
        torch.testing.assert_close(logits, expected)
        model.zero_grad()
        logits.sum().backward()
    finally:
        handle.remove()
    assert model.croi_head.weight.grad is None and all(p.grad is None for p in model.land_cover.parameters())
    assert evidence.evidence_scale.grad is not None and float(evidence.evidence_scale.grad.abs()) > 0


def test_a_saved_model_that_reads_the_land_cover_composes_the_same_evidence_when_loaded(tmp_path):
    from reasoncd.data.questions import CLASSES

    model, _ = build_tiny(0, land_cover_classes=list(CLASSES), presence_reads_land_cover=True)
    model.save_pretrained(tmp_path)
    loaded = ReasonCDForChangeDetection.from_pretrained(tmp_path).eval()
    grid = model.config.sam_config.embedding_grid
    land_cover = torch.cat([_ground_became_building(grid, 2), _ground_became_building(grid, 2, swapped=True)])
    asked = torch.zeros(2, len(model.config.croi_units))
    asked[:, model.config.croi_units.index("building:increase")] = 1.0
    with torch.no_grad():
        expected = model.land_cover_evidence(land_cover, asked)
        torch.testing.assert_close(loaded.land_cover_evidence(land_cover, asked), expected)
    assert expected[0] > 5.0 > -5.0 > expected[1]


def test_the_presence_decision_reads_the_land_cover_only_with_its_heads_and_their_classes():
    from reasoncd.data.questions import CLASSES

    assert build_tiny(0)[0].land_cover_evidence is None
    assert ReasonCDConfig.from_preset("reasoncd-7b").presence_reads_land_cover is False
    with pytest.raises(ValueError, match="presence_reads_land_cover=True needs presence_head=True, croi_units and "
                                         "land_cover_classes read from the fused embedding"):
        build_tiny(0, presence_reads_land_cover=True)  # no land-cover head
    with pytest.raises(ValueError, match="read from the fused embedding"):
        build_tiny(0, land_cover_classes=list(CLASSES), land_cover_reads="dates", presence_reads_land_cover=True)
    with pytest.raises(ValueError, match=r"the CRoI units' classes \['playground'\] are not among land_cover_classes"):
        build_tiny(0, land_cover_classes=[c for c in CLASSES if c != "playground"], presence_reads_land_cover=True)
