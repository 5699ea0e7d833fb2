"""reasoncd.training.start, through train.py: the checks before any data is made or loaded (hyper-parameters, LoRA
targets, the checkpoint to start or resume from, and the output folder: never a user's files, never an earlier run
unless asked)."""
import shutil
from pathlib import Path

import numpy as np
import pytest

import train
from helpers import precious_places, tiny_checkpoint, tree
from reasoncd.io import MARKER, read_marker


@pytest.fixture
def no_data(monkeypatch):
    """Makes generating or loading data fail the test: every refusal must come before it."""
    def forbidden(*args, **kwargs):
        raise AssertionError("data was generated or loaded before the arguments were checked")

    monkeypatch.setattr(train, "prepare_quickstart_data", forbidden)
    monkeypatch.setattr(train, "load_split", forbidden)


def refused(args: list[str], capsys) -> str:
    """train.main's exit status must be 2 (argparse's own errors exit with 2 too); returns stderr."""
    try:
        code = train.main(args)
    except SystemExit as error:
        code = error.code
    assert code == 2, args
    return capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--lora_rank", "0"], "--lora_rank 0: must be at least 1"),
    (["--learning_rate=-1e-4"], "--learning_rate -0.0001: must be a positive number"),
    (["--learning_rate", "nan"], "--learning_rate nan: must be a positive number"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be at least 1"),
    (["--batch_size", "0"], "--batch_size 0: must be at least 1"),
    (["--opposite_negatives_per_pair", "-1"], "--opposite_negatives_per_pair -1: must be at least 0"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0.0: must be a positive number"),
    (["--max_steps", "0"], "--max_steps 0: give a positive number of steps"),
    (["--lora_dropout", "1.5"], "--lora_dropout 1.5: must be in [0, 1)"),
    (["--warmup_steps", "-5"], "--warmup_steps -5: must be at least 0"),
    (["--weight_decay", "-0.1"], "--weight_decay -0.1: must be a number of at least 0"),
    (["--order_loss_weight", "-1"], "--order_loss_weight: '-1' is not a weight of at least 0"),
    (["--croi_loss_weight", "inf"], "--croi_loss_weight: 'inf' is not a weight of at least 0"),
    (["--eval_steps", "0"], "--eval_steps 0: must be at least 1"),
    (["--lora_targets", "q_proj,,v_proj"], "give comma-separated module names"),
    (["--lora_targets", "q_proj,query"], "the language model has no query layer; its linear layers are"),
    (["--deepspeed", "configs/none.json"], "--deepspeed configs/none.json: no such file"),
    (["--preset", "reasoncd-7b"], "--preset reasoncd-7b: build it from real weights"),
])
def test_bad_hyper_parameters_are_refused_before_any_data(args, message, no_data, tmp_path, capsys):
    error = refused([*args, "--output_dir", str(tmp_path / "run")], capsys)
    assert "error: " in error and message in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_architecture_flags_with_a_starting_model_are_refused_by_their_flags(no_data, tmp_path, capsys):
    error = refused(["--model", str(tmp_path / "model"), "--no_fusion", "--seg_state_norm", "--output_dir",
                     str(tmp_path / "run")], capsys)
    assert ("error: --no_fusion --seg_state_norm changes the architecture: build the starting model with "
            "build_reasoncd.py --no_fusion --seg_state_norm and pass it as --model instead") in error
    assert not (tmp_path / "run").exists()


def test_resume_from_a_folder_without_a_checkpoint_is_refused(no_data, tmp_path, capsys):
    out = ["--output_dir", str(tmp_path / "run")]
    assert "--resume_from_checkpoint " + str(tmp_path / "nowhere") + ": no such folder" in refused(
        ["--resume_from_checkpoint", str(tmp_path / "nowhere"), *out], capsys)
    run = tmp_path / "old"
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    error = refused(["--resume_from_checkpoint", str(run), *out], capsys)
    assert f"--resume_from_checkpoint {run}: no checkpoint there (no trainer_state.json)" in error
    assert f"the latest checkpoint there is {run / 'checkpoints' / 'checkpoint-4'}" in error
    assert not (tmp_path / "run").exists()


