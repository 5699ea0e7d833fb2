"""predict.py as a user runs it: real image pairs in, an 8-bit 0/255 change map of the pair's size out; clear
errors (exit code 2, no traceback) for bad inputs; non-RGB inputs converted with a note."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import REPO_ROOT, random_image, run_script, script_env, seg_forcing_checkpoint, tiny_checkpoint

LEVIR = ("LEVIR-CD/ChangeFormer/A/test_7_0256_0512.png", "LEVIR-CD/ChangeFormer/B/test_7_0256_0512.png")
WHU = ("WHU-CD/UCD-SCM/prev/000241.png", "WHU-CD/UCD-SCM/curr/000241.png")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


def predict_args(model, t1, t2, out, question="new buildings", *extra):
    return ["predict.py", "--model", str(model), "--t1", str(t1), "--t2", str(t2), "--question", question,
            "--out", str(out), "--max_new_tokens", "6", *extra]


def predict(*args, **kwargs):
    return run_script(predict_args(*args, **kwargs), cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory, checkpoint):
    """The invocations that load the model, started together (each spends most of its time importing and
    loading); `runs[name]` is (CompletedProcess, output path, inputs)."""
    try:
        realcd = request.getfixturevalue("realcd")
    except pytest.skip.Exception:
        realcd = None
    work = tmp_path_factory.mktemp("predict")
    jobs = {}
    if realcd is not None:
        t1, t2 = (realcd / p for p in LEVIR)
        jobs["levir"] = (predict_args(checkpoint, t1, t2, work / "maps" / "levir.png",
                                      "changes that provide more living areas for people", "--json"),
                         work / "maps" / "levir.png", (t1, t2))
        t1, t2 = (realcd / p for p in WHU)
        jobs["whu"] = (predict_args(seg_forcing_checkpoint(tmp_path_factory), t1, t2, work / "whu.png", "building",
                                    "--json"), work / "whu.png", (t1, t2))

    rgb = random_image(120, 160, seed=4)
    gray, rgba = work / "gray.png", work / "rgba.png"
    Image.fromarray(rgb[..., 1], mode="L").save(gray)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), mode="RGBA").save(rgba)
    jobs["gray_rgba"] = (predict_args(checkpoint, gray, rgba, work / "gray_rgba.png"), work / "gray_rgba.png",
                         (gray, rgba))

    rgb = random_image(100, 140, seed=6)
    deep, rgb_path = work / "deep.png", work / "rgb.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 40 + 1000).save(deep)
    Image.fromarray(rgb).save(rgb_path)
    jobs["16bit"] = (predict_args(checkpoint, deep, rgb_path, work / "deep_map.png"), work / "deep_map.png",
                     (deep, rgb_path))

    # A model whose presence decision says "present" to every question, asked with the threshold above any logit;
    # and one without a presence decision, which has no threshold to set.
    for name, threshold in (("strict", ["--presence_threshold", "1e6"]), ("lenient", [])):  # lenient: its own
        jobs[name] = (predict_args(seg_forcing_checkpoint(tmp_path_factory), rgb_path, deep, work / f"{name}.png",
                                   "new buildings", "--json", *threshold), work / f"{name}.png", (rgb_path, deep))
    undecided = work / "no-presence-head"
    from reasoncd.build import build_tiny, save_checkpoint

    save_checkpoint(*build_tiny(0, presence_head=False, question_mask=False), undecided)
    jobs["undecided"] = (predict_args(undecided, rgb_path, deep, work / "undecided.png", "new buildings",
                                      "--presence_threshold", "2"), work / "undecided.png", (undecided,))

    broken = work / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "model.safetensors").unlink()
    jobs["broken"] = (predict_args(broken, rgb_path, rgb_path, work / "broken.png"), work / "broken.png", (broken,))

    started = {name: subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=script_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, (args, _, _) in jobs.items()}
    results = {}
    for name, process in started.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
                         jobs[name][1], jobs[name][2])
    return results


def read_change_map(path, size):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L"  # 8-bit, one band
        assert image.size == size
        values = np.asarray(image)
    assert set(np.unique(values).tolist()) <= {0, 255}
    return values


def test_levir_pair_json(realcd, runs):
    result, out, (t1, _) = runs["levir"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)  # stdout is the JSON document and nothing else
    assert set(report) == {"text", "raw_text", "mask", "changed_fraction", "mask_confidence", "seg_probability",
                           "targets"}
    assert isinstance(report["text"], str) and report["mask"] == str(out)
    with Image.open(t1) as image:
        size = image.size
    values = read_change_map(out, size)
    assert report["changed_fraction"] == pytest.approx(float((values == 255).mean()))
    # The random tiny model does not answer [SEG]: no change is drawn.
    assert "[SEG]" not in report["raw_text"] and report["changed_fraction"] == 0.0 and report["targets"] == []
    # No [SEG]: its highest probability at any step is reported, and the empty map is as sure as [SEG] was unlikely.
    assert 0.0 <= report["seg_probability"] < 0.5
    assert report["mask_confidence"] == pytest.approx(1.0 - report["seg_probability"])


def test_whu_1024_pair_with_a_mask(realcd, runs):
    """A model that answers [SEG] draws a change map; at 1024x1024 it is written at the input size."""
    result, out, (t1, _) = runs["whu"]
    with Image.open(t1) as image:
        assert image.size == (1024, 1024)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["raw_text"].startswith("[SEG]") and "[SEG]" not in report["text"]
    values = read_change_map(out, (1024, 1024))
    fraction = float((values == 255).mean())
    assert 0.0 < fraction < 1.0  # both classes present: the decoder's logits were thresholded, not filled
    assert report["changed_fraction"] == pytest.approx(fraction)
    assert 0.99 < report["seg_probability"] <= 1.0 and 0.5 < report["mask_confidence"] <= 1.0
    # Every [SEG] (six: --max_new_tokens 6) is a target, its mask written beside --out; --out is their union.
    targets = report["targets"]
    assert [target["mask"] for target in targets] == [str(out.with_name(f"whu_target{k}.png")) for k in range(1, 7)]
    masks = [read_change_map(target["mask"], (1024, 1024)) for target in targets]
    assert np.array_equal(np.maximum.reduce(masks), values)
    for target, mask in zip(targets, masks):
        assert target["label"].startswith("change ") and 0.99 < target["seg_probability"] <= 1.0
        assert target["changed_fraction"] == pytest.approx(float((mask == 255).mean()))
        assert 0.5 <= target["mask_confidence"] <= 1.0


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """Two 8-bit RGB PNGs of 120x160 and one of 200x300 (height x width)."""
    folder = tmp_path_factory.mktemp("pngs")
    paths = {}
    for name, shape, seed in (("a", (120, 160), 1), ("b", (120, 160), 2), ("big", (200, 300), 3)):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(random_image(*shape, seed=seed)).save(paths[name])
    return paths


def test_missing_file(pngs, checkpoint, tmp_path):
    missing = tmp_path / "no_such_T2.png"
    result = predict(checkpoint, pngs["a"], missing, tmp_path / "m.png")
    assert_clean_error(result, str(missing))
    assert not (tmp_path / "m.png").exists()


def test_size_mismatch(pngs, checkpoint, tmp_path):
    result = predict(checkpoint, pngs["a"], pngs["big"], tmp_path / "m.png")
    assert_clean_error(result, "120 x 160", "200 x 300", str(pngs["big"]), "height x width")
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("question", ["", "   "])
def test_empty_question(pngs, checkpoint, tmp_path, question):
    result = predict(checkpoint, pngs["a"], pngs["b"], tmp_path / "m.png", question)
    assert_clean_error(result, "empty")


def test_the_presence_threshold_decides_the_answer(runs):
    answers = {}
    for name in ("lenient", "strict"):
        result, out, _ = runs[name]
        assert result.returncode == 0, result.stderr[-2000:]
        answers[name] = json.loads(result.stdout)
    # This model's language model says only [SEG]: at its own threshold it points at a mask; above every logit the
    # decision forbids [SEG], so no mask is decoded and the map is empty.
    assert "[SEG]" in answers["lenient"]["raw_text"]
    assert "[SEG]" not in answers["strict"]["raw_text"] and answers["strict"]["changed_fraction"] == 0.0
    assert not read_change_map(runs["strict"][1], (140, 100)).any()


def test_a_presence_threshold_for_a_model_without_a_presence_decision_is_refused(runs, pngs, checkpoint, tmp_path):
    result, out, (undecided,) = runs["undecided"]
    assert_clean_error(result, str(undecided), "no presence decision", "--presence_threshold")
    assert not out.exists()
    result = predict(checkpoint, pngs["a"], pngs["b"], tmp_path / "m.png", "new buildings",
                     "--presence_threshold", "nan")
    assert result.returncode == 2 and "--presence_threshold: 'nan' is not a finite number" in result.stderr


def test_checkpoint_without_weights(runs):
    result, out, (broken,) = runs["broken"]
    assert_clean_error(result, "model.safetensors", str(broken))
    assert not out.exists()


def test_grayscale_and_rgba_inputs(runs):
    result, out, (gray, rgba) = runs["gray_rgba"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert any(str(gray) in n and "grayscale" in n for n in notes), notes
    assert any(str(rgba) in n and "alpha" in n for n in notes), notes
    values = read_change_map(out, (160, 120))
    # Without --json: the answer, then a line naming the map and the changed share.
    lines = result.stdout.rstrip("\n").split("\n")
    assert len(lines) == 2 and str(out) in lines[1]
    assert f"({(values == 255).mean():.2%} of pixels changed)" in lines[1]


def test_16bit_input(runs):
    result, out, (deep, rgb_path) = runs["16bit"]
    with Image.open(deep) as image:
        assert image.mode.startswith("I")  # 16-bit grayscale PNG
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert any(str(deep) in n and "8 bit" in n for n in notes), notes
    assert not any(str(rgb_path) in n for n in notes)
    read_change_map(out, (140, 100))


def test_out_never_replaces_an_input_image_or_a_folder(pngs, checkpoint, tmp_path):
    copy = tmp_path / "a.png"
    shutil.copy(pngs["a"], copy)
    before = copy.read_bytes()
    assert_clean_error(predict(checkpoint, copy, pngs["b"], copy), f"--out {copy} is one of the input images")
    assert copy.read_bytes() == before
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "notes.txt").write_text("mine")
    assert_clean_error(predict(checkpoint, pngs["a"], pngs["b"], tmp_path / "maps"), "is a folder")
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["notes.txt"]


def _damaged_copy(checkpoint, folder, name, damage):
    shutil.copytree(checkpoint, folder)
    (folder / name).write_bytes(damage((folder / name).read_bytes()))
    return folder


@pytest.mark.parametrize("name, damage, message", [
    ("model.safetensors", lambda data: data[: len(data) // 3], "not a readable safetensors file"),
    ("model.safetensors", lambda data: b"", "not a readable safetensors file"),
    ("config.json", lambda data: data[:-20], "not valid JSON"),
    ("processor_config.json", lambda data: b"\xff\xfe garbage", "not valid JSON"),
])
def test_a_damaged_checkpoint_names_the_file(pngs, checkpoint, tmp_path, name, damage, message):
    damaged = _damaged_copy(checkpoint, tmp_path / "damaged", name, damage)
    result = predict(damaged, pngs["a"], pngs["b"], tmp_path / "m.png")
    assert_clean_error(result, f"{damaged / name}: {message}")
    assert not (tmp_path / "m.png").exists()


def test_a_decompression_bomb_is_refused_with_its_size_and_the_limit(pngs, checkpoint, tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A 70-byte PNG whose header claims 100,000 x 100,000 RGB pixels (30 GB decoded).
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    result = predict(checkpoint, pngs["a"], bomb, tmp_path / "m.png")
    assert_clean_error(result, str(bomb), "100,000 x 100,000", "limit of 268,435,456", "REASONCD_MAX_IMAGE_PIXELS")
    # The limit is the user's to lower (or raise, for real large scenes).
    result = run_script(predict_args(checkpoint, pngs["a"], pngs["b"], tmp_path / "m.png"), cwd=REPO_ROOT,
                        extra_env={"REASONCD_MAX_IMAGE_PIXELS": "10000"})
    assert_clean_error(result, str(pngs["a"]), "160 x 120 = 19,200 pixels", "limit of 10,000")
    assert not (tmp_path / "m.png").exists()


def test_checkpoints_with_older_processor_code_still_show_a_readable_answer():
    from reasoncd.loading import with_readable_text

    result = with_readable_text({"text": "It's the new buildings [SEG].", "mask": None})
    assert (result["text"], result["raw_text"]) == ("It's the new buildings.", "It's the new buildings [SEG].")
    assert with_readable_text(dict(result)) == result  # a current processor's result is left as it is
