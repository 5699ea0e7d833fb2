"""SIGTERM (a scheduler's time limit) at random points of export.py, eval.py, prepare_data.py and predict_scene.py,
run as the scheduler runs them: each exits with status 143 and a line saying where its outputs stand, leaves the
target as it was (an earlier run's outputs, byte for byte, or nothing) and nothing beside it; a scene keeps its
finished tiles, and running it again gives the outputs of an uninterrupted run."""
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

import eval as eval_script
import export
import predict_scene
import prepare_data
from fault_helpers import leftovers
from helpers import REPO_ROOT, script_env, seg_forcing_checkpoint, tree
from scene_helpers import rgb_pair, write_geotiff

SCENE_TILING = ["--tile_size", "64", "--overlap", "16", "--batch_size", "1", "--max_new_tokens", "2", "--no_progress"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stop")
    model = seg_forcing_checkpoint(tmp_path_factory)
    folder = root / "pairs"
    rng = np.random.default_rng(1)
    for index in range(24):  # enough pairs that a stop lands while they are written
        for kind, array in (("A", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                            ("B", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                            ("label", (rng.random((64, 64)) < 0.2).astype(np.uint8) * 255)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / kind / f"{index:03d}.png")
    t1, t2 = rgb_pair(160, 200)
    return {"model": model, "folder": folder, "t1": write_geotiff(root / "t1.tif", t1),
            "t2": write_geotiff(root / "t2.tif", t2)}


def command_line(command: str, inputs: dict, out: Path) -> list[str]:
    return {
        "export.py": ["export.py", "--run", str(inputs["model"]), "--output_dir", str(out), "--max_shard_size", "4MB"],
        "eval.py": ["eval.py", "--model", str(inputs["model"]), "--data", str(inputs["folder"]), "--question",
                    "Building", "--max_new_tokens", "2", "--batch_size", "2", "--output_dir", str(out)],
        "prepare_data.py": ["prepare_data.py", "folder", "--root", str(inputs["folder"]), "--question", "Building",
                            "--output_dir", str(out)],
        "predict_scene.py": ["predict_scene.py", "--model", str(inputs["model"]), "--t1", str(inputs["t1"]),
                             "--t2", str(inputs["t2"]), "--question", "new buildings", "--output_dir", str(out),
                             *SCENE_TILING],
    }[command]


def _started_work(out: Path) -> bool:
    """Whether the command has begun writing beside its target (staged outputs, or a scene's first tiles)."""
    parent = out.parent
    staged = any(p.name.startswith(f".{out.name}.partial-") for p in parent.iterdir())
    tiles = parent / f".{out.name}.resume" / "work" / "tiles"
    return staged or (tiles.is_dir() and any(tiles.glob("batch-*.json")))


def stop_at(arguments: list[str], out: Path, moment: str, seed: int) -> subprocess.CompletedProcess:
    """Runs the command and sends SIGTERM at `moment`: "while loading" (before anything is written) or "while
    writing" (a random time after its first outputs appeared)."""
    log = out.parent / f"{out.name}-{moment.replace(' ', '-')}.log"  # a file, not a pipe: a full pipe would block it
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, *arguments], cwd=REPO_ROOT, env=script_env(), text=True,
                                   stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    lock = out.parent / f".{out.name}.lock"
    if moment == "while loading":
        while not lock.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # the folder is checked and locked: the command is past its imports, not yet writing
    else:
        while not _started_work(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        # Within 10 ms of the first output: on an idle machine prepare_data.py and eval.py finish writing in a few
        # tens of milliseconds, and a later stop would find them done.
        time.sleep(random.Random(seed).uniform(0.0, 0.01))
    assert process.poll() is None and time.monotonic() < deadline, \
        f"the command ended (or never began writing) before the stop:\n{log.read_text()[-3000:]}"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    text = log.read_text()
    log.unlink()
    return subprocess.CompletedProcess(process.args, process.returncode, text, text)


MAINS = {"export.py": export.main, "eval.py": eval_script.main, "prepare_data.py": prepare_data.main}


@pytest.fixture(scope="module")
def earlier(inputs, tmp_path_factory) -> dict[str, Path]:
    """Each command's outputs from a complete run (in this process: faster), which the stopped runs replace."""
    outputs = {}
    for command, main in MAINS.items():
        outputs[command] = tmp_path_factory.mktemp("earlier") / "out"
        assert main(command_line(command, inputs, outputs[command])[1:]) == 0, command
    return outputs


@pytest.mark.parametrize("moment", ["while loading", "while writing"])
@pytest.mark.parametrize("command", list(MAINS))
def test_sigterm_leaves_the_earlier_outputs_as_they_were(command, moment, inputs, earlier, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(earlier[command], out)
    before = tree(out)
    seed = random.randrange(10**6)
    stopped = stop_at(command_line(command, inputs, out), out, moment, seed)
    assert stopped.returncode == 143, (seed, stopped.returncode, stopped.stderr[-2000:])
    name = "prepare_data.py folder" if command == "prepare_data.py" else command
    assert f"{name}: stopped by SIGTERM: " in stopped.stderr and "Traceback" not in stopped.stderr
    assert tree(out) == before, seed
    assert not leftovers(tmp_path), (seed, leftovers(tmp_path))


def test_sigterm_before_a_first_export_leaves_nothing(inputs, tmp_path):
    out = tmp_path / "new"
    stopped = stop_at(command_line("export.py", inputs, out), out, "while writing", random.randrange(10**6))
    assert stopped.returncode == 143 and f"Nothing was put at {out}" in stopped.stderr
    assert not out.exists() and not leftovers(tmp_path)


def test_a_scene_stopped_anywhere_resumes_to_the_outputs_of_an_uninterrupted_run(inputs, tmp_path):
    reference = tmp_path / "reference"
    assert predict_scene.main(command_line("predict_scene.py", inputs, reference)[1:]) == 0
    out = tmp_path / "out"
    seed = random.randrange(10**6)
    stopped = stop_at(command_line("predict_scene.py", inputs, out), out, "while writing", seed)
    assert stopped.returncode == 143, (seed, stopped.stderr[-2000:])
    resume = tmp_path / ".out.resume"
    assert f"the finished tiles are kept in {resume}" in stopped.stderr
    assert not out.exists() and resume.is_dir() and not leftovers(tmp_path)
    assert predict_scene.main(command_line("predict_scene.py", inputs, out)[1:]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((reference / "summary.json").read_text())
    for kind in ("probability", "mask"):
        name = summary["questions"][0]["files"][kind]
        with rasterio.open(out / name) as resumed, rasterio.open(reference / name) as whole:
            assert np.array_equal(resumed.read(), whole.read())
    assert not resume.exists() and not leftovers(tmp_path)
    shutil.rmtree(out)
