"""reasoncd.publishing.source: which model --run names and which metrics describe it, the checkpoint an adapter is
taken from, and the base model it is merged onto."""
import json
from pathlib import Path

import pytest

from reasoncd.publishing.source import ExportError, base_model_path, best_checkpoint, resolve_source


def checkpoint(run: Path, step: int) -> Path:
    folder = run / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_best_checkpoint_by_the_recorded_name_else_the_last_step(tmp_path):
    run = tmp_path / "run"
    second, tenth = checkpoint(run, 2), checkpoint(run, 10)
    (run / "checkpoints" / "checkpoint-11").mkdir()  # no adapter in it: not a checkpoint to export
    assert best_checkpoint(run) == tenth  # by step, not by name ("checkpoint-10" < "checkpoint-2")
    # Recorded where the run was at training time: only the folder name counts.
    state = {"best_model_checkpoint": "/elsewhere/old-run/checkpoints/checkpoint-2"}
    (tenth / "trainer_state.json").write_text(json.dumps(state))
    assert best_checkpoint(run) == second
    (tenth / "trainer_state.json").write_text(json.dumps({"best_model_checkpoint": "/x/checkpoint-7"}))
    assert best_checkpoint(run) == tenth
    with pytest.raises(ExportError, match="no PEFT checkpoint in"):
        best_checkpoint(tmp_path / "empty")


def test_resolve_source_kinds_and_their_metrics(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    step = checkpoint(run, 4)
    source = resolve_source(run, adapter_only=False)
    assert (source.kind, source.path, source.metrics) == ("merged", run / "model", None)
    (run / "metrics.json").write_text("{}")
    assert resolve_source(run, adapter_only=False).metrics == run / "metrics.json"
    # RUN/model given directly: RUN/metrics.json describes it.
    source = resolve_source(run / "model", adapter_only=False)
    assert (source.kind, source.path, source.metrics) == ("merged", run / "model", run / "metrics.json")
    source = resolve_source(run, adapter_only=True)
    assert (source.kind, source.path, source.run_model) == ("adapter", step, run / "model")
    source = resolve_source(step, adapter_only=False)  # a checkpoint inside a run: the run's model/ is beside it
    assert (source.kind, source.path, source.run_model) == ("adapter", step, run / "model")
    with pytest.raises(ExportError, match="neither a train.py run folder"):
        resolve_source(run / "checkpoints", adapter_only=False)
    with pytest.raises(ExportError, match="--adapter_only needs a PEFT checkpoint-N folder"):
        resolve_source(run / "model", adapter_only=True)


def test_base_model_path(tmp_path):
    step = checkpoint(tmp_path / "run", 1)
    source = resolve_source(step, adapter_only=False)
    (step / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ExportError, match=f"base model {tmp_path / 'gone'}: no such folder"):
        base_model_path(source, None)
    assert base_model_path(source, tmp_path) == tmp_path  # --base_model wins over the recorded path
