"""The processor: SAM and CLIP preprocessing against their reference pipelines, tokens and prompt, labels,
post-processing, and the handling of awkward inputs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide
from transformers import AutoProcessor, CLIPImageProcessor

from helpers import llama_like_tokenizer, random_image, tiny_checkpoint
from modeling_reasoncd import ReasonCDGenerateOutput
from processing_reasoncd import NEW_TOKENS, ReasonCDProcessor, stretch_to_uint8
from reasoncd.training.tokenizer import add_reasoncd_tokens

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SAM_MEAN = [123.675, 116.28, 103.53]
SAM_STD = [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return AutoProcessor.from_pretrained(tiny_checkpoint(tmp_path_factory), trust_remote_code=True)


def sam_reference(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """segment-anything's own path: `ResizeLongestSide.apply_image`, then `Sam.preprocess` (normalise with the
    pixel mean/std, pad bottom-right to the encoder's square input)."""
    resized = ResizeLongestSide(size).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float()
    x = (x - torch.tensor(SAM_MEAN).view(-1, 1, 1)) / torch.tensor(SAM_STD).view(-1, 1, 1)
    h, w = x.shape[-2:]
    x = F.pad(x, (0, size - w, 0, size - h))
    return x[0], resized.shape[:2]


# --- images -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sam_size", [256, 1024])
@pytest.mark.parametrize("shape", [(200, 300), (300, 200), (257, 129)])
def test_sam_preprocessing_matches_segment_anything(processor, shape, sam_size):
    image_t1 = random_image(*shape, seed=sum(shape))
    image_t2 = random_image(*shape, seed=sum(shape) + 1)
    processor.sam_image_size = sam_size
    try:
        out = processor(images_t1=image_t1, images_t2=image_t2, text="new buildings")
    finally:
        processor.sam_image_size = 256
    for key, image in (("sam_pixel_values_t1", image_t1), ("sam_pixel_values_t2", image_t2)):
        expected, resized = sam_reference(image, sam_size)
        assert out[key].shape == (1, 3, sam_size, sam_size)
        torch.testing.assert_close(out[key][0], expected, rtol=0, atol=1e-5)
    expected_size = ResizeLongestSide.get_preprocess_shape(*shape, sam_size)
    assert out["reshaped_sizes"].tolist() == [list(expected_size)]
    assert max(expected_size) == sam_size
    assert out["image_sizes"].tolist() == [list(shape)]
    # Padding is zero, bottom-right only.
    rh, rw = expected_size
    assert not out["sam_pixel_values_t1"][0, :, rh:, :].any() and not out["sam_pixel_values_t1"][0, :, :, rw:].any()


