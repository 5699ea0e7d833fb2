"""A kill at any moment loses at most the steps since the last checkpoint and never leaves a checkpoint that a run
resumes from half-written: SIGKILL a real training, resume it, and compare its weights with an uninterrupted run's."""
import random
import re
import shutil
import signal
import subprocess
import time

import pytest

import train
from reasoncd.training.checkpoints import MANIFEST, STAGING, checkpoint_problem, last_complete_checkpoint
from training_helpers import (SAVE_EVERY, STEPS, differing_tensors, final_weights, reference_training, run_training,
                              start_training, train_args, training_data)


def _kill_during_a_checkpoint_write(args, checkpoints, step: int) -> subprocess.Popen:
    """Starts a training and SIGKILLs it as soon as the checkpoint of `step` is being written."""
    staged = checkpoints / STAGING / f"checkpoint-{step}"
    process = start_training(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not staged.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process


def _kill_after_step(args, step: int) -> subprocess.Popen:
    """Starts a training and SIGKILLs it as soon as its progress bar reports `step` steps done."""
    process = start_training(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = re.compile(rf"\b{step}/{STEPS} \[")
    seen = ""
    while process.poll() is None:
        chunk = process.stderr.read(64)
        if not chunk:
            break
        seen = (seen + chunk)[-400:]
        if done.search(seen):
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    return process


@pytest.mark.parametrize("moment", ["while a checkpoint is written", "at a random step"])
def test_a_killed_run_resumes_to_the_bits_of_an_uninterrupted_one(moment, tmp_path_factory, tmp_path):
    reference = reference_training(tmp_path_factory)
    run = tmp_path / "run"
    args = train_args(training_data(tmp_path_factory), run)
    checkpoints = run / "checkpoints"
    if moment == "while a checkpoint is written":
        step = random.choice(range(2 * SAVE_EVERY, STEPS, SAVE_EVERY))  # not the first: one whole checkpoint exists
        process = _kill_during_a_checkpoint_write(args, checkpoints, step)
        # The checkpoint being written is not under a name a run resumes from, unless it was finished already.
        partial = checkpoints / f"checkpoint-{step}"
        assert not partial.exists() or checkpoint_problem(partial) is None
        expected_start = step - SAVE_EVERY if not partial.exists() else step
    else:
        # A step between two saves: the kill lands in the next step, so exactly the steps since the last save are lost.
        step = random.choice([s for s in range(SAVE_EVERY + 1, STEPS) if s % SAVE_EVERY])
        process = _kill_after_step(args, step)
        expected_start = step - step % SAVE_EVERY
    assert process.returncode == -signal.SIGKILL, f"the training ended before the kill ({moment}, step {step})"
    assert last_complete_checkpoint(checkpoints)[0] == checkpoints / f"checkpoint-{expected_start}"

    resumed = run_training(args + ["--resume_from_checkpoint"])
    assert f"resuming from {checkpoints / f'checkpoint-{expected_start}'}" in resumed.stdout
    assert not differing_tensors(final_weights(reference), final_weights(run)), (moment, step)
    assert not (checkpoints / STAGING).exists()  # what the killed save left was cleared by the next one


def test_a_checkpoint_that_is_not_whole_is_skipped_or_refused_never_loaded(tmp_path_factory, tmp_path, monkeypatch,
                                                                          capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_training(tmp_path_factory), run)
    checkpoints = run / "checkpoints"
    whole = checkpoints / f"checkpoint-{STEPS}"
    # A later checkpoint whose copy stopped half-way, and one whose save never finished (written without a manifest).
    truncated = checkpoints / f"checkpoint-{STEPS + 2}"
    shutil.copytree(whole, truncated)
    (truncated / MANIFEST).write_text((truncated / MANIFEST).read_text().replace(f'"global_step": {STEPS}',
                                                                                 f'"global_step": {STEPS + 2}'))
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    unfinished = checkpoints / f"checkpoint-{STEPS + 4}"
    shutil.copytree(whole, unfinished)
    (unfinished / MANIFEST).unlink()
    (unfinished / "optimizer.pt").unlink()

    chosen, skipped = last_complete_checkpoint(checkpoints)
    assert chosen == whole
    assert "adapter_model.safetensors has" in skipped[truncated.name]
    assert f"no {MANIFEST}: its save did not finish" in skipped[unfinished.name]

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded although the checkpoint to resume from is not whole")

    monkeypatch.setattr(train, "load_split", no_data)
    for bad in (truncated, unfinished):
        assert train.main(train_args(tmp_path, run, "--resume_from_checkpoint", str(bad))[1:]) == 2
        error = capsys.readouterr().err
        assert f"--resume_from_checkpoint {bad}: not a whole checkpoint ({skipped[bad.name]})" in error
