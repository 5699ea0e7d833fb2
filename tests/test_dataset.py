"""reasoncd.training.dataset: the collator's labels cover the answer only, and the mask travels with its question."""
from pathlib import Path

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


def test_augmentation_turns_a_pairs_images_and_all_its_masks_alike(tiny, samples_dir):
    """With augmentation every pair is turned or mirrored by one transform: its two images and the masks of all its
    questions; the texts stay; validation batches are never augmented."""
    import torch

    from reasoncd.data.augment import transform_view
    from reasoncd.training.dataset import as_dataset

    _, processor = tiny
    samples = load_split(samples_dir, "train")
    rows = list(as_dataset(samples))[:2]
    plain = ReasonCDCollator(processor)(rows)
    assert len(set(plain["pair_index"].tolist())) == 2 and (plain["masks"] > 0).any()

    def matching_transforms(augmented, pair):
        """The transforms that take the plain batch's pair to the augmented one: images and every mask."""
        found = set()
        for t in range(8):
            def moved(tensor):  # (C or K, H, W) tensors: the spatial axes are the last two
                return torch.from_numpy(transform_view(tensor.permute(1, 2, 0).numpy(), t)).permute(2, 0, 1)
            same = all(torch.equal(moved(plain[name][pair]), augmented[name][pair])
                       for name in ("sam_pixel_values_t1", "sam_pixel_values_t2"))
            rows_of_pair = (plain["pair_index"] == pair).nonzero().flatten()
            same = same and all(torch.equal(moved(plain["masks"][row].float()), augmented["masks"][row].float())
                                for row in rows_of_pair)
            if same:
                found.add(t)
        return found

    collator = ReasonCDCollator(processor, augmentation="dihedral")
    drawn = set()
    for seed in range(6):
        torch.manual_seed(seed)
        augmented = collator(rows)
        for name in ("input_ids", "labels", "pair_index"):
            assert torch.equal(augmented[name], plain[name])
        for pair in range(2):
            found = matching_transforms(augmented, pair)
            assert found, f"seed {seed}, pair {pair}: images and masks were not moved by one transform"
            drawn |= found
        evaluation = collator.evaluation()(rows)
        assert all(torch.equal(evaluation[name], plain[name]) for name in plain)
    assert len(drawn) > 2  # pairs were turned and mirrored, not left alone


def test_the_collator_brings_each_questions_truth_with_the_dates_swapped(tiny, samples_dir, tmp_path):
    import shutil

    import torch
    from PIL import Image

    from reasoncd.data.augment import transform_view
    from reasoncd.data.second import holds_in_both_orders, swapped_order_truth_path
    from reasoncd.training.dataset import as_dataset

    _, processor = tiny
    samples = load_split(samples_dir, "train")
    row = next(r for r in as_dataset(samples) if any(r["order_mask_paths"]))
    questions = [s for s in samples if (s["img1_path"], s["img2_path"]) == (row["img1_path"], row["img2_path"])]
    assert "order_masks" not in ReasonCDCollator(processor)([row])  # only for a model that trains it
    batch = ReasonCDCollator(processor, order_truths=True)([row])
    assert batch["order_masks"].shape == batch["masks"].shape[:1] + batch["masks"].shape[-2:]
    known = [swapped_order_truth_path(sample) is not None for sample in questions]
    assert batch["order_known"].tolist() == known and any(known) and not all(known)
    # the questions that name no direction hold in both orders (the order head learns them so)
    assert batch["order_symmetric"].tolist() == [holds_in_both_orders(sample) for sample in questions]
    assert batch["order_symmetric"].any()
    assert not (batch["order_symmetric"] & batch["order_known"]).any()
    # No file for the opposite direction: that change did not happen, so the swapped truth is empty.
    assert not batch["order_masks"].any()
    # Where the opposite direction changed too, its mask is the truth, turned with the pair.
    asked = questions[known.index(True)]
    copied = tmp_path / Path(asked["mask_path"]).name
    shutil.copy(asked["mask_path"], copied)
    opposite = np.zeros((256, 256), np.uint8)
    opposite[10:60, 100:130] = 255
    Image.fromarray(opposite).save(swapped_order_truth_path({**asked, "mask_path": str(copied)}))
    sample = {**asked, "mask_path": str(copied)}
    collated = ReasonCDCollator(processor, order_truths=True)([sample])
    assert collated["order_known"].tolist() == [True]
    assert np.array_equal(collated["order_masks"][0].numpy() > 0, opposite > 0)
    torch.manual_seed(1)
    turned = ReasonCDCollator(processor, order_truths=True, augmentation="dihedral")([sample])
    same_turn = [t for t in range(8) if np.array_equal(transform_view(collated["masks"][0].numpy(), t),
                                                       turned["masks"][0].numpy())]
    assert any(np.array_equal(transform_view(opposite > 0, t), turned["order_masks"][0].numpy() > 0)
               for t in same_turn)


def test_the_collator_brings_each_pairs_land_cover_turned_with_the_pair(tiny, samples_dir, tmp_path):
    import shutil

    import torch

    from reasoncd.data.augment import transform_view
    from reasoncd.data.questions import CLASSES
    from reasoncd.data.second import land_cover_label_paths, read_land_cover
    from reasoncd.training.dataset import as_dataset

    _, processor = tiny
    samples = load_split(samples_dir, "train")
    rows = list(as_dataset(samples))[:2]
    assert "land_cover" not in ReasonCDCollator(processor)(rows)  # only for a model that trains it
    batch = ReasonCDCollator(processor, land_cover_classes=CLASSES)(rows)
    assert batch["land_cover"].shape == (2, 2, 256, 256) and batch["land_cover"].dtype == torch.long
    for pair, row in enumerate(rows):
        t1, t2 = land_cover_label_paths(row)
        for date, path in enumerate((t1, t2)):
            assert np.array_equal(batch["land_cover"][pair, date].numpy(), read_land_cover(path, CLASSES))
    # Changed pixels carry a class, the others "unchanged" (the last index).
    assert (batch["land_cover"] < len(CLASSES)).any() and (batch["land_cover"] == len(CLASSES)).any()
    # Turned with the pair's images.
    torch.manual_seed(0)
    turned = ReasonCDCollator(processor, land_cover_classes=CLASSES, augmentation="dihedral")(rows)
    for pair in range(2):
        moved = [t for t in range(8) if torch.equal(
            torch.from_numpy(transform_view(batch["sam_pixel_values_t1"][pair].permute(1, 2, 0).numpy(), t)),
            turned["sam_pixel_values_t1"][pair].permute(1, 2, 0))]
        assert any(np.array_equal(transform_view(batch["land_cover"][pair, 0].numpy(), t),
                                  turned["land_cover"][pair, 0].numpy()) for t in moved)
    # A pair without labels beside its images: unknown everywhere (the loss skips it).
    images = tmp_path / "A"
    images.mkdir()
    for key in ("img1_path", "img2_path"):
        shutil.copy(rows[0][key], images / f"{key}.png")
    lone = {**rows[0], "img1_path": str(images / "img1_path.png"), "img2_path": str(images / "img2_path.png")}
    assert (ReasonCDCollator(processor, land_cover_classes=CLASSES)([lone])["land_cover"] == -100).all()
