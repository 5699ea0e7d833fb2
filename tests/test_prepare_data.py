"""prepare_data.py: BCDD tiling (content, split, flat memory), folder layouts on real samples, and input errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.transform import Affine

import prepare_data
from reasoncd.data import folders
from reasoncd.data.images import read_mask, read_rgb

SCRIPT = Path(prepare_data.__file__)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def load_samples(output_dir: Path) -> dict[str, dict]:
    """pair_id -> sample, with the split and every path resolved from the JSON file's folder."""
    samples = {}
    for split in folders.SPLITS:
        for path in sorted((output_dir / split).glob("*.json")):
            sample = json.loads(path.read_text())
            for key in ("img1_path", "img2_path", "mask_path"):
                sample[key] = (path.parent / sample[key]).resolve()
            samples[sample["pair_id"]] = dict(sample, split=split)
    return samples


def assert_nothing_written(output_dir: Path):
    assert not output_dir.exists()
    assert not [p for p in output_dir.parent.iterdir() if p.name.startswith(f".{output_dir.name}.")]


def test_help_lists_the_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("bcdd", "folder", "second", "synthetic"))
    assert "--tile" in run_cli("bcdd", "--help").stdout


# ----------------------------------------------------------------------------------------------------------- bcdd


def make_mosaics(folder: Path, height: int, width: int, seed: int = 0):
    """T1 as an uncompressed TIFF, T2 as PNG, the label as a deflate-tiled 0/1 TIFF: each reader path once."""
    rng = np.random.default_rng(seed)
    t1 = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    t2 = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = (rng.random((height, width)) < 0.2).astype(np.uint8)
    tifffile.imwrite(folder / "t1.tif", t1, photometric="rgb")
    Image.fromarray(t2).save(folder / "t2.png")
    tifffile.imwrite(folder / "label.tif", label, tile=(64, 64), compression="zlib")
    return t1, t2, label


def bcdd_args(folder: Path, output_dir: Path, *extra) -> list[str]:
    return [
        "bcdd", "--t1", str(folder / "t1.tif"), "--t2", str(folder / "t2.png"), "--label", str(folder / "label.tif"),
        "--output_dir", str(output_dir), *map(str, extra),
    ]


def test_bcdd_tiles_equal_the_mosaic_windows(tmp_path, capsys):
    t1, t2, label = make_mosaics(tmp_path, 1000, 700)
    output_dir = tmp_path / "bcdd"
    assert prepare_data.main(bcdd_args(tmp_path, output_dir)) == 0

    samples = load_samples(output_dir)
    offsets = [(top, left) for top in (0, 256, 512) for left in (0, 256)]  # 3 rows x 2 columns, edges dropped
    assert sorted(samples) == [f"r{top:06d}_c{left:06d}" for top, left in offsets]
    for top, left in offsets:
        sample = samples[f"r{top:06d}_c{left:06d}"]
        window = (slice(top, top + 256), slice(left, left + 256))
        assert sample["img1_path"] == output_dir / "images" / "t1" / f"r{top:06d}_c{left:06d}.png"
        assert np.array_equal(read_rgb(sample["img1_path"])[0], t1[window])
        assert np.array_equal(read_rgb(sample["img2_path"])[0], t2[window])
        assert np.array_equal(np.asarray(Image.open(sample["mask_path"])), label[window] * 255)
        assert {k: sample[k] for k in ("question", "answer", "kind", "croi", "direction", "heldout")} == {
            "question": "Building", "answer": "It's [SEG].", "kind": "explicit", "croi": "building",
            "direction": "increase", "heldout": False,
        }
    assert [s["split"] for s in samples.values()].count("train") == 4

    printed = capsys.readouterr().out
    assert f"wrote {output_dir}\n  pairs: 6 (train 4, val 1, test 1)\n" in printed
    assert f"change pixels: {label[:768, :512].mean():.2%}" in printed
    assert "dropped: 188 px at the right, 232 px at the bottom" in printed
    assert f"decoded whole: {tmp_path / 't2.png'}\n" in printed  # PNG cannot be read in windows


def test_bcdd_split_counts_on_disk(tmp_path):
    make_mosaics(tmp_path, 80, 100)
    output_dir = tmp_path / "bcdd"
    assert prepare_data.main(bcdd_args(tmp_path, output_dir, "--tile", 8, "--seed", 3)) == 0
    counts = {split: len(list((output_dir / split).glob("*.json"))) for split in folders.SPLITS}
    assert counts == {"train": 96, "val": 12, "test": 12}  # 10 x 12 tiles
    assert len(list((output_dir / "images" / "label").glob("*.png"))) == 120


