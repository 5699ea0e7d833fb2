"""SECOND-format conversion on label maps painted here with known changes."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasoncd.data.questions import CLASSES, group_covers, target_label
from reasoncd.data.samples import load_split, load_target_masks
from reasoncd.data.second import (SECOND_COLOURS, UNCHANGED_COLOUR, PrepareError, convert_second,
                                  second_class_maps)

SIZE = 64
PAIRS = 10
# Every pair: a building at T1 replaced by water at T2. Odd pairs also: trees cut down to bare ground.
BUILDING_TO_WATER = (slice(10, 30), slice(5, 25))
TREE_TO_GROUND = (slice(40, 60), slice(30, 60))
FIELDS = ("img1_path", "img2_path", "mask_path", "question", "answer", "kind", "croi", "direction", "heldout",
          "pair_id", "other_masks")


def _rectangle(region):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[region] = True
    return mask


def _save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_second(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for index in range(PAIRS):
        name = f"pair{index:02d}.png"
        label1 = np.full((SIZE, SIZE, 3), UNCHANGED_COLOUR, np.uint8)
        label2 = label1.copy()
        label1[BUILDING_TO_WATER] = SECOND_COLOURS["building"]
        label2[BUILDING_TO_WATER] = SECOND_COLOURS["water"]
        if index % 2:
            label1[TREE_TO_GROUND] = SECOND_COLOURS["tree"]
            label2[TREE_TO_GROUND] = SECOND_COLOURS["ground"]
        _save(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), root / "im1" / name)
        _save(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), root / "im2" / name)
        _save(label1, root / "label1" / name)
        _save(label2, root / "label2" / name)
    return root


def _mask(path):
    with Image.open(path) as image:
        assert image.mode == "L"
        values = np.asarray(image)
    assert set(np.unique(values)) <= {0, 255}
    return values == 255


def _samples(output):
    return {split: [(path, json.loads(path.read_text())) for path in sorted((output / split).glob("*.json"))]
            for split in ("train", "val", "test")}


def _resolved_samples(output):
    """`_samples` with the image paths made absolute, so that two output folders compare."""
    return {split: [(path, {**record, **{key: str((path.parent / record[key]).resolve())
                                         for key in ("img1_path", "img2_path")}})
                    for path, record in records]
            for split, records in _samples(output).items()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("second")
    root = _make_second(base / "SECOND")
    summary = convert_second(root, base / "json", seed=0, progress=False)
    return root, base / "json", summary


def test_summary_and_split_by_pair(converted):
    _, output, summary = converted
    assert summary["pairs"] == {"train": 8, "val": 1, "test": 1}
    samples = _samples(output)
    assert sum(summary["samples"].values()) == sum(len(v) for v in samples.values())
    split_of = {}
    for split, records in samples.items():
        for _, record in records:
            assert split_of.setdefault(record["pair_id"], split) == split, "a pair is in two splits"
    assert len(split_of) == PAIRS
    assert summary["change_fraction"] == pytest.approx((PAIRS * 20 * 20 + 5 * 20 * 30) / (PAIRS * SIZE * SIZE))


def _changed_classes(pair_id):
    return {"building", "water"} | ({"tree", "ground"} if int(pair_id[-2:]) % 2 else set())


def test_fields_paths_and_masks(converted):
    root, output, _ = converted
    building, trees = _rectangle(BUILDING_TO_WATER), _rectangle(TREE_TO_GROUND)
    expected = {"building": building, "water": building, "tree": trees, "ground": trees}
    seen_crois = set()
    for split, records in _samples(output).items():
        for path, record in records:
            assert set(FIELDS) <= set(record)
            folder = path.parent
            for relative in (record["img1_path"], record["img2_path"], record["mask_path"],
                             *record["other_masks"].values()):
                assert not Path(relative).is_absolute() and (folder / relative).is_file(), (path.name, relative)
            assert (folder / record["img1_path"]).resolve() == (root / "im1" / f"{record['pair_id']}.png").resolve()
            assert record["heldout"] is False or split != "train"
            mask = _mask(folder / record["mask_path"])
            if record["kind"] == "multi":  # test_questions_about_several_changes
                continue
            if record["kind"] == "absent":
                assert not mask.any() and "[SEG]" not in record["answer"]
                assert record["croi"] not in _changed_classes(record["pair_id"])
                continue
            assert record["answer"].count("[SEG]") == 1
            seen_crois.add(record["croi"])
            assert np.array_equal(mask, expected[record["croi"]]), (path.name, record["direction"])
            # Other masks: the other classes that changed on the pair, never this sample's class.
            assert {key.split("/")[0] for key in record["other_masks"]} == (
                _changed_classes(record["pair_id"]) - {record["croi"]})
            if record["croi"] == "building":
                assert np.array_equal(_mask(folder / record["other_masks"]["water/increase"]), building)
    assert seen_crois == {"building", "water", "tree", "ground"}


def _truth(pair_id, croi, direction):
    """What changed on a pair painted by _make_second, per class and direction."""
    building, trees = _rectangle(BUILDING_TO_WATER), _rectangle(TREE_TO_GROUND)
    odd = int(pair_id[-2:]) % 2
    decrease = {"building": building, "tree": trees if odd else ~building & False}
    increase = {"water": building, "ground": trees if odd else ~building & False}
    empty = np.zeros((SIZE, SIZE), bool)
    lost, gained = decrease.get(croi, empty), increase.get(croi, empty)
    return {"decrease": lost, "increase": gained, "any": lost | gained}[direction]


def test_questions_about_several_changes(converted):
    _, output, summary = converted
    multi = [(path, record) for records in _samples(output).values() for path, record in records
             if record["kind"] == "multi"]
    # One per pair: every pair changed two classes or more.
    assert summary["kinds"]["multi"] == PAIRS == len(multi) == len({r["pair_id"] for _, r in multi})
    styles = set()
    for path, record in multi:
        folder, pair_id = path.parent, record["pair_id"]
        targets = record["targets"]
        present = [t for t in targets if t["present"]]
        assert record["answer"].count("[SEG]") == len(present) >= 1
        union = np.zeros((SIZE, SIZE), bool)
        for target in targets:
            truth = _truth(pair_id, target["croi"], target["direction"])
            assert target["label"] == target_label(target["croi"], target["direction"])
            if target["present"]:  # its own mask, the one the converter wrote for that class and direction
                assert np.array_equal(_mask(folder / target["mask_path"]), truth) and truth.any()
                union |= truth
            else:  # an absent part left no pixel at all, and is said in words
                assert target["mask_path"] is None and not truth.any()
                assert f"no {target['label']}" in record["answer"]
        assert np.array_equal(_mask(folder / record["mask_path"]), union)
        assert [t["label"] for t in present] == [
            piece.rsplit(" the ", 1)[-1].removeprefix("The ") for piece in record["answer"].split(" [SEG]")[:-1]]
        styles.add(record["style"])
        if record["style"] == "group":  # the group's rule decides what is asked, the pair what is present
            covers = group_covers(record["group"])
            assert [(t["croi"], t["direction"]) for t in targets] == \
                [p for p in covers if _truth(pair_id, *p).any()] + [p for p in covers if not _truth(pair_id, *p).any()]
    assert styles == {"group", "combination"}

    # The converted samples read back, with one mask per [SEG].
    for split in ("train", "val", "test"):
        for sample in load_split(output, split):
            masks = load_target_masks(sample, (SIZE, SIZE))
            assert len(masks) == sample["answer"].count("[SEG]")


def test_questions_about_one_change_are_unchanged_by_the_others(converted, tmp_path):
    root, output, _ = converted
    convert_second(root, tmp_path / "single", seed=0, progress=False, multi_per_pair=0)
    def content(record):  # the image paths are relative to each output folder
        return {**{k: v for k, v in record.items() if k not in ("img1_path", "img2_path")},
                "mask_path": Path(record["mask_path"]).name,
                "other_masks": {k: Path(v).name for k, v in record["other_masks"].items()}}

    single = {path.name: content(record) for records in _samples(tmp_path / "single").values()
              for path, record in records}
    both = {path.name: content(record) for records in _samples(output).values() for path, record in records
            if record["kind"] != "multi"}
    assert single == both


def test_direction_masks_are_written_per_class(converted):
    _, output, _ = converted
    building = _rectangle(BUILDING_TO_WATER)
    assert np.array_equal(_mask(output / "masks" / "pair03__building__decrease.png"), building)
    assert np.array_equal(_mask(output / "masks" / "pair03__water__increase.png"), building)
    assert np.array_equal(_mask(output / "masks" / "pair03__ground__increase.png"), _rectangle(TREE_TO_GROUND))
    assert not (output / "masks" / "pair03__building__increase.png").exists()
    assert not (output / "masks" / "pair02__tree__decrease.png").exists()
    assert len(list((output / "masks").glob("empty_*.png"))) == 1


def test_second_call_is_cached(converted):
    root, output, summary = converted
    before = (output / "manifest.json").stat().st_mtime_ns
    assert convert_second(root, output, seed=0, progress=False) == summary
    assert (output / "manifest.json").stat().st_mtime_ns == before


def test_new_settings_replace_the_output(converted, tmp_path):
    root, _, _ = converted
    output = tmp_path / "json"
    convert_second(root, output, seed=0, negatives_per_pair=0, progress=False)
    assert not [r for rs in _samples(output).values() for _, r in rs if r["kind"] == "absent"]
    summary = convert_second(root, output, seed=0, negatives_per_pair=2, explanations=False, progress=False)
    kinds = {r["kind"] for rs in _samples(output).values() for _, r in rs}
    assert kinds == {"explicit", "implicit", "absent", "multi"} and summary["kinds"].get("explanation", 0) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["json"]


def test_opposite_direction_negatives_only_in_training_pairs(converted, tmp_path):
    """A changed class is also asked about the direction it did not change in (building lost: "new buildings" is
    absent), on training pairs only; every other question stays what it was."""
    root, plain, _ = converted
    changes = {"building": "decrease", "water": "increase", "tree": "decrease", "ground": "increase"}
    opposite = {"increase": "decrease", "decrease": "increase"}
    for per_pair in (1, 2):
        output = tmp_path / f"opposite{per_pair}"
        summary = convert_second(root, output, seed=0, opposite_negatives_per_pair=per_pair, progress=False)
        before, after = _resolved_samples(plain), _resolved_samples(output)
        for split in ("val", "test"):
            assert [(p.name, r) for p, r in after[split]] == [(p.name, r) for p, r in before[split]]
        old = {p.name: r for p, r in before["train"]}
        added = {}
        for path, record in after["train"]:
            if path.name in old:
                assert record == old[path.name], path.name
            else:
                added.setdefault(record["pair_id"], []).append(record)
        assert set(old) <= {p.name for p, _ in after["train"]}
        assert summary["samples"]["train"] == len(old) + sum(map(len, added.values()))
        for pair_id, records in added.items():
            one_way = 4 if int(pair_id[-2:]) % 2 else 2  # odd pairs: trees cut to bare ground as well
            assert len(records) == min(per_pair, one_way), pair_id
            for record in records:
                assert record["kind"] == "absent" and "[SEG]" not in record["answer"]
                assert record["direction"] == opposite[changes[record["croi"]]]
                assert not _mask(output / "train" / record["mask_path"]).any()
        assert len(added) == summary["pairs"]["train"]
    with pytest.raises(PrepareError, match="opposite_negatives_per_pair must be >= 0, got -1"):
        convert_second(root, tmp_path / "bad", seed=0, opposite_negatives_per_pair=-1, progress=False)
    assert not (tmp_path / "bad").exists()


def test_swapped_training_pairs_are_their_pairs_seen_backwards(converted, tmp_path):
    """Each training pair is written again with T1 and T2 swapped, as a pair of its own: what was built is now
    demolished (building -> water becomes water -> building), its questions' masks follow the swapped labels, and
    validation, test and the original training samples stay exactly what they were."""
    root, plain, plain_summary = converted
    output = tmp_path / "swapped"
    summary = convert_second(root, output, seed=0, swapped_training_pairs=True, progress=False)
    before, after = _resolved_samples(plain), _resolved_samples(output)
    for split in ("val", "test"):
        assert [(p.name, r) for p, r in after[split]] == [(p.name, r) for p, r in before[split]]
    old = {p.name: r for p, r in before["train"]}
    assert [r for p, r in after["train"] if p.name in old] == [old[p.name] for p, _ in before["train"]]
    swapped = [(p, r) for p, r in after["train"] if p.name not in old]
    originals = {r["pair_id"] for r in old.values()}
    assert {r["pair_id"] for _, r in swapped} == {f"swapped-{pair}" for pair in originals}
    assert summary["pairs"] == {**plain_summary["pairs"], "train": 2 * plain_summary["pairs"]["train"]}
    assert summary["samples"]["train"] == len(old) + len(swapped)
    # Sorted by file name, the originals come first (train.py's training sample takes a split's first pairs).
    assert [p.name for p, _ in after["train"]][:len(old)] == sorted(old)
    # Seen backwards: water appeared where the building stood, and the lost class is the one that was built.
    backwards = {"water": "decrease", "building": "increase", "ground": "decrease", "tree": "increase"}
    regions = {"building": BUILDING_TO_WATER, "water": BUILDING_TO_WATER, "tree": TREE_TO_GROUND,
               "ground": TREE_TO_GROUND}
    for path, record in swapped:
        source = record["pair_id"].removeprefix("swapped-")
        assert record["img1_path"] == str((root / "im2" / f"{source}.png").resolve())
        assert record["img2_path"] == str((root / "im1" / f"{source}.png").resolve())
        if record["kind"] in ("explicit", "implicit", "explanation"):
            assert record["direction"] in (backwards[record["croi"]], "any"), path.name
            assert (_mask(output / "train" / record["mask_path"]) == _rectangle(regions[record["croi"]])).all()
        elif record["kind"] == "absent":
            assert record["croi"] not in _changed_classes(source)
    # A pair already named like a swapped copy would be overwritten by one: refused before anything is written.
    clash = tmp_path / "clash"
    for folder in ("im1", "im2", "label1", "label2"):
        (clash / folder).mkdir(parents=True)
        for name in ("pair00.png", "swapped-pair00.png"):
            (clash / folder / name).write_bytes((root / folder / "pair00.png").read_bytes())
    with pytest.raises(PrepareError, match="'swapped-pair00' already starts with 'swapped-'"):
        convert_second(clash, tmp_path / "clash-out", seed=0, swapped_training_pairs=True, progress=False)
    assert not (tmp_path / "clash-out").exists()


def test_second_class_maps():
    label = np.array([[UNCHANGED_COLOUR, *SECOND_COLOURS.values()]], np.uint8)
    assert second_class_maps(label).tolist() == [[-1, *range(len(CLASSES))]]
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        second_class_maps(np.array([[[1, 2, 3]]], np.uint8))


def _break_unmatched(root):
    (root / "label2" / "pair03.png").unlink()
    return "pair03.png"


def _break_size(root):
    Image.new("RGB", (32, 32)).save(root / "im2" / "pair02.png")
    return "im2/pair02.png"


def _break_colour(root):
    label = np.asarray(Image.open(root / "label1" / "pair04.png")).copy()
    label[0, 0] = (1, 2, 3)
    Image.fromarray(label).save(root / "label1" / "pair04.png")
    return "pair04.png"


def _break_folder(root):
    for path in (root / "label2").iterdir():
        path.unlink()
    (root / "label2").rmdir()
    return "label2"


@pytest.mark.parametrize("damage", [_break_unmatched, _break_size, _break_colour, _break_folder])
def test_bad_inputs_raise_and_write_nothing(tmp_path, damage):
    root = _make_second(tmp_path / "SECOND")
    culprit = damage(root)
    with pytest.raises(ValueError, match=culprit):
        convert_second(root, tmp_path / "json", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SECOND"]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    root = _make_second(tmp_path / "SECOND")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds files that prepare_data.py second did not write: notes.txt"):
        convert_second(root, tmp_path / "json", progress=False)
    assert sorted(p.name for p in (tmp_path / "json").iterdir()) == ["notes.txt"]
    # --overwrite writes the samples beside the user's file, which stays as it was.
    convert_second(root, tmp_path / "json", progress=False, overwrite=True)
    assert (tmp_path / "json" / "notes.txt").read_text() == "mine"
    assert {"train", "val", "test", "masks", "manifest.json"} <= {p.name for p in (tmp_path / "json").iterdir()}


def test_refuses_an_output_folder_that_holds_the_input(tmp_path):
    root = _make_second(tmp_path / "SECOND")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(ValueError, match=f"holds this command's input {root}"):
        convert_second(root, tmp_path, progress=False)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_a_negative_count_of_questions_about_several_changes_is_refused(tmp_path):
    from reasoncd.data.samples import PrepareError

    root = _make_second(tmp_path / "SECOND")
    with pytest.raises(PrepareError, match="multi_per_pair must be >= 0, got -1"):
        convert_second(root, tmp_path / "out", multi_per_pair=-1, progress=False)
    assert not (tmp_path / "out").exists()


def test_land_cover_labels_are_read_in_the_models_class_order_with_unchanged_last(tmp_path):
    from reasoncd.data.second import land_cover_label_paths, read_land_cover

    label = np.full((4, 6, 3), UNCHANGED_COLOUR, np.uint8)
    label[0, :2] = SECOND_COLOURS["building"]
    label[3, 5] = SECOND_COLOURS["water"]
    _save(label, tmp_path / "raw" / "label1" / "a.png")
    _save(label, tmp_path / "raw" / "label2" / "a.png")
    classes = ("building", "water")  # not CLASSES' order: indices follow the model's list
    read = read_land_cover(tmp_path / "raw" / "label1" / "a.png", classes)
    expected = np.full((4, 6), 2)
    expected[0, :2], expected[3, 5] = 0, 1
    assert read.dtype == np.int64 and np.array_equal(read, expected)
    with pytest.raises(PrepareError, match=r"a\.png: class 'water' is not one of"):
        read_land_cover(tmp_path / "raw" / "label1" / "a.png", ("building",))
    # Found beside a SECOND layout's images only, and only where both dates' labels exist.
    sample = {"img1_path": str(tmp_path / "raw" / "im1" / "a.png"), "img2_path": str(tmp_path / "raw" / "im2" / "a.png")}
    assert land_cover_label_paths(sample) == (tmp_path / "raw" / "label1" / "a.png",
                                              tmp_path / "raw" / "label2" / "a.png")
    assert land_cover_label_paths({**sample, "img2_path": str(tmp_path / "raw" / "im2" / "b.png")}) is None
    assert land_cover_label_paths({**sample, "img1_path": str(tmp_path / "raw" / "A" / "a.png")}) is None
