"""reasoncd.data.samples: the sample format written and read back, from a staging folder to its final place."""
import json
from pathlib import Path

import numpy as np
import pytest

from reasoncd.data.samples import (SEG, SPLITS, PrepareError, SampleError, load_pair, load_split, read_sample,
                                  split_pairs, write_sample)
from reasoncd.io import write_png_atomic


def _pair(root):
    t1, t2, mask = root / "images" / "t1.png", root / "images" / "t2.png", root / "masks" / "m.png"
    write_png_atomic(t1, np.full((8, 10, 3), 10, np.uint8))
    write_png_atomic(t2, np.full((8, 10, 3), 200, np.uint8))
    truth = np.zeros((8, 10), bool)
    truth[2:5, 3:7] = True
    write_png_atomic(mask, truth)
    return t1, t2, mask, truth


def test_written_sample_reads_back_with_paths_relative_to_its_final_folder(tmp_path):
    data = tmp_path / "data"
    t1, t2, mask, truth = _pair(data)
    # Built in a staging folder, read where it ends up: the stored paths are relative to the final folder.
    staged = tmp_path / "staging" / "train" / "p.json"
    write_sample(staged, data / "train", img1=t1, img2=t2, mask=mask, question="new buildings",
                 answer=f"It's {SEG}.", kind="explicit", pair_id="p", heldout=False)
    record = json.loads(staged.read_text())
    assert record["img1_path"] == "../images/t1.png" and record["mask_path"] == "../masks/m.png"
    assert (record["question"], record["kind"], record["heldout"]) == ("new buildings", "explicit", False)

    (data / "train").mkdir()
    staged.rename(data / "train" / "p.json")
    sample, problems = read_sample(data / "train" / "p.json")
    assert problems == [] and sample["img1_path"] == str(t1.resolve())
    image_t1, image_t2, read_truth = load_pair(sample)
    assert image_t1.shape == (8, 10, 3) and int(image_t2[0, 0, 0]) == 200
    assert np.array_equal(read_truth, truth)
    assert [s["pair_id"] for s in load_split(data, "train")] == ["p"]


def test_an_answer_without_seg_is_absent_and_has_an_empty_mask(tmp_path):
    t1, t2, mask, _ = _pair(tmp_path)
    write_sample(tmp_path / "train" / "a.json", tmp_path / "train", img1=t1, img2=t2, mask=mask,
                 question="new roads", answer="There is no change of interest in these images.")
    sample, problems = read_sample(tmp_path / "train" / "a.json")
    assert problems == [] and sample["kind"] == "absent"
    assert not load_pair(sample)[2].any()


def test_missing_fields_are_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"img1_path": "a.png", "question": ""}))
    sample, problems = read_sample(path)
    assert sample is None
    assert any("'answer' is missing" in p for p in problems) and any("'question' must be" in p for p in problems)


def _counts(split: dict[str, str]) -> dict[str, int]:
    return {name: list(split.values()).count(name) for name in SPLITS}


def test_split_is_8_1_1_seeded_and_order_free():
    ids = [f"r{r:06d}_c{c:06d}" for r in range(59) for c in range(126)]  # BCDD's 7,434 tiles
    split = split_pairs(ids, seed=0)
    assert _counts(split) == {"train": 5948, "val": 743, "test": 743}
    assert split_pairs(reversed(ids), seed=0) == split
    assert split_pairs(ids, seed=1) != split
    # Val and test get a pair as soon as there are three; fewer go to train first.
    assert _counts(split_pairs(["a", "b", "c"], seed=0)) == {"train": 1, "val": 1, "test": 1}
    assert _counts(split_pairs(["a", "b"], seed=0)) == {"train": 2, "val": 0, "test": 0}
    assert _counts(split_pairs([str(i) for i in range(14)], seed=0)) == {"train": 12, "val": 1, "test": 1}
    assert _counts(split_pairs([str(i) for i in range(10)], seed=0, fractions=(1, 1, 0))) == \
        {"train": 5, "val": 5, "test": 0}
    with pytest.raises(PrepareError, match=r"three non-negative fractions .*\(0.8, -0.1, 0.3\)"):
        split_pairs(["a"], seed=0, fractions=(0.8, -0.1, 0.3))


def _write_sample(folder: Path, name: str, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(fields))
    return path


def test_split_validation_names_file_and_field(tmp_path):
    good_image = tmp_path / "a.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good_image)
    fields = dict(img1_path="../a.png", img2_path="../a.png", mask_path="../a.png", question="q", answer="It's [SEG].")
    _write_sample(tmp_path / "train", "ok", **fields)
    bad = _write_sample(tmp_path / "train", "no_answer", **{k: v for k, v in fields.items() if k != "answer"})
    gone = _write_sample(tmp_path / "train", "missing_file", **{**fields, "mask_path": "../nowhere.png"})
    with pytest.raises(SampleError) as error:
        load_split(tmp_path, "train")
    message = str(error.value)
    assert f"{bad}: field 'answer' is missing" in message
    assert f"{gone}: field 'mask_path' points at a missing file" in message
    (tmp_path / "val").mkdir()
    with pytest.raises(SampleError, match="empty"):
        load_split(tmp_path, "val")


def test_targets_of_a_question_about_several_changes_are_checked_and_read_per_seg(tmp_path):
    from reasoncd.data.samples import load_target_masks

    t1, t2, mask, truth = _pair(tmp_path)
    other = tmp_path / "masks" / "o.png"
    write_png_atomic(other, ~truth)
    fields = dict(img1_path="../images/t1.png", img2_path="../images/t2.png", mask_path="../masks/m.png",
                  question="new buildings and new ponds", answer=f"The new buildings {SEG} and the new ponds {SEG}.")
    targets = [{"label": "new buildings", "present": True, "mask_path": "../masks/m.png"},
               {"label": "new ponds", "present": True, "mask_path": "../masks/o.png"},
               {"label": "new playgrounds", "present": False, "mask_path": None}]
    _write_sample(tmp_path / "train", "ok", **fields, targets=targets)
    wrong_count = _write_sample(tmp_path / "train", "count", **{**fields, "answer": f"The new buildings {SEG}."},
                                targets=targets)
    no_label = _write_sample(tmp_path / "train", "label", **fields, targets=[{"present": True}] + targets[1:])
    gone = _write_sample(tmp_path / "train", "gone", **fields,
                         targets=[{**targets[0], "mask_path": "../masks/nowhere.png"}, *targets[1:]])
    with pytest.raises(SampleError) as error:
        load_split(tmp_path, "train")
    message = str(error.value)
    assert f"{wrong_count}: the answer holds 1 [SEG] but 'targets' lists 2 present" in message
    assert f"{no_label}: targets[0] must be an object with a non-empty 'label'" in message
    assert f"{gone}: targets[0]: 'mask_path' points at a missing file" in message
    for path in (wrong_count, no_label, gone):
        path.unlink()
    sample, = load_split(tmp_path, "train")
    first, second = load_target_masks(sample, truth.shape)
    assert np.array_equal(first, truth) and np.array_equal(second, ~truth)
    with pytest.raises(SampleError, match="does not match the images"):
        load_target_masks(sample, (4, 4))
