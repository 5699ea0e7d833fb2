"""generation_reasoncd: the two confidences of every answer, `seg_probability` (how likely the language model found
`[SEG]`) against softmax of its teacher-forced logits, and `mask_confidence` against the decoder's probability map
computed here from the low-resolution logits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LogitsProcessorList

from generation_reasoncd import ReasonCDGenerateOutput
from helpers import ForceAnswers, answer_token_ids, make_seg_the_only_answer, random_image
from processing_reasoncd import mask_confidence
from reasoncd.build import build_tiny

HEIGHT, WIDTH = 120, 176  # not square: the mask is un-padded before it is resized
QUESTIONS = ["new buildings", "changes caused by heavy rainfall, and explain why"]
# Own loop (KV cache) and the language model's `generate` (no cache): both must report the same probabilities.
GENERATE_MODES = {"kv cache": {}, "no cache": {"use_cache": False}}


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny(0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def pair():
    t1 = random_image(HEIGHT, WIDTH, seed=3)
    t2 = t1.copy()
    t2[30:80, 40:120] = [235, 230, 220]
    return t1, t2


def _forced(model, processor, pair, answers, **options):
    """Greedy decoding forced to `answers`, and the teacher-forced pass over the same prompts and answers."""
    rows = answer_token_ids(processor, answers)
    prompts = processor(images_t1=pair[0], images_t2=pair[1], text=QUESTIONS[:len(answers)])
    with torch.no_grad():
        generated = model.generate(**prompts, max_new_tokens=max(map(len, rows)) + 1, logits_processor=
                                   LogitsProcessorList([ForceAnswers(rows, model.config.eos_token_id)]), **options)
        teacher = processor(images_t1=pair[0], images_t2=pair[1], text=QUESTIONS[:len(answers)], answers=answers)
        forward = model(**teacher)
    return generated, teacher, forward


def _seg_softmax(logits: torch.Tensor, seg_token_id: int) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=-1)[..., seg_token_id]


@pytest.mark.parametrize("mode", list(GENERATE_MODES))
def test_seg_probability_is_the_models_softmax_where_it_emitted_seg(tiny, pair, mode):
    model, processor = tiny
    answers = ["It's the new buildings [SEG].", "Rain flooded the low fields, so it is [SEG]."]
    generated, teacher, forward = _forced(model, processor, pair, answers, **GENERATE_MODES[mode])
    assert generated.seg_present.all()
    seg_id = model.config.seg_token_id
    for row in range(len(answers)):
        seg_position = int((teacher["input_ids"][row] == seg_id).nonzero()[0])
        expected = float(_seg_softmax(forward.logits[row, seg_position - 1], seg_id))
        assert float(generated.seg_probabilities[row]) == pytest.approx(expected, rel=1e-3, abs=1e-7)
    # What the random model believed, not the forcing processor's certainty.
    assert float(generated.seg_probabilities.max()) < 0.5
    results = processor.post_process_generation(generated)
    assert [r["seg_probability"] for r in results] == pytest.approx(generated.seg_probabilities.tolist())


@pytest.mark.parametrize("mode", list(GENERATE_MODES))
def test_without_seg_the_highest_probability_seg_had_is_reported(tiny, pair, mode):
    """A short absent answer beside a longer one: its steps after `</s>` (padding) do not count."""
    model, processor = tiny
    answers = ["There is no such change.", "The new houses stand where fields were, so it is [SEG] here."]
    generated, teacher, forward = _forced(model, processor, pair, answers, **GENERATE_MODES[mode])
    assert generated.seg_present.tolist() == [False, True]
    seg_id = model.config.seg_token_id
    answer_positions = (teacher["labels"][0] != -100).nonzero().squeeze(1)
    # The logits that predicted each answer token, `</s>` included.
    expected = float(_seg_softmax(forward.logits[0, answer_positions - 1], seg_id).max())
    assert float(generated.seg_probabilities[0]) == pytest.approx(expected, rel=1e-3, abs=1e-7)
    result = processor.post_process_generation(generated)[0]
    assert not result["mask"].any()
    # No mask was decoded: the map is empty by the language model's decision.
    assert result["mask_confidence"] == pytest.approx(1.0 - result["seg_probability"])


def _probability_map(low_res: torch.Tensor, reshaped, size, frame: int) -> np.ndarray:
    """SAM's frame, un-padded, at the input's size, through a sigmoid (written out here, not the library's)."""
    full = F.interpolate(low_res[None, None].double(), size=(frame, frame), mode="bilinear", align_corners=False)
    full = full[..., : int(reshaped[0]), : int(reshaped[1])]
    return torch.sigmoid(F.interpolate(full, size=size, mode="bilinear", align_corners=False))[0, 0].numpy()


def test_mask_confidence_is_the_mean_probability_inside_the_mask(pair):
    model, processor = build_tiny(0)
    make_seg_the_only_answer(model)  # every answer points at a mask
    model.eval()
    inputs = processor(images_t1=pair[0], images_t2=pair[1], text=QUESTIONS)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=1)  # "[SEG]": one target, whose mask is the answer's
    results = processor.post_process_generation(generated)
    for row, result in enumerate(results):
        probabilities = _probability_map(generated.pred_masks[row], generated.reshaped_sizes[row], (HEIGHT, WIDTH),
                                         processor.sam_image_size)
        mask = result["mask"]
        assert np.array_equal(mask, probabilities > 0.5)
        assert 0 < mask.sum() < mask.size  # both classes: the mean is over a real region
        assert result["mask_confidence"] == pytest.approx(float(probabilities[mask].mean()), abs=1e-5)
        assert 0.5 < result["mask_confidence"] <= 1.0
        assert 0.0 <= result["seg_probability"] <= 1.0 and result["seg_probability"] > 0.99  # the forced model