def test_bcdd_input_errors_write_nothing(tmp_path):
    make_mosaics(tmp_path, 300, 260)
    output_dir = tmp_path / "out"

    Image.fromarray(np.zeros((300, 250, 3), np.uint8)).save(tmp_path / "t2.png")
    result = run_cli(*bcdd_args(tmp_path, output_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for line in ("sizes differ", "t2.png: 300 x 250", "t1.tif: 300 x 260"):
        assert line in result.stderr
    assert_nothing_written(output_dir)

    # A class label: found only in the second row of tiles, after the first row was already tiled.
    Image.fromarray(np.zeros((300, 260, 3), np.uint8)).save(tmp_path / "t2.png")
    label = np.zeros((300, 260), np.uint8)
    label[200, :3] = (1, 2, 3)
    tifffile.imwrite(tmp_path / "label.tif", label)
    assert prepare_data.main(bcdd_args(tmp_path, output_dir, "--tile", 128)) == 2
    assert_nothing_written(output_dir)
    result = run_cli(*bcdd_args(tmp_path, output_dir, "--tile", 128))
    assert "label.tif (rows 128-255): label is not binary, values {0, 1, 2, 3}" in result.stderr
    assert prepare_data.main(bcdd_args(tmp_path, output_dir, "--tile", 128, "--threshold", 1)) == 0
    assert sum(np.asarray(Image.open(p)).any() for p in (output_dir / "images" / "label").glob("*.png")) == 1

    tifffile.imwrite(tmp_path / "t1.tif", np.zeros((300, 260, 3), np.uint16), photometric="rgb")
    result = run_cli(*bcdd_args(tmp_path, tmp_path / "out16"))
    assert result.returncode == 2 and "t1.tif: uint16 pixels; bcdd needs 8-bit mosaics" in result.stderr
    assert_nothing_written(tmp_path / "out16")



def test_bcdd_tiles_georeferenced_geotiffs_whose_blocks_straddle_the_tiles(tmp_path):
    """Tiled, deflated GeoTIFFs as GIS tools write them (T1 RGBA, the label one 0/255 band), cut into 24-pixel
    tiles across their 32-pixel blocks: every tile equals the window of the source."""
    rng = np.random.default_rng(1)
    t1 = rng.integers(0, 256, (4, 100, 90), dtype=np.uint8)
    t2 = rng.integers(0, 256, (3, 100, 90), dtype=np.uint8)
    label = (rng.random((1, 100, 90)) < 0.3).astype(np.uint8) * 255
    for name, bands in (("t1.tif", t1), ("t2.tif", t2), ("label.tif", label)):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", count=len(bands), height=100, width=90,
                           dtype="uint8", crs="EPSG:32650", transform=Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000),
                           tiled=True, blockxsize=32, blockysize=32, compress="deflate",
                           **({"photometric": "rgb", "alpha": "yes"} if name == "t1.tif" else {})) as dataset:
            dataset.write(bands)
    with rasterio.open(tmp_path / "t1.tif") as dataset:
        assert dataset.colorinterp[3] == ColorInterp.alpha
    output_dir = tmp_path / "tiles"
    args = ["bcdd", "--t1", tmp_path / "t1.tif", "--t2", tmp_path / "t2.tif", "--label", tmp_path / "label.tif",
            "--output_dir", output_dir, "--tile", 24]
    assert prepare_data.main(list(map(str, args))) == 0
    samples = load_samples(output_dir)
    assert len(samples) == 4 * 3  # 100 x 90 in 24-pixel tiles
    for sample in samples.values():
        top, left = int(sample["pair_id"][1:7]), int(sample["pair_id"][9:])
        window = (slice(top, top + 24), slice(left, left + 24))
        assert np.array_equal(read_rgb(sample["img1_path"])[0], np.moveaxis(t1[:3], 0, -1)[window])
        assert np.array_equal(read_rgb(sample["img2_path"])[0], np.moveaxis(t2, 0, -1)[window])
        assert np.array_equal(read_mask(sample["mask_path"]), label[0][window] > 0)