def test_clip_preprocessing_resizes_the_whole_tile_without_cropping(processor):
    size = processor.image_processor.size["height"]
    assert processor.image_processor.size == {"height": size, "width": size} and size == 112
    image = random_image(120, 360, seed=5)
    image[:, :40] = [255, 0, 0]  # a red strip at the left edge and a blue one at the right edge
    image[:, -40:] = [0, 0, 255]
    out = processor(images_t1=image, images_t2=image[::-1].copy(), text="roads")
    reference = CLIPImageProcessor(
        do_resize=True, size={"height": size, "width": size}, resample=Image.BICUBIC, do_center_crop=False,
        do_rescale=True, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    expected = reference(images=[image, image[::-1].copy()], return_tensors="pt")["pixel_values"]
    assert out["pixel_values_t1"].shape == (1, 3, size, size)
    torch.testing.assert_close(out["pixel_values_t1"][0], expected[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["pixel_values_t2"][0], expected[1], rtol=0, atol=1e-5)
    # Both edge strips survive (a centre crop of a 120x360 tile would cut them off): red at the left, blue at
    # the right, in the CLIP-normalised units.
    pixels = out["pixel_values_t1"][0] * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    left, right = pixels[:, :, :8].mean(dim=(1, 2)), pixels[:, :, -8:].mean(dim=(1, 2))
    assert left[0] > 0.95 and left[2] < 0.05
    assert right[2] > 0.95 and right[0] < 0.05


# --- tokens and prompt ------------------------------------------------------------------------------------------
def test_reasoncd_tokens_on_a_llama2_sized_tokenizer():
    tokenizer = llama_like_tokenizer(32000)
    assert tokenizer.pad_token is None
    ids = add_reasoncd_tokens(tokenizer)
    assert len(tokenizer) == 32005
    assert ids == list(range(32000, 32005))
    assert [tokenizer.convert_tokens_to_ids(t) for t in NEW_TOKENS] == ids
    for token, token_id in zip(NEW_TOKENS, ids):
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
    # Inside text, glued to words, each new token is still one id.
    encoded = tokenizer.encode("the<T1>is<p>new buildings</p>It's[SEG].", add_special_tokens=False)
    for token_id in ids:
        assert encoded.count(token_id) == (0 if token_id == ids[1] else 1)
    # Padding is LLaMA's <unk>; no pad token was added.
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == 0
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    # Applying it again changes nothing.
    assert add_reasoncd_tokens(tokenizer) == ids and len(tokenizer) == 32005


def test_processor_refuses_a_tokenizer_without_the_new_tokens(processor):
    tokenizer = llama_like_tokenizer(32000)
    with pytest.raises(ValueError, match="add_tokens"):
        ReasonCDProcessor(image_processor=processor.image_processor, tokenizer=tokenizer, image_seq_length=64)


def test_tiny_tokenizer_keeps_new_tokens_whole(processor):
    tokenizer = processor.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in NEW_TOKENS]
    assert len(set(ids)) == 5 and tokenizer.unk_token_id not in ids
    for text in ("It's[SEG].", "so it is [SEG]", "[SEG][SEG]", "<p>building</p>"):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False))
        for token in NEW_TOKENS:
            assert tokens.count(token) == text.count(token), (text, tokens)


def test_prompt_expands_placeholders_and_labels_cover_answers_only(processor):
    tokenizer = processor.tokenizer
    n = processor.image_seq_length
    t1_id, t2_id, seg_id = (tokenizer.convert_tokens_to_ids(t) for t in ("<T1>", "<T2>", "[SEG]"))
    questions = ["building", "changes that provide more living areas for people and explain why"]
    answers = ["It's [SEG].", "There is no change of interest between the two images."]
    image = random_image(64, 96, seed=2)
    out = processor(images_t1=image, images_t2=image, text=questions, answers=answers)
    input_ids, attention, labels = out["input_ids"], out["attention_mask"], out["labels"]
    assert out["pair_index"].tolist() == [0, 0]
    for row in range(2):
        assert int((input_ids[row] == t1_id).sum()) == n and int((input_ids[row] == t2_id).sum()) == n
        # The placeholders are contiguous runs, T1 before T2.
        t1_pos = (input_ids[row] == t1_id).nonzero().squeeze(1)
        t2_pos = (input_ids[row] == t2_id).nonzero().squeeze(1)
        assert (t1_pos.diff() == 1).all() and (t2_pos.diff() == 1).all() and t1_pos[-1] < t2_pos[0]
        text = tokenizer.decode(input_ids[row][attention[row] == 1], skip_special_tokens=False)
        assert "For the Change Detection task" in text
        assert f"<p>{questions[row]}</p>" in text
        assert "Please produce the changemap for me." in text
        assert text.index("<T1>") < text.index("earlier") < text.index("<T2>") < text.index("later")
        assert text.startswith(tokenizer.bos_token)

        answer_ids = tokenizer.encode(answers[row], add_special_tokens=False) + [tokenizer.eos_token_id]
        supervised = labels[row] != -100
        assert labels[row][supervised].tolist() == answer_ids
        # The supervised tokens are the last ones of the row, equal to the input there.
        assert supervised[-len(answer_ids):].all() and not supervised[: -len(answer_ids)].any()
        assert torch.equal(labels[row][supervised], input_ids[row][supervised])
        assert not supervised[(input_ids[row] == t1_id) | (input_ids[row] == t2_id) | (attention[row] == 0)].any()
    # Left padding with <unk> on the shorter row.
    pad = int((attention[0] == 0).sum())
    assert pad > 0 and (attention[1] == 1).all()
    assert (input_ids[0, :pad] == tokenizer.unk_token_id).all() and (attention[0, pad:] == 1).all()
    assert (labels[0, :pad] == -100).all()
    assert int((input_ids[0] == seg_id).sum()) == 1 and int((input_ids[1] == seg_id).sum()) == 0

    prompts = processor(images_t1=image, images_t2=image, text=questions)
    assert "labels" not in prompts
    # The prompts are the teacher-forced inputs minus the answers.
    for row in range(2):
        prompt_ids = prompts["input_ids"][row][prompts["attention_mask"][row] == 1]
        full_ids = input_ids[row][attention[row] == 1]
        assert torch.equal(full_ids[: len(prompt_ids)], prompt_ids)


