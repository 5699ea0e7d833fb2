"""reasoncd.training.dataset: the collator's labels cover the answer only, and the mask travels with its question."""
import numpy as np
import pytest

from reasoncd.build import build_tiny
from reasoncd.data.samples import SEG, load_split
from reasoncd.training.dataset import ReasonCDCollator


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


def test_collator_masks_everything_but_the_answer(tiny, samples_dir):
    model, processor = tiny
    samples = load_split(samples_dir, "train")
    with_seg = next(s for s in samples if SEG in s["answer"])
    absent = next(s for s in samples if SEG not in s["answer"])
    batch = ReasonCDCollator(processor)([with_seg, absent])
    ids, labels = batch["input_ids"], batch["labels"]
    for row, sample in enumerate([with_seg, absent]):
        answer = processor.tokenizer.encode(sample["answer"] + processor.tokenizer.eos_token, add_special_tokens=False)
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == answer  # exactly the answer tokens and </s>
        assert (ids[row][labels[row] != -100] == labels[row][labels[row] != -100]).all()
        # image placeholders, prompt and padding are never targets
        image_slots = (ids[row] == model.config.t1_token_id) | (ids[row] == model.config.t2_token_id)
        assert image_slots.sum() == 2 * model.config.image_seq_length
        assert (labels[row][image_slots] == -100).all()
        assert (labels[row][batch["attention_mask"][row] == 0] == -100).all()
    # the mask is carried for the [SEG] sample and empty for the absent one
    assert batch["masks"].shape == (2, 256, 256)
    assert batch["masks"][0].sum() > 0 and batch["masks"][1].sum() == 0


def test_a_question_about_several_changes_brings_one_mask_per_seg(tiny, samples_dir):
    from reasoncd.data.images import read_mask
    from reasoncd.training.dataset import as_dataset

    _, processor = tiny
    samples = load_split(samples_dir, "train")
    multi = next(s for s in samples if s["kind"] == "multi" and s["answer"].count(SEG) == 2)
    single = next(s for s in samples if s["kind"] == "explicit" and s["pair_id"] == multi["pair_id"])
    # As training reads them: rows of the dataset, one per pair with all its questions.
    row = next(item for item in as_dataset([single, multi]))
    batch = ReasonCDCollator(processor)([row])
    assert batch["masks"].shape == (2, 2, 256, 256)
    targets = [t for t in multi["targets"] if t["present"]]
    for k, target in enumerate(targets):
        assert np.array_equal(batch["masks"][1, k].numpy() > 0, read_mask(target["mask_path"]))
    assert np.array_equal(batch["masks"][0, 0].numpy() > 0, read_mask(single["mask_path"]))
    assert not batch["masks"][0, 1].any()  # one [SEG], one mask: the rest is padding


def test_the_collator_names_the_crois_each_question_asks_about(tiny, samples_dir):
    from reasoncd.training.dataset import as_dataset

    model, processor = tiny
    units = model.config.croi_units
    samples = load_split(samples_dir, "train")
    multi = next(s for s in samples if s["kind"] == "multi" and any(not t["present"] for t in s["targets"]))
    pair = [s for s in samples if s["pair_id"] == multi["pair_id"]]
    batch = ReasonCDCollator(processor, croi_units=units)([next(item for item in as_dataset(pair))])
    targets = batch["croi_targets"]
    assert targets.shape == (len(pair), len(units))
    for row, sample in enumerate(pair):
        # every part a question asks about, present or absent; "any" asks about both directions
        asked = sample["targets"] if sample["kind"] == "multi" else [sample]
        expected = {f"{p['croi']}:{d}" for p in asked
                    for d in (("increase", "decrease") if p["direction"] == "any" else (p["direction"],))}
        assert {units[i] for i in targets[row].nonzero().flatten().tolist()} == expected
    # a sample that says nothing about its CRoI (a converted single-class folder) is skipped by the loss: -1
    plain = {key: multi[key] for key in ("img1_path", "img2_path", "mask_path", "question", "answer")}
    assert (ReasonCDCollator(processor, croi_units=units)([plain])["croi_targets"] == -1).all()
    unknown = dict(plain, croi="glacier", direction="decrease")
    with pytest.raises(ValueError, match="glacier"):
        ReasonCDCollator(processor, croi_units=units)([unknown])
    assert "croi_targets" not in ReasonCDCollator(processor)([plain])  # a model without a CRoI head
