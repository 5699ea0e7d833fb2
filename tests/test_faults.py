"""The machine failing around correct commands: a disk that fills at each write stage of each command, a second
command on a folder a live one is writing, a lock left by a killed one, read-only destinations, and paths with
spaces and non-ASCII names. Every command either works or says why with nothing lost: the earlier outputs stay as
they were, and a rerun once the fault is gone continues or starts cleanly.

Everything lives under a folder whose name has spaces and non-ASCII letters, so every test here also runs the
commands on such paths."""
import json
import shutil
import socket
from pathlib import Path

import matplotlib.figure
import numpy as np
import pyogrio.errors
import pyogrio.raw
import pytest
import rasterio
import rasterio._err
import rasterio.shutil
import transformers.modeling_utils
from PIL import Image
from safetensors import SafetensorError

import app
import build_reasoncd
import eval as eval_script
import export
import predict
import predict_scene
import prepare_data
import train
from fault_helpers import (DiskFills, fill_up, hold_lock_in_another_process, leftovers, no_space, read_only_folder,
                           remount, tmpfs)
from helpers import seg_forcing_checkpoint, tree
from reasoncd import io as io_module
from reasoncd.folder_lock import lock_file
from reasoncd.training.checkpoints import STAGING, checkpoint_problem
from scene_helpers import rgb_pair, write_geotiff
from training_helpers import training_data

PLACE = "Zürich 2016 – 变化 data"  # spaces, an accent, a dash and CJK: every path below lies in such a folder
SCENE_TILING = ["--tile_size", "64", "--overlap", "16", "--batch_size", "2", "--max_new_tokens", "2", "--no_progress"]
FULL = "could not be written: the disk is full"


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / PLACE
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def inputs(place, tmp_path_factory) -> dict[str, Path]:
    """A model answering [SEG] (so masks are decoded), a change-detection folder of three pairs and a scene."""
    model = place / "modèle tiny"
    shutil.copytree(seg_forcing_checkpoint(tmp_path_factory), model)
    folder = place / "LEVIR extrait"
    rng = np.random.default_rng(0)
    for index, name in enumerate(["paire 1", "écart 2", "变化 3"]):
        t1, t2 = (rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(2))
        label = np.zeros((48, 48), np.uint8)
        label[8 + index * 4: 30, 10:40] = 255
        for kind, array in (("A", t1), ("B", t2), ("label", label)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / kind / f"{name}.png")
    t1, t2 = rgb_pair(100, 120)
    return {"model": model, "folder": folder, "t1": write_geotiff(place / "t1 été.tif", t1),
            "t2": write_geotiff(place / "t2 été.tif", t2)}


def arguments(command: str, inputs: dict, out: Path) -> list[str]:
    """The command line of each command that writes a folder, on the inputs above."""
    return {
        "eval.py": ["--model", str(inputs["model"]), "--data", str(inputs["folder"]), "--question", "Building",
                    "--max_new_tokens", "2", "--output_dir", str(out)],
        "export.py": ["--run", str(inputs["model"]), "--output_dir", str(out), "--max_new_tokens", "2"],
        "prepare_data.py folder": ["folder", "--root", str(inputs["folder"]), "--question", "Building",
                                   "--output_dir", str(out)],
        "predict_scene.py": ["--model", str(inputs["model"]), "--t1", str(inputs["t1"]), "--t2", str(inputs["t2"]),
                             "--question", "neue Gebäude", "--output_dir", str(out), *SCENE_TILING],
        "build_reasoncd.py": ["--preset", "tiny", "--output_dir", str(out)],
    }[command]


MAINS = {"eval.py": eval_script.main, "export.py": export.main, "prepare_data.py folder": prepare_data.main,
         "predict_scene.py": predict_scene.main, "build_reasoncd.py": build_reasoncd.main}


def run(command: str, inputs: dict, out: Path) -> int:
    return MAINS[command](arguments(command, inputs, out))


@pytest.fixture(scope="module")
def earlier(place, inputs) -> dict[str, Path]:
    """Each command's outputs from a first, complete run: what a later run must never lose."""
    outputs = {}
    for command in MAINS:
        out = place / "earlier" / command.replace(" ", "-") / "sortie été"
        assert run(command, inputs, out) == 0, command
        outputs[command] = out
    return outputs