# --- post-processing --------------------------------------------------------------------------------------------
def test_post_process_unpads_resizes_and_cleans_text(processor):
    tokenizer = processor.tokenizer
    frame = processor.sam_image_size
    height, width = 200, 300
    rh, rw = ResizeLongestSide.get_preprocess_shape(height, width, frame)  # (171, 256) in a 256 frame
    low = frame // 4
    # Low-res logits: positive on the left half of the image, and on the whole padding band below the image
    # (which must be cut off before resizing: if it were not, the bottom rows of the result would be all True).
    logits = torch.full((low, low), -10.0)
    logits[:, : (rw // 2) // 4] = 10.0
    logits[(rh + 8) // 4 :, :] = 10.0
    answer = "It's [SEG]."
    sequences = [
        tokenizer.encode("<p>It's [SEG].</p>", add_special_tokens=False) + [tokenizer.eos_token_id] * 2,
        tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id, tokenizer.pad_token_id],
    ]
    length = max(map(len, sequences))
    sequences = [s + [tokenizer.pad_token_id] * (length - len(s)) for s in sequences]
    outputs = ReasonCDGenerateOutput(
        sequences=torch.tensor(sequences),
        pred_masks=torch.stack([logits, logits]),
        seg_present=torch.tensor([True, False]),
        seg_hidden_states=torch.zeros(2, 8),
        reshaped_sizes=torch.tensor([[rh, rw], [rh, rw]]),
        image_sizes=torch.tensor([[height, width], [height, width]]),
    )
    results = processor.post_process_generation(outputs)
    assert [r["raw_text"] for r in results] == [answer, answer]
    assert [r["text"] for r in results] == [processor.readable_answer(answer)] * 2
    mask = results[0]["mask"]
    assert mask.shape == (height, width) and mask.dtype == bool
    assert mask[:, : width // 2 - 8].all()
    assert not mask[:, width // 2 + 8 :].any()
    # Without [SEG] the mask is empty, at the requested size.
    assert results[1]["mask"].shape == (height, width) and not results[1]["mask"].any()
    # One mask per answer: the answer's one target (named by nothing here: "It's [SEG]."); none without [SEG].
    target, = results[0]["targets"]
    assert target["label"] == "change 1" and np.array_equal(target["mask"], mask)
    assert target["seg_probability"] is None and results[1]["targets"] == []

    # Explicit target sizes: the same decision at another resolution.
    resized = processor.post_process_generation(outputs, target_sizes=[(100, 150)])
    assert resized[0]["mask"].shape == (100, 150)
    assert resized[0]["mask"][:, : 75 - 4].all() and not resized[0]["mask"][:, 75 + 4 :].any()
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_generation(outputs, target_sizes=[(1, 1), (1, 1), (1, 1)])


@pytest.mark.parametrize("answer, labels", [
    ("The new buildings [SEG] and the new water bodies [SEG]; there are no new playgrounds.",
     ["new buildings", "new water bodies"]),
    ("Sure, here are the new patches of low vegetation [SEG], the removed trees [SEG] and the changed water bodies "
     "[SEG].", ["new patches of low vegetation", "removed trees", "changed water bodies"]),
    ("It's the new buildings [SEG].", ["new buildings"]),
    ("It's [SEG].", ["change 1"]),
    ("In the later image (T2) there are trees where the earlier image (T1) had water; the change map marks these new "
     "trees [SEG].", ["new trees"]),
    ("The change map marks all trees that differ between the earlier image (T1) and the later image (T2): [SEG].",
     ["change 1"]),
    ("There is no change of interest: there are no new buildings.", []),
])
def test_target_labels_are_the_words_before_each_seg(answer, labels):
    assert ReasonCDProcessor.target_labels(answer) == labels


def test_every_answer_of_the_bank_names_its_targets_by_their_labels():
    import random

    from reasoncd.data.questions import (CLASSES, DIRECTIONS, GROUPS, group_covers, group_question, plain_answers,
                                         target_label)

    for croi in CLASSES:
        for direction in DIRECTIONS:
            for answer in plain_answers(croi, direction):
                assert ReasonCDProcessor.target_labels(answer) == [target_label(croi, direction)]
    rng = random.Random(0)
    for group in GROUPS:
        for _ in range(10):
            sample = group_question(group, rng.sample(group_covers(group), 2), rng=rng, split="train")
            present = [t["label"] for t in sample["targets"] if t["present"]]
            assert ReasonCDProcessor.target_labels(sample["answer"]) == present


# --- awkward inputs ---------------------------------------------------------------------------------------------
def test_size_mismatch_names_both_sizes(processor):
    with pytest.raises(ValueError) as error:
        processor(images_t1=random_image(200, 300, 0), images_t2=random_image(256, 256, 1), text="roads")
    assert "300x200" in str(error.value) and "256x256" in str(error.value)


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question_is_refused(processor, question):
    image = random_image(32, 32, 0)
    with pytest.raises(ValueError, match="empty"):
        processor(images_t1=image, images_t2=image, text=question)
    with pytest.raises(ValueError, match="empty"):
        processor(images_t1=image, images_t2=image, text=["roads", question])


def _variants(rgb: np.ndarray):
    gray = rgb[..., 0]
    gray16 = gray.astype(np.uint16) * 257
    stretched = np.repeat(stretch_to_uint8(gray16)[0][..., None], 3, axis=2)  # 16-bit: 2-98 percentile stretch
    return {
        "gray array": (gray, np.repeat(gray[..., None], 3, axis=2)),
        "gray HxWx1 array": (gray[..., None], np.repeat(gray[..., None], 3, axis=2)),
        "RGBA array": (np.dstack([rgb, np.full(gray.shape, 7, np.uint8)]), rgb),
        "uint16 array": (gray16, stretched),
        "PIL L": (Image.fromarray(gray, mode="L"), np.repeat(gray[..., None], 3, axis=2)),
        "PIL RGBA": (Image.fromarray(np.dstack([rgb, np.full(gray.shape, 7, np.uint8)]), mode="RGBA"), rgb),
        "PIL I;16": (Image.fromarray(gray16), stretched),
    }


@pytest.mark.parametrize("kind", ["gray array", "gray HxWx1 array", "RGBA array", "uint16 array", "PIL L",
                                  "PIL RGBA", "PIL I;16"])
def test_non_rgb_inputs_are_converted(processor, kind):
    rgb = random_image(90, 150, seed=11)
    image, expected_rgb = _variants(rgb)[kind]
    if kind == "PIL I;16":
        assert image.mode == "I;16"
    out = processor(images_t1=image, images_t2=rgb, text="water")
    reference = processor(images_t1=expected_rgb, images_t2=rgb, text="water")
    assert out["pixel_values_t1"].shape == (1, 3, 112, 112)
    assert out["sam_pixel_values_t1"].shape == (1, 3, 256, 256)
    assert out["image_sizes"].tolist() == [[90, 150]]
    for key in ("pixel_values_t1", "sam_pixel_values_t1"):
        torch.testing.assert_close(out[key], reference[key], rtol=0, atol=1e-5)


def test_long_question_is_refused_and_image_tokens_are_never_cut(processor):
    image = random_image(32, 32, 0)
    t1_id = processor.tokenizer.convert_tokens_to_ids("<T1>")
    short = processor(images_t1=image, images_t2=image, text="roads")
    limit = short["input_ids"].shape[1] + 3
    saved = processor.max_sequence_length
    processor.max_sequence_length = limit
    try:
        fits = processor(images_t1=image, images_t2=image, text="new roads")
        assert fits["input_ids"].shape[1] <= limit
        assert int((fits["input_ids"][0] == t1_id).sum()) == processor.image_seq_length
        with pytest.raises(ValueError, match="context") as error:
            processor(images_t1=image, images_t2=image, text="new roads " * 40)
        assert str(limit) in str(error.value)
        with pytest.raises(ValueError, match="context"):
            processor(images_t1=image, images_t2=image, text="roads", answers=["It's [SEG]. " * 20])
    finally:
        processor.max_sequence_length = saved
    # The saved processor knows the language model's context.
    assert saved == 512


def test_reserved_tokens_in_a_question_are_refused(processor):
    image = random_image(32, 32, seed=1)
    for token in NEW_TOKENS:
        with pytest.raises(ValueError, match="reserved token"):
            processor(images_t1=image, images_t2=image, text=f"new buildings {token}")


def test_seg_absorbs_the_space_before_it(processor):
    """The state that prompts the mask decoder must sit on the answer's last word, not on a bare space token."""
    tokenizer = processor.tokenizer
    ids = tokenizer.encode("It's the new buildings [SEG].", add_special_tokens=False)
    seg = ids.index(processor.token_ids["[SEG]"])
    assert tokenizer.convert_ids_to_tokens(ids[seg - 1]).strip("▁") != ""
    assert processor.decode_answer(ids) == "It's the new buildings [SEG]."


@pytest.mark.parametrize("raw, readable", [
    ("It's the new buildings [SEG].", "It's the new buildings."),
    ("Sure, here are the new roads [SEG].", "Sure, here are the new roads."),
    ("The change map marks all trees that differ between the earlier image (T1) and the later image (T2): [SEG].",
     "The change map marks all trees that differ between the earlier image (T1) and the later image (T2)."),
    ("It's [SEG].", "It's the area marked in the mask."),
    ("Houses replaced the fields, so the change is [SEG].",
     "Houses replaced the fields, so the change is the area marked in the mask."),
    ("[SEG] [SEG] [SEG]", "The change is marked in the mask."),
    ("There is no change of interest in these images.", "There is no change of interest in these images."),
])
def test_the_reader_sees_the_answer_not_the_seg_token(raw, readable):
    assert ReasonCDProcessor.readable_answer(raw) == readable


def test_the_pixel_limit_is_the_rule_the_scripts_apply(monkeypatch):
    """The remote code (pipeline, endpoint handler) cannot import the `reasoncd` package, so it holds the pixel
    limit's rule itself; it must be the one reasoncd/data/images.py applies to files."""
    import processing_reasoncd
    from reasoncd.data import images

    assert processing_reasoncd.DEFAULT_MAX_IMAGE_PIXELS == images.DEFAULT_MAX_IMAGE_PIXELS
    assert processing_reasoncd.MAX_IMAGE_PIXELS_VARIABLE == images.MAX_IMAGE_PIXELS_VARIABLE
    for value in ("", " 1_000_000 ", "5", "0", "lots", "-3", "2.5"):
        monkeypatch.setenv(images.MAX_IMAGE_PIXELS_VARIABLE, value)
        try:
            expected = images.max_image_pixels()
        except ValueError as error:
            with pytest.raises(ValueError, match=str(error).split(":")[0]):
                processing_reasoncd.max_image_pixels()
        else:
            assert processing_reasoncd.max_image_pixels() == expected, value
    assert processing_reasoncd.max_image_pixels(1234) == 1234  # a limit given wins over the environment