def test_an_empty_region_reports_how_sure_the_decoder_is_that_nothing_changed(tiny):
    _, processor = tiny
    frame, low = processor.sam_image_size, processor.sam_image_size // 4
    logits = torch.linspace(-6.0, -0.5, low * low).reshape(low, low)  # below 0 everywhere: an empty mask
    outputs = ReasonCDGenerateOutput(
        sequences=torch.tensor([[processor.tokenizer.eos_token_id]]), pred_masks=logits[None],
        seg_present=torch.tensor([True]), seg_hidden_states=torch.zeros(1, 8),
        seg_probabilities=torch.tensor([0.7]), reshaped_sizes=torch.tensor([[frame, frame]]),
        image_sizes=torch.tensor([[64, 64]]))
    result = processor.post_process_generation(outputs)[0]
    probabilities = _probability_map(logits, (frame, frame), (64, 64), frame)
    assert not result["mask"].any()
    assert result["mask_confidence"] == pytest.approx(float((1.0 - probabilities).mean()), abs=1e-5)
    assert result["seg_probability"] == pytest.approx(0.7)


def test_mask_confidence_is_a_probability_for_any_map():
    generator = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 30.0):
        probabilities = torch.sigmoid(scale * torch.randn(40, 50, generator=generator))
        for mask in (probabilities > 0.5, torch.zeros(40, 50, dtype=torch.bool)):
            assert 0.0 <= mask_confidence(probabilities, mask) <= 1.0
    certain = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert mask_confidence(certain, certain > 0.5) == 1.0
    assert mask_confidence(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool)) == 1.0


def test_steps_after_the_end_of_an_answer_do_not_count(tiny):
    """`generate` without our loop keeps computing finished rows (fed padding): those steps are not the answer's."""
    model, _ = tiny
    seg, eos, pad, word = (model.config.seg_token_id, model.config.eos_token_id, model.config.pad_token_id, 500)
    sequences = torch.tensor([[word, eos, pad, pad],      # absent: `</s>` at step 1, then padding
                              [word, seg, word, eos],     # [SEG] at step 1
                              [word, eos, seg, pad],      # a [SEG] after `</s>` is no [SEG]
                              [seg, word, seg, eos]])     # two targets: each reported, the row by the less sure
    probabilities = torch.tensor([[0.10, 0.20, 0.90, 0.95],
                                  [0.30, 0.40, 0.80, 0.10],
                                  [0.05, 0.15, 0.99, 0.70],
                                  [0.90, 0.10, 0.60, 0.20]])
    states = torch.arange(4 * 4 * 8, dtype=torch.float32).reshape(4, 4, 8)
    present, hidden, per_target, reported = model._seg_states_generated(sequences, states, probabilities)
    assert present.tolist() == [[False, False], [True, False], [False, False], [True, True]]
    assert reported.tolist() == pytest.approx([0.20, 0.40, 0.15, 0.60])
    torch.testing.assert_close(per_target, torch.tensor([[0, 0], [0.40, 0], [0, 0], [0.90, 0.60]]))
    assert torch.equal(hidden[3, 0], states[3, 0]) and torch.equal(hidden[3, 1], states[3, 2])
    assert torch.equal(hidden[1, 0], states[1, 1]) and not hidden[1, 1].any() and not hidden[2].any()