def test_every_command_works_on_paths_with_spaces_and_non_ascii_names(earlier, inputs):
    evaluated = json.loads((earlier["eval.py"] / "metrics.json").read_text())
    assert evaluated["n_samples"] == 3 and len(list((earlier["eval.py"] / "predictions").glob("*.png"))) == 3
    assert (earlier["export.py"] / "model.safetensors").is_file() and (earlier["export.py"] / "handler.py").is_file()
    samples = [p for p in earlier["prepare_data.py folder"].rglob("*.json") if p.parent.name in ("train", "val", "test")]
    assert len(samples) == 3
    for path in samples:  # the images and masks, by paths relative to the sample
        sample = json.loads(path.read_text())
        assert all((path.parent / sample[key]).is_file() for key in ("img1_path", "img2_path", "mask_path"))
    summary = json.loads((earlier["predict_scene.py"] / "summary.json").read_text())
    assert summary["questions"][0]["question"] == "neue Gebäude" and summary["t1"] == str(inputs["t1"])
    with rasterio.open(earlier["predict_scene.py"] / summary["questions"][0]["files"]["mask"]) as mask:
        assert (mask.width, mask.height) == (120, 100)
    assert (earlier["build_reasoncd.py"] / "model.safetensors").is_file()


def test_predict_and_train_work_on_such_paths_too(place, inputs, tmp_path_factory, capsys):
    first = inputs["folder"] / "A" / "écart 2.png"
    second = inputs["folder"] / "B" / "écart 2.png"
    out = place / "carte de changement" / "masque été.png"
    assert predict.main(["--model", str(inputs["model"]), "--t1", str(first), "--t2", str(second),
                         "--question", "nouveaux bâtiments", "--out", str(out), "--max_new_tokens", "2"]) == 0
    assert np.asarray(Image.open(out)).shape == (48, 48)
    samples = training_data(tmp_path_factory)
    shutil.copytree(samples.parent, place / "données d'entraînement")  # the samples and the images they point at
    data = place / "données d'entraînement" / samples.name
    run_dir = place / "entraînement 1"
    assert train.main(_train_arguments(data, run_dir, "--max_steps", "2", "--eval_steps", "2")) == 0
    assert checkpoint_problem(run_dir / "checkpoints" / "checkpoint-2") is None
    assert (run_dir / "model" / "model.safetensors").is_file()


# -------------------------------------------------------------------------------------------- a disk that fills


def _replacing_into(out: Path):
    return lambda source, target: Path(target).parent == out or Path(target) == out


# (stage, what fills: module, attribute, the library's own error, which calls count (None: all), free bytes after)
STAGES = {
    "eval.py": [
        ("a predicted mask", Image.Image, "save", no_space(), lambda self, path, *a, **k: "predictions" in str(path)),
        ("a panel", matplotlib.figure.Figure, "savefig", no_space(), None),
        ("the metrics", Path, "write_text", no_space(), lambda self, *a, **k: self.name.startswith(".metrics")),
        ("putting the outputs in place", io_module.os, "replace", no_space(), "into"),
    ],
    "export.py": [
        ("the weights", transformers.modeling_utils, "safe_save_file",
         SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), None),
        ("the endpoint handler", shutil, "copy2", no_space(), lambda source, target, **k: "handler" in str(target)),
        ("putting the outputs in place", io_module.os, "replace", no_space(), "into"),
    ],
    "prepare_data.py folder": [
        ("a mask", Image.Image, "save", no_space(), None),
        ("a sample", Path, "write_text", no_space(), lambda self, *a, **k: self.suffix == ".json"),
        ("putting the outputs in place", io_module.os, "replace", no_space(), "into"),
    ],
    "predict_scene.py": [
        # The second batch's first array (a batch writes one, or two when its answers name several targets).
        ("a batch of tiles", np, "save", no_space(), lambda file, *a, **k: ".batch-000001." in Path(file).name),
        # GDAL's words for a full disk (libtiff's "No space left on device" only goes to stderr)
        ("a Cloud-Optimized GeoTIFF", rasterio.shutil, "copy",
         rasterio._err.CPLE_AppDefinedError(3, 1, "TIFFAppendToStrip:Write error at scanline 64"), None),
        # SQLite's words, as GDAL passes them on for a GeoPackage
        ("the polygons", pyogrio.raw, "write_arrow",
         pyogrio.errors.DataSourceError("sqlite3_exec(COMMIT) failed: database or disk is full"), None),
        ("the summary", Path, "write_text", no_space(), lambda self, *a, **k: self.name.startswith(".summary")),
        ("putting the outputs in place", io_module.os, "replace", no_space(), "into"),
    ],
    "build_reasoncd.py": [
        ("the weights", transformers.modeling_utils, "safe_save_file",
         SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), None),
    ],
}
CASES = [(command, *stage) for command, stages in STAGES.items() for stage in stages]


