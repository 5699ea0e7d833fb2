"""reasoncd.publishing: which model --run names and which metrics describe it, the checkpoint an adapter is taken
from, the metrics read for the card and how the card shows them, and the handler a full export needs."""
import json
from pathlib import Path

import pytest

from configuration_reasoncd import ReasonCDConfig
from reasoncd.publishing import writers
from reasoncd.publishing.card import metrics_section, random_preset, read_metrics
from reasoncd.publishing.export import export_model
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


def test_read_metrics(tmp_path):
    assert read_metrics(None) is None
    with pytest.raises(ExportError, match="no such file"):
        read_metrics(tmp_path / "missing.json")
    path = tmp_path / "metrics.json"
    path.write_text("{'f1': 0.5}")
    with pytest.raises(ExportError, match=f"--metrics {path}: not JSON"):
        read_metrics(path)
    path.write_text(json.dumps({"loss": 0.1}))
    with pytest.raises(ExportError, match="none of f1, precision"):
        read_metrics(path)
    path.write_text(json.dumps({"f1": 0.5, "loss": 0.1}))
    assert read_metrics(path) == {"f1": 0.5, "loss": 0.1}


def test_metrics_section():
    text = metrics_section({"f1": 0.61234, "iou": 0.5, "n_samples": 4,
                            "groups": {"absent": {"f1": 0.0, "iou": 0.0, "giou": 1.0, "n_samples": 2}},
                            "text": {"seg_emission_rate": 0.5, "absent_accuracy": None}})
    assert "| 0.6123 |  |  |  | 0.5000 |" in text  # figures not given stay empty
    assert "| absent | 2 | 0.0000 | 0.0000 | 1.0000 |" in text
    assert "`[SEG]` emitted for 50.0% of the questions" in text and "Absent changes recognised" not in text


def test_random_preset_is_recognised_by_its_sizes():
    assert random_preset(ReasonCDConfig.from_preset("tiny")) == "tiny"
    assert random_preset(ReasonCDConfig.from_preset("reasoncd-7b")) is None


def test_a_missing_handler_stops_the_full_export_before_anything_is_written(tmp_path, monkeypatch):
    import pipeline_reasoncd

    assert writers.handler_file() == Path(pipeline_reasoncd.__file__).resolve().parent / "handler.py"
    elsewhere = tmp_path / "code"
    elsewhere.mkdir()
    monkeypatch.setattr(pipeline_reasoncd, "__file__", str(elsewhere / "pipeline_reasoncd.py"))
    with pytest.raises(ExportError, match=f"{elsewhere / 'handler.py'}: the Inference Endpoints handler is missing"):
        writers.handler_file()
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # never loaded: the handler is checked first
    with pytest.raises(ExportError, match="handler is missing"):
        export_model(run=model, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
