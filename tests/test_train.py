"""train.py: an interrupted run resumes from its saved step; the script writes a model that loads, its metrics and,
on request, the presence threshold placed on the validation split (refused where it cannot be placed)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _train(args: list[str], cwd: Path, extra_env: dict | None = None, launcher: list[str] | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra_env or {})}
    command = (launcher or [sys.executable]) + [str(REPO / "train.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_resume_continues_from_the_saved_step(samples_dir, tmp_path):
    import train

    common = ["--data", str(samples_dir), "--output_dir", str(tmp_path / "run"), "--per_device_train_batch_size", "2",
              "--batch_size", "2", "--eval_steps", "2", "--skip_test", "--max_val_samples", "4",
              "--full_embeddings"]
    # Interrupt during step 3 (SIGINT, as Ctrl-C): step 3 completes, is saved, and training stops.
    original = train.SaveOnInterrupt.on_step_end

    def interrupt_at_step_three(self, args, state, control, **kwargs):
        if state.global_step == 3 and not self.requested:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, args, state, control, **kwargs)

    train.SaveOnInterrupt.on_step_end = interrupt_at_step_three
    try:
        assert train.main(common + ["--max_steps", "6"]) == 130
    finally:
        train.SaveOnInterrupt.on_step_end = original
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "checkpoint-3" in saved  # the interrupted step was not lost
    assert train.main(common + ["--max_steps", "6", "--resume_from_checkpoint"]) == 0
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 6
    assert steps == sorted(set(steps)) and steps[-1] == 6  # continued, not restarted
    # validation reports whether masks follow the question, and the best checkpoint is chosen by the fidelity score
    evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4, 6]
    for entry in evaluations:
        # the first four validation samples: one pair, four present changes with three different truths
        for key in ("eval_f1", "eval_steering", "eval_seg_emission_rate", "eval_question_sensitivity",
                    "eval_counterfactual_f1_drop"):
            assert key in entry, key
        terms = [entry["eval_f1"], entry["eval_steering"], 1 - entry["eval_question_sensitivity"]]
        assert entry["eval_fidelity_score"] == pytest.approx(np.mean(terms))  # no absent question to score
    assert state["best_metric"] == max(entry["eval_fidelity_score"] for entry in evaluations)
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()



def test_train_script_writes_a_loadable_model_and_metrics(tmp_path):
    result = _train(["--max_steps", "30", "--output_dir", str(tmp_path / "run"), "--train_eval_samples", "8",
                     "--calibrate_presence"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # the presence threshold placed on the validation split is the saved model's, and no worse there than 0
    calibration = metrics["presence_calibration"]
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["presence_threshold"] == calibration["threshold"]
    assert 0 < calibration["absent_questions"] < calibration["questions"]
    assert (calibration["at_threshold"]["balanced_accuracy"]
            >= calibration["at_head_threshold"]["balanced_accuracy"])
    assert (tmp_path / "run" / "presence_calibration.png").stat().st_size > 10_000
    # the training split's sample beside the test split: whole pairs, scored alike
    assert metrics["train_split"]["n_samples"] >= 8 and "order" in metrics["train_split"]
    assert "| steering |" in (tmp_path / "run" / "report.md").read_text()
    for key in ("f1", "precision", "recall", "oa", "iou", "giou", "ciou"):
        assert 0.0 <= metrics[key] <= 1.0
    assert -1.0 <= metrics["kappa"] <= 1.0  # below chance is possible after 30 steps
    assert {"explicit", "absent"} <= set(metrics["groups"])
    assert (tmp_path / "run" / "samples.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    from transformers import AutoModel, AutoProcessor

    model, info = AutoModel.from_pretrained(tmp_path / "run" / "model", trust_remote_code=True,
                                            output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    processor = AutoProcessor.from_pretrained(tmp_path / "run" / "model", trust_remote_code=True)
    image = np.full((64, 64, 3), 120, np.uint8)
    out = model.generate(**processor(images_t1=image, images_t2=image, text="new buildings"), max_new_tokens=4)
    assert processor.post_process_generation(out)[0]["mask"].shape == (64, 64)


def test_calibrating_the_presence_decision_is_refused_before_any_output(samples_dir, tmp_path):
    run = tmp_path / "run"
    # the small set's validation split asks only about present changes: nothing to place a threshold between
    result = _train(["--data", str(samples_dir), "--output_dir", str(run), "--calibrate_presence"], cwd=tmp_path)
    assert result.returncode == 2
    assert f"--calibrate_presence, {samples_dir / 'val'}" in result.stderr and "none of them absent" in result.stderr
    assert not run.exists()
    # a model without a presence decision has nothing to calibrate (the quickstart's data: absent questions in val)
    result = _train(["--output_dir", str(run), "--calibrate_presence", "--no-presence_head", "--max_steps", "1"],
                    cwd=tmp_path)
    assert result.returncode == 2
    assert "--calibrate_presence" in result.stderr and "presence_head" in result.stderr
    assert not run.exists()