@pytest.mark.parametrize("command, stage, module, name, error, when", CASES,
                         ids=[f"{case[0]}: {case[1]}" for case in CASES])
def test_a_full_disk_at_any_stage_loses_nothing_and_a_rerun_starts_cleanly(command, stage, module, name, error,
                                                                           when, earlier, inputs, tmp_path,
                                                                           monkeypatch, capsys):
    out = tmp_path / PLACE / "sortie"
    shutil.copytree(earlier[command], out)  # an earlier run of the same command, which a rerun replaces
    before = tree(out)
    fills = DiskFills(monkeypatch, module, name, error,
                      when=_replacing_into(out) if when == "into" else (when or (lambda *a, **k: True)))
    assert run(command, inputs, out) == 3, stage
    assert fills.filled, f"{stage}: the disk never filled (the stage was not reached)"
    message = capsys.readouterr().err
    assert f"{command}: error: {out}: {FULL} (512 bytes free there" in message, message
    assert f"{out} was left as it was" in message
    assert tree(out) == before and not leftovers(out.parent)
    if command == "predict_scene.py" and stage == "a batch of tiles":
        assert (out.parent / f".{out.name}.resume").is_dir()  # the first batch is kept for the rerun
    monkeypatch.undo()  # space is freed
    assert run(command, inputs, out) == 0
    assert not leftovers(out.parent) and not (out.parent / f".{out.name}.resume").exists()
    if command == "predict_scene.py":  # the same outputs as an uninterrupted run; finished tiles not run again
        summary = json.loads((out / "summary.json").read_text())
        assert summary == json.loads((earlier[command] / "summary.json").read_text())
        tiles = summary["scene"] and summary["tiles"]["total"]
        rerun = tiles - 2 if stage == "a batch of tiles" else 0
        assert f"{tiles} tiles, {rerun} through the model in this run" in capsys.readouterr().err


def test_a_full_disk_while_predict_writes_its_mask_keeps_the_earlier_mask(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "masque.png"
    out.write_bytes(b"an earlier change map")
    DiskFills(monkeypatch, Image.Image, "save", no_space())
    assert predict.main(["--model", str(inputs["model"]), "--t1", str(inputs["folder"] / "A" / "paire 1.png"),
                         "--t2", str(inputs["folder"] / "B" / "paire 1.png"), "--question", "roads",
                         "--out", str(out), "--max_new_tokens", "2"]) == 3
    assert f"predict.py: error: {out}: {FULL}" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier change map" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_a_full_disk_while_generating_pairs_keeps_the_whole_ones_and_a_rerun_continues(tmp_path, monkeypatch,
                                                                                        capsys):
    fresh, out = tmp_path / "fresh", tmp_path / PLACE
    assert prepare_data.main(["synthetic", "--output_dir", str(fresh), "--n_pairs", "3", "--size", "64"]) == 0
    fills = DiskFills(monkeypatch, Image.Image, "save", no_space(), at=6)  # the second file of the second pair
    assert prepare_data.main(["synthetic", "--output_dir", str(out), "--n_pairs", "3", "--size", "64"]) == 3
    assert fills.filled and f"prepare_data.py synthetic: error: {out / 'im2' / '00001.png'}: {FULL}" in \
        capsys.readouterr().err
    written = tree(out)
    assert all(value == tree(fresh)[name] for name, value in written.items() if value is not None)  # whole files
    monkeypatch.undo()
    assert prepare_data.main(["synthetic", "--output_dir", str(out), "--n_pairs", "3", "--size", "64"]) == 0
    assert tree(out) == tree(fresh) and not leftovers(tmp_path)


