"""reasoncd.publishing.card: the metrics read for the model card, how the card shows them, and the preset a random
model is recognised as."""
import json

import pytest

from configuration_reasoncd import ReasonCDConfig
from reasoncd.publishing.card import metrics_section, random_preset, read_metrics
from reasoncd.publishing.source import ExportError


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


def test_metrics_section_reports_questions_about_several_changes():
    multi = {"n_questions": 36, "target_f1": 0.41234, "t_acc": 0.5, "n_acc": 0.75, "count_accuracy": 0.25}
    text = metrics_section({"f1": 0.6, "multi_target": multi})
    assert ("Questions about several changes (36): per-target F1 0.4123 (each mask matched to its truth by the words "
            "naming it), 50.0% of the present changes found, 75.0% of the absent ones refused, 25.0% of the answers "
            "with the right number of masks.") in text
    assert "several changes" not in metrics_section({"f1": 0.6, "multi_target": {"n_questions": 0}})


def test_random_preset_is_recognised_by_its_sizes():
    assert random_preset(ReasonCDConfig.from_preset("tiny")) == "tiny"
    assert random_preset(ReasonCDConfig.from_preset("reasoncd-7b")) is None