# Runs a script and prints the peak RSS of its own address space. getrusage's ru_maxrss cannot be used: a child
# that subprocess starts with vfork keeps the pytest process's high-water mark through exec.
PEAK_RSS_PROBE = """
import os, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open("/proc/self/status") as status:
        print(next(line for line in status if line.startswith("VmHWM:")), file=sys.stderr)
"""


@pytest.fixture
def big_mosaics(tmp_path):
    """Three 12,000 x 12,000 uncompressed mosaics (432 MB for T1 and T2, 144 MB for the label), deleted afterwards
    rather than left to pytest's kept temporary folders."""
    side = 12_000
    for name, shape, photometric in (("t1.tif", (side, side, 3), "rgb"), ("label.tif", (side, side), "minisblack")):
        mosaic = tifffile.memmap(tmp_path / name, shape=shape, dtype=np.uint8, photometric=photometric)
        for top in range(0, side, 1000):  # written in chunks so this process stays small too
            rows = np.arange(top, top + 1000)[:, None] // 100 + np.arange(side)[None, :] // 100
            mosaic[top : top + 1000] = ((rows % 5 == 0) * 255)[..., None] if len(shape) == 3 else (rows % 5 == 0)
        mosaic.flush()
        del mosaic
    os.link(tmp_path / "t1.tif", tmp_path / "t2.tif")  # the same pixels suffice to measure memory
    yield tmp_path
    for name in ("t1.tif", "t2.tif", "label.tif"):
        (tmp_path / name).unlink()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc/self/status")
