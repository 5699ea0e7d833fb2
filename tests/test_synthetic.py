"""Synthetic SECOND-layout data: determinism, label consistency, realistic changes and safe writing."""
import numpy as np
import pytest
from PIL import Image

from reasoncd.data.questions import CLASSES
from reasoncd.data.second import SECOND_COLOURS, UNCHANGED_COLOUR, second_class_maps
from reasoncd.data.synthetic import GENERATOR, generate_second_layout, synthesize_pair
from reasoncd.io import MARKER, read_marker

FOLDERS = ("im1", "im2", "label1", "label2")


def _read(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def five_pairs(tmp_path_factory):
    return generate_second_layout(tmp_path_factory.mktemp("synthetic") / "five", 5, seed=3, progress=False)


def test_layout_and_formats(five_pairs):
    for folder in FOLDERS:
        names = sorted(p.name for p in (five_pairs / folder).iterdir())
        assert names == [f"{i:05d}.png" for i in range(5)]
    with Image.open(five_pairs / "im1" / "00000.png") as image:
        assert image.mode == "RGB" and image.size == (256, 256)


def test_same_seed_same_bytes_regardless_of_count(five_pairs, tmp_path):
    three = generate_second_layout(tmp_path / "three", 3, seed=3, progress=False)
    other_seed = generate_second_layout(tmp_path / "other", 1, seed=4, progress=False)
    for index in range(3):
        for folder in FOLDERS:
            name = f"{index:05d}.png"
            assert (three / folder / name).read_bytes() == (five_pairs / folder / name).read_bytes()
    assert (other_seed / "im1" / "00000.png").read_bytes() != (five_pairs / "im1" / "00000.png").read_bytes()


def test_labels_use_second_colours_and_agree_on_unchanged(five_pairs):
    palette = {*SECOND_COLOURS.values(), UNCHANGED_COLOUR}
    for index in range(5):
        name = f"{index:05d}.png"
        label1, label2 = _read(five_pairs / "label1" / name), _read(five_pairs / "label2" / name)
        for label in (label1, label2):
            assert {tuple(c) for c in np.unique(label.reshape(-1, 3), axis=0)} <= palette
        classes1, classes2 = second_class_maps(label1), second_class_maps(label2)
        assert np.array_equal(classes1 < 0, classes2 < 0)
        changed = classes1 >= 0
        assert 0.005 < changed.mean() < 0.4
        # A changed pixel changes class.
        assert not (classes1[changed] == classes2[changed]).any()


def test_changes_stand_out_from_pseudo_changes():
    unchanged_diffs, changed_diffs = [], []
    for index in range(12):
        pair = synthesize_pair(index, seed=11)
        difference = np.abs(pair.image1.astype(np.int16) - pair.image2.astype(np.int16)).mean(-1)
        changed = pair.classes1 >= 0
        unchanged_diffs.append(difference[~changed].mean())
        changed_diffs.append(difference[changed].mean())
        assert changed_diffs[-1] > unchanged_diffs[-1]
    # Pseudo-changes (radiometry, shift, noise) are present but mild; real changes are much larger.
    assert 2 < np.mean(unchanged_diffs) < 20
    assert np.mean(changed_diffs) > 3 * np.mean(unchanged_diffs)


def test_images_are_textured_not_flat():
    pair = synthesize_pair(0, seed=2)
    for cls in range(len(CLASSES)):
        pixels = pair.image1[(pair.classes1 == cls)]
        if len(pixels) > 200:
            assert pixels.std(0).max() > 3, CLASSES[cls]
    assert len(np.unique(pair.image1.reshape(-1, 3), axis=0)) > 5000


def test_class_balance_and_multiple_crois():
    increases, decreases, multi = np.zeros(len(CLASSES)), np.zeros(len(CLASSES)), 0
    count = 60
    for index in range(count):
        pair = synthesize_pair(index, seed=5, size=128)
        present1 = {int(c) for c in np.unique(pair.classes1) if c >= 0}
        present2 = {int(c) for c in np.unique(pair.classes2) if c >= 0}
        decreases[list(present1)] += 1
        increases[list(present2)] += 1
        assert {CLASSES[c] for c in present1} == {source for source, _ in pair.transitions}
        multi += len(present1 | present2) >= 3
    assert increases.min() >= 5 and decreases.min() >= 5
    assert multi / count >= 0.4


def test_resume_skips_complete_pairs_and_leaves_no_temporary_files(tmp_path):
    out = generate_second_layout(tmp_path / "data", 3, seed=0, progress=False)
    reference = {(f, i): (out / f / f"{i:05d}.png").read_bytes() for f in FOLDERS for i in range(3)}
    marker = np.zeros((256, 256, 3), np.uint8)
    Image.fromarray(marker).save(out / "im1" / "00000.png")  # a complete pair is never rewritten
    (out / "label2" / "00001.png").unlink()  # an incomplete pair is regenerated identically
    generate_second_layout(out, 3, seed=0, progress=False)
    assert np.array_equal(_read(out / "im1" / "00000.png"), marker)
    for folder in FOLDERS:
        assert (out / folder / "00001.png").read_bytes() == reference[(folder, 1)]
    assert not [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".png") and p.name != MARKER]
    assert read_marker(out) == {GENERATOR: ["im1", "im2", "label1", "label2"]}  # what a clean-up may remove
    assert not [p for p in out.rglob(".*") if p.name != MARKER]  # no hidden temporary files
