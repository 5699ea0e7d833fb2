"""reasoncd.publishing.writers: the handler a full export needs is found beside the remote code, and its absence stops
the export before anything is written."""
from pathlib import Path

import pytest

from reasoncd.publishing import writers
from reasoncd.publishing.export import export_model
from reasoncd.publishing.source import ExportError


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