def test_a_damaged_starting_checkpoint_is_named(no_data, tmp_path_factory, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_checkpoint(tmp_path_factory), damaged)
    (damaged / "config.json").write_text("{\"text_config\": ")
    error = refused(["--model", str(damaged), "--data", str(tmp_path), "--output_dir", str(tmp_path / "run")], capsys)
    assert f"{damaged / 'config.json'}: not valid JSON" in error
    weights = (damaged / "model.safetensors").read_bytes()
    shutil.copy(tiny_checkpoint(tmp_path_factory) / "config.json", damaged / "config.json")
    (damaged / "model.safetensors").write_bytes(weights[:1000])
    error = refused(["--model", str(damaged), "--data", str(tmp_path), "--output_dir", str(tmp_path / "run")], capsys)
    assert f"{damaged / 'model.safetensors'}: not a readable safetensors file" in error
    assert not (tmp_path / "run").exists()


def test_refuses_folders_it_did_not_write_and_keeps_them_byte_for_byte(no_data, tmp_path, capsys):
    places = precious_places(tmp_path / "places")
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    places["the data's own folder"] = data
    places["the folder holding the data"] = tmp_path
    for what, place in places.items():
        before = tree(place)
        error = refused(["--data", str(data), "--output_dir", str(place)], capsys)
        assert "error: " in error and str(place) in error, (what, error)
        assert tree(place) == before, what
    # An earlier run: continued with --resume_from_checkpoint or started over with --overwrite, never by mistake.
    error = refused(["--data", str(data), "--output_dir", str(places["a trained run"])], capsys)
    assert "holds an earlier training run (checkpoints, metrics.json, model)" in error
    assert "--resume_from_checkpoint" in error and "--overwrite" in error


def test_overwrite_starts_over_but_keeps_the_users_files(tmp_path):
    """A real (one-step) run over an earlier run that the user also keeps notes in."""
    from helpers import synthetic_samples

    synthetic_samples(tmp_path, 10, seed=3)
    run = precious_places(tmp_path / "places")["a trained run"]
    (run / "notes.txt").write_text("mine")
    args = ["--data", str(tmp_path / "samples"), "--output_dir", str(run), "--max_steps", "1", "--eval_steps", "1",
            "--per_device_train_batch_size", "1", "--batch_size", "1", "--max_val_samples", "1", "--skip_test",
            "--overwrite"]
    try:
        assert train.main(args) == 0
    finally:  # train.py's Ctrl-C handling is installed process-wide
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "checkpoints" / "checkpoint-800").exists()  # the old run's own outputs were replaced
    assert (run / "model" / "model.safetensors").stat().st_size > 1000
    assert "train.py" in read_marker(run) and (run / MARKER).is_file()
    assert not [p for p in Path(run).parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name]


def test_a_new_land_cover_head_on_data_without_per_date_labels_is_refused_before_any_output(tmp_path, capsys):
    from PIL import Image

    from reasoncd.data.folders import prepare_folder

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):  # a binary change data set (BCDD's layout): no land cover per date
        for folder in ("A", "B", "label"):
            (tmp_path / "cd" / split / folder).mkdir(parents=True)
        for name in ("0", "1"):
            for folder in ("A", "B"):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "cd" / split / folder / f"{name}.png")
            label = np.zeros((32, 32), np.uint8)
            label[8:16, 8:16] = 255
            Image.fromarray(label).save(tmp_path / "cd" / split / "label" / f"{name}.png")
    prepare_folder(tmp_path / "cd", "new buildings", tmp_path / "samples")
    error = refused(["--data", str(tmp_path / "samples"), "--output_dir", str(tmp_path / "run"),
                     "--land_cover_head"], capsys)
    assert f"--land_cover_head: no training pair in {tmp_path / 'samples' / 'train'}" in error
    assert "Traceback" not in error and not (tmp_path / "run").exists()