def test_bcdd_reads_big_mosaics_in_windows(big_mosaics):
    tmp_path = big_mosaics
    file_size = (tmp_path / "t1.tif").stat().st_size
    output_dir = tmp_path / "tiles"
    child = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_PROBE, str(SCRIPT), "bcdd", "--t1", str(tmp_path / "t1.tif"),
         "--t2", str(tmp_path / "t2.tif"), "--label", str(tmp_path / "label.tif"), "--output_dir", str(output_dir),
         "--tile", "512"],
        capture_output=True, text=True,
    )
    assert child.returncode == 0, child.stderr
    peak_rss = int(child.stderr.split("VmHWM:")[1].split()[0]) * 1024  # reported in kB
    print(f"bcdd on 12,000 x 12,000 mosaics ({file_size / 1e6:.0f} MB for T1): peak RSS {peak_rss / 1e6:.0f} MB")
    assert peak_rss < file_size / 2
    assert "pairs: 529 (" in child.stdout  # 23 x 23 tiles of 512
    assert "decoded whole: none (all read in windows)" in child.stdout
    tile = np.asarray(Image.open(output_dir / "images" / "t1" / "r011264_c010752.png"))
    expected = ((np.arange(11264, 11776)[:, None] // 100 + np.arange(10752, 11264)[None, :] // 100) % 5 == 0) * 255
    assert np.array_equal(tile[..., 1], expected)


# --------------------------------------------------------------------------------------------------------- folder

def write_pair(root: Path, stem: str, size=(32, 40), folders=("A", "B", "label"), label_value=255, suffix=".png"):
    rng = np.random.default_rng(len(stem))
    for folder in folders[:2]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / folder / f"{stem}{suffix}")
    (root / folders[2]).mkdir(parents=True, exist_ok=True)
    label = np.zeros(size, np.uint8)
    label[: size[0] // 2] = label_value
    Image.fromarray(label).save(root / folders[2] / f"{stem}.png")


def folder_args(root: Path, output_dir: Path, *extra, question="new roads") -> list[str]:
    return ["folder", "--root", str(root), "--question", question, "--output_dir", str(output_dir), *extra]


REAL_FOLDERS = {
    "LEVIR-CD/ChangeFormer": ("A", "B", "label", None, 11),
    "DSIFN-CD/ChangeFormer": ("A", "B", "label", None, 10),
    "WHU-CD/UCD-SCM": ("prev", "curr", "label", None, 3),
    "WHU-CD/BiSAM-CD": ("test/A", "test/B", "test/label", "test", 2),
}


@pytest.mark.parametrize("folder", REAL_FOLDERS)
def test_folder_on_real_samples(realcd, tmp_path, folder, capsys):
    t1_dir, t2_dir, label_dir, only_split, n_pairs = REAL_FOLDERS[folder]
    root, output_dir = realcd / folder, tmp_path / "out"
    assert prepare_data.main(folder_args(root, output_dir, question="Building")) == 0
    samples = load_samples(output_dir)
    assert len(samples) == n_pairs and f"pairs: {n_pairs} (" in capsys.readouterr().out
    if only_split:
        assert {s["split"] for s in samples.values()} == {only_split}
    assert not (output_dir / "A").exists()  # images are referenced, not copied
    for stem, sample in samples.items():
        assert sample["img1_path"].samefile(next((root / t1_dir).glob(f"{stem}.*")))
        assert sample["img2_path"].samefile(next((root / t2_dir).glob(f"{stem}.*")))
        assert sample["mask_path"].is_relative_to(output_dir / "masks")
        label = read_mask(next((root / label_dir).glob(f"{stem}.*")))
        assert np.array_equal(read_mask(sample["mask_path"]), label)
        assert sample["question"] == "Building"
        if label.any():
            assert (sample["answer"], sample["kind"]) == ("It's [SEG].", "explicit")
        else:
            assert (sample["answer"], sample["kind"]) == (folders.ABSENT_ANSWER, "absent")
            assert "[SEG]" not in sample["answer"]
    if folder == "LEVIR-CD/ChangeFormer":  # its one all-zero label
        assert samples["train_386_0512_0768"]["kind"] == "absent"


def test_folder_layout_variants(tmp_path):
    root = tmp_path / "data"
    for split, count in (("train", 3), ("val", 2)):
        for index in range(count):
            write_pair(root / split, f"{split}{index}", folders=("Im1", "im2", "gt"), suffix=".jpg")
    write_pair(root / "val", "nochange", folders=("Im1", "im2", "gt"), label_value=0, suffix=".jpg")
    output_dir = tmp_path / "out"
    assert prepare_data.main(folder_args(root, output_dir, "--answer", "The new roads are [SEG].")) == 0
    samples = load_samples(output_dir)
    assert {stem: s["split"] for stem, s in samples.items()} == {
        "train0": "train", "train1": "train", "train2": "train", "val0": "val", "val1": "val", "nochange": "val"
    }
    assert samples["val0"]["answer"] == "The new roads are [SEG]."
    assert samples["nochange"]["kind"] == "absent" and not read_mask(samples["nochange"]["mask_path"]).any()

    # Its own earlier output is replaced whole (no samples of the first run are left), a user's file beside it kept.
    (output_dir / "notes.txt").write_text("mine")
    assert prepare_data.main(folder_args(root / "train", output_dir)) == 0
    assert sorted(load_samples(output_dir)) == ["train0", "train1", "train2"]
    assert (output_dir / "notes.txt").read_text() == "mine"


def test_folder_input_errors_are_listed_and_nothing_is_written(tmp_path):
    root, output_dir = tmp_path / "data", tmp_path / "out"
    for stem in ("a", "b", "c"):
        write_pair(root, stem)
    (root / "B" / "b.png").unlink()
    (root / "label" / "c.png").rename(root / "label" / "c_mask.png")
    result = run_cli(*folder_args(root, output_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for line in ("3 file names have no partner", "b: not in B/", "c: not in label/", "c_mask: not in A/, B/"):
        assert line in result.stderr
    assert_nothing_written(output_dir)

    (root / "label" / "c_mask.png").rename(root / "label" / "c.png")
    write_pair(root, "b")
    Image.fromarray(np.zeros((32, 41, 3), np.uint8)).save(root / "B" / "b.png")
    result = run_cli(*folder_args(root, output_dir))
    assert result.returncode == 2 and "b: A/b.png 32 x 40, B/b.png 32 x 41, label/b.png 32 x 40" in result.stderr
    assert_nothing_written(output_dir)

    (root / "A" / "a.png").write_bytes(b"not a PNG")
    result = run_cli(*folder_args(root, output_dir))
    assert result.returncode == 2 and "1 files cannot be read:" in result.stderr
    assert "A/a.png: cannot read image header" in result.stderr
    assert_nothing_written(output_dir)

    write_pair(root, "a")
    write_pair(root, "b")
    label = np.zeros((32, 40), np.uint8)
    label[0, :2] = (1, 7)
    Image.fromarray(label).save(root / "label" / "c.png")
    result = run_cli(*folder_args(root, output_dir))
    assert result.returncode == 2 and "label/c.png: label is not binary, values {0, 1, 7}" in result.stderr
    assert_nothing_written(output_dir)

    (root / "label").rename(root / "annotations")
    result = run_cli(*folder_args(root, output_dir))
    assert result.returncode == 2 and "expected one image folder pair" in result.stderr
    assert "found A, B, annotations" in result.stderr
    assert_nothing_written(output_dir)


# --------------------------------------------------------------------------------------------------------- second


def test_second_calls_the_converter(tmp_path, monkeypatch, capsys):
    from reasoncd.data import second

    calls = []

    def convert_second(root, output_dir, **settings):
        calls.append((root, output_dir, settings))
        return {"pairs": {"train": 8, "val": 1, "test": 1}, "samples": 60}

    monkeypatch.setattr(second, "convert_second", convert_second)
    assert prepare_data.main(["second", "--root", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--seed=4"]) == 0
    defaults = {"seed": 4, "explanations": True, "negatives_per_pair": 1, "multi_per_pair": 1,
                "opposite_negatives_per_pair": 0, "swapped_training_pairs": False, "overwrite": False}
    assert calls == [(tmp_path, tmp_path / "o", defaults)]
    printed = capsys.readouterr().out
    assert "pairs: 10 (train 8, val 1, test 1)" in printed and "samples: 60" in printed
    assert prepare_data.main(["second", "--root", str(tmp_path), "--output_dir", str(tmp_path / "o"),
                              "--no_explanations", "--negatives_per_pair", "0", "--multi_per_pair", "2",
                              "--opposite_negatives_per_pair", "1", "--swapped_training_pairs", "--overwrite"]) == 0
    assert calls[1][2] == {"seed": 0, "explanations": False, "negatives_per_pair": 0, "multi_per_pair": 2,
                           "opposite_negatives_per_pair": 1, "swapped_training_pairs": True, "overwrite": True}


def test_synthetic_writes_pairs_that_second_converts(tmp_path, capsys):
    pairs = tmp_path / "pairs"
    assert prepare_data.main(["synthetic", "--output_dir", str(pairs), "--n_pairs", "3", "--size", "64"]) == 0
    assert f"wrote {pairs}\n  pairs: 3\n" in capsys.readouterr().out
    for folder in ("im1", "im2", "label1", "label2"):
        names = sorted(p.name for p in (pairs / folder).iterdir())
        assert names == ["00000.png", "00001.png", "00002.png"]
        assert Image.open(pairs / folder / names[0]).size == (64, 64)
    assert prepare_data.main(["second", "--root", str(pairs), "--output_dir", str(tmp_path / "samples")]) == 0
    # Three pairs: one each for train, val and test (the one split rule, reasoncd.data.samples.split_pairs).
    assert "pairs: 3 (train 1, val 1, test 1)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------- what is never touched


@pytest.mark.parametrize("command", ["folder", "bcdd", "second"])
def test_refuses_folders_it_did_not_write_and_keeps_them_byte_for_byte(tmp_path, capsys, command):
    from helpers import precious_places, tree

    root = tmp_path / "data"
    if command == "second":
        from reasoncd.data.synthetic import generate_second_layout

        generate_second_layout(root, 3, seed=0, progress=False)
    else:
        write_pair(root, "a")
    args = {"folder": ["folder", "--root", str(root), "--question", "new roads"],
            "bcdd": ["bcdd", "--t1", str(root / "A" / "a.png"), "--t2", str(root / "B" / "a.png"),
                     "--label", str(root / "label" / "a.png"), "--tile", "16"],
            "second": ["second", "--root", str(root)]}[command]
    places = precious_places(tmp_path / "places")
    places.update({"the input's own folder": root, "the folder holding the input": tmp_path})
    for what, place in places.items():
        before = tree(place)
        assert prepare_data.main([*args, "--output_dir", str(place)]) == 2, what
        error = capsys.readouterr().err
        assert f"prepare_data.py {command}: error: " in error and str(place) in error, (what, error)
        assert tree(place) == before, what


def test_overwrite_keeps_the_users_files(tmp_path):
    from helpers import precious_places

    root = tmp_path / "data"
    for stem in ("a", "b", "c"):
        write_pair(root, stem)
    user = precious_places(tmp_path / "places")["a folder holding a user's file"]
    assert prepare_data.main(folder_args(root, user, "--overwrite")) == 0
    assert (user / "notes.txt").read_text() == "a week of field notes\n"
    assert len(load_samples(user)) == 3