def _train_arguments(data: Path, output: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--output_dir", str(output), "--per_device_train_batch_size", "2", "--batch_size",
            "2", "--full_embeddings", "--max_val_samples", "2", "--skip_test", "--seed", "7", *extra]


def test_a_full_disk_while_training_keeps_the_earlier_checkpoints_and_resuming_finishes(tmp_path_factory, tmp_path,
                                                                                         monkeypatch, capsys):
    run_dir = tmp_path / PLACE / "run"
    arguments_ = _train_arguments(training_data(tmp_path_factory), run_dir, "--max_steps", "4", "--eval_steps", "2")
    # The disk fills while checkpoint-4 is saved (torch.save's writer says only "unexpected pos").
    DiskFills(monkeypatch, train.torch, "save", RuntimeError("[enforce fail at inline_container.cc:672] . "
                                                             "unexpected pos 576 vs 534"),
              when=lambda obj, path, *a, **k: "checkpoint-4" in str(path))
    assert train.main(arguments_) == 3
    message = capsys.readouterr().err
    assert f"train.py: error: {run_dir / 'checkpoints' / 'checkpoint-4'}: {FULL}" in message
    assert "The earlier checkpoints are intact: continue from checkpoint-2 with --resume_from_checkpoint" in message
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]  # the staged save freed its space
    assert checkpoint_problem(checkpoints / "checkpoint-2") is None and not (checkpoints / STAGING).exists()
    monkeypatch.undo()

    # Resumed, it fills again while the final model is written.
    DiskFills(monkeypatch, transformers.modeling_utils, "safe_save_file",
              SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert train.main(arguments_ + ["--resume_from_checkpoint"]) == 3
    message = capsys.readouterr().err
    assert f"train.py: error: {run_dir / 'model'}: {FULL}" in message
    assert "run again with --resume_from_checkpoint to write the model and the metrics" in message
    assert checkpoint_problem(checkpoints / "checkpoint-4") is None and not (run_dir / "model").exists()
    monkeypatch.undo()

    assert train.main(arguments_ + ["--resume_from_checkpoint"]) == 0
    assert (run_dir / "model" / "model.safetensors").is_file() and not leftovers(run_dir)


# A real small disk (a tmpfs; where this user may mount one): the libraries' own errors, not injected ones.


def test_on_a_disk_that_fills_eval_keeps_the_earlier_evaluation_and_a_rerun_works(inputs, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "évaluation"
        assert run("eval.py", inputs, out) == 0
        before = tree(out)
        filler = fill_up(disk, leave=16_384)  # another job's file takes the rest of the disk
        capsys.readouterr()
        assert run("eval.py", inputs, out) == 3
        message = capsys.readouterr().err
        assert f"eval.py: error: {out}: {FULL} (" in message and f"{out} was left as it was" in message
        assert tree(out) == before and not leftovers(disk)
        filler.unlink()  # space is freed
        assert run("eval.py", inputs, out) == 0 and not leftovers(disk)


def test_on_a_disk_too_small_a_scene_keeps_its_finished_tiles_and_continues_once_there_is_space(inputs, earlier,
                                                                                                 tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "240k") as disk:  # room for the first batch of tiles (with its targets), not the second
        out = disk / "scène"
        assert run("predict_scene.py", inputs, out) == 3
        message = capsys.readouterr().err
        assert f"predict_scene.py: error: {out}: {FULL} (" in message and "continues from them" in message
        finished = sorted((disk / f".{out.name}.resume" / "work" / "tiles").glob("batch-*.json"))
        assert finished and not out.exists()
        remount(disk, "8m")
        assert run("predict_scene.py", inputs, out) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary == json.loads((earlier["predict_scene.py"] / "summary.json").read_text())
        tiles = summary["tiles"]["total"]
        assert f"{tiles} tiles, {tiles - 2 * len(finished)} through the model in this run" in capsys.readouterr().err
        assert not leftovers(disk) and not (disk / f".{out.name}.resume").exists()


def test_an_export_larger_than_the_free_space_is_refused_before_writing(inputs, tmp_path, capsys):
    with tmpfs(tmp_path / "disk", "8m") as disk:  # the tiny model's weights take about 26 MB
        out = disk / "export"
        assert export.main(arguments("export.py", inputs, out)) == 3
        message = capsys.readouterr().err
        assert f"export.py: error: {out}: {FULL} (" in message and "MB needed)" in message
        assert sorted(p.name for p in disk.iterdir()) == []


# ------------------------------------------------------------------------------------------ two jobs, one folder


@pytest.mark.parametrize("command", [*MAINS, "prepare_data.py synthetic", "train.py"])
def test_a_second_command_on_a_folder_a_live_one_writes_is_refused_at_once(command, inputs, tmp_path,
                                                                           tmp_path_factory, capsys):
    out = tmp_path / PLACE / "out"
    other = hold_lock_in_another_process(out, "eval.py")
    try:
        record = json.loads(lock_file(out).read_text())
        if command == "prepare_data.py synthetic":
            status = prepare_data.main(["synthetic", "--output_dir", str(out), "--n_pairs", "2", "--size", "32"])
        elif command == "train.py":
            status = train.main(_train_arguments(training_data(tmp_path_factory), out, "--max_steps", "2"))
        else:
            status = run(command, inputs, out)
        assert status == 2
        assert (f"is being written by another ReasonCD command: eval.py (process {other.pid} on {record['host']}, "
                f"started {record['started']})") in capsys.readouterr().err
        assert not out.exists() and json.loads(lock_file(out).read_text()) == record  # the holder's lock is kept
    finally:
        other.stdin.close()
        other.wait(timeout=30)


def test_a_lock_left_by_a_killed_command_is_taken_over(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    dead = 2**22 + 12345  # above any pid_max: no such process
    lock_file(out).write_text(json.dumps({"command": "eval.py", "pid": dead, "host": socket.gethostname(),
                                          "started": "2024-05-01T03:00:00+00:00"}))
    assert run("prepare_data.py folder", inputs, out) == 0
    assert f"taking over the lock left by eval.py (process {dead} on" in capsys.readouterr().err
    assert not leftovers(tmp_path)


# -------------------------------------------------------------------------------------------- read-only places


@pytest.mark.parametrize("command", [*MAINS, "prepare_data.py synthetic", "train.py", "predict.py", "app.py"])
def test_a_read_only_destination_is_refused_before_any_work(command, inputs, tmp_path, tmp_path_factory,
                                                            monkeypatch, capsys):
    with read_only_folder(tmp_path / "disk") as disk:
        out = disk / "out"
        if command == "prepare_data.py synthetic":
            status = prepare_data.main(["synthetic", "--output_dir", str(out), "--n_pairs", "2", "--size", "32"])
        elif command == "train.py":
            status = train.main(_train_arguments(training_data(tmp_path_factory), out, "--max_steps", "2"))
        elif command == "predict.py":
            status = predict.main(["--model", str(inputs["model"]), "--t1", str(inputs["t1"]), "--t2",
                                   str(inputs["t2"]), "--question", "roads", "--out", str(disk / "mask.png")])
        elif command == "app.py":  # no trained model yet: the untrained one it would build cannot be written
            monkeypatch.setattr(app, "DEFAULT_MODEL", tmp_path / "runs" / "quickstart" / "model")
            monkeypatch.setattr(app, "UNTRAINED_MODEL", out)
            status = app.main(["--model", str(tmp_path / "runs" / "quickstart" / "model")])
        else:
            status = run(command, inputs, out)
        assert status == 2, command
        error = capsys.readouterr().err
        assert "could not be written: the file system is read-only" in error or "permission" in error, error
        assert sorted(p.name for p in disk.iterdir()) == []
