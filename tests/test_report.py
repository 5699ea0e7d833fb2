"""reasoncd.evaluation.report: the sample shown for best / median / worst, report.md for both modes (a dash for a
figure that could not be measured), the printed summary and the files written."""
import json

from reasoncd.evaluation.metrics import METRIC_NAMES
from reasoncd.evaluation.report import (best_median_worst, describe_data, question_use_line, render_report,
                                        summary_lines, write_outputs)

COUNTS = {"tp": 1200, "fp": 30, "fn": 45, "tn": 1_000_000}


def prediction_summary() -> dict:
    return {"mode": "predictions", "pred_dir": "/p", "label_dir": "/l", "threshold": None, "n_samples": 3,
            **{name: 0.5 for name in METRIC_NAMES}, **COUNTS}


def model_summary(mode: str = "generate", measured: bool = True) -> dict:
    """A model-mode summary; without `measured`, the figures a run with one question per pair cannot give."""
    figures = {name: 0.25 for name in METRIC_NAMES}
    return {
        "mode": mode, "model": "/ckpt", "data": "/data/levir", "split": None, "question": "Building", "n_samples": 4,
        **figures, **COUNTS,
        "groups": {"explicit": {**figures, "n_samples": 3}, "absent": {**figures, "f1": None, "n_samples": 1}},
        "text": {"seg_emission_rate": 0.75, "absent_accuracy": None, "n_present": 3, "n_absent": 0},
        "steering": {"accuracy": None, "n_comparisons": 0},
        "question_sensitivity": ({"mean_iou": 0.9, "truth_mean_iou": 0.2, "n_comparisons": 6} if measured else
                                 {"mean_iou": None, "truth_mean_iou": None, "n_comparisons": 0}),
        "counterfactual": ({"f1_original": 0.6, "f1_swapped": 0.55, "f1_drop": 0.05, "n_rows": 4} if measured else
                           {"f1_original": None, "f1_swapped": None, "f1_drop": None, "n_rows": 0}),
        "fidelity_score": 0.4,
    }


def test_best_median_worst_by_iou_with_ties_broken_by_name():
    per_sample = [{"name": "d", "iou": 0.5}, {"name": "a", "iou": 0.9}, {"name": "c", "iou": 0.5},
                  {"name": "b", "iou": 0.1}, {"name": "e", "iou": 0.9}]
    # ascending (iou, name): b, c, d, a, e
    assert best_median_worst(per_sample) == [("best", 4), ("median", 0), ("worst", 3)]
    assert best_median_worst(per_sample[::-1]) == [("best", 0), ("median", 4), ("worst", 1)]
    assert best_median_worst([{"name": "only", "iou": 0.0}]) == [("best", 0), ("median", 0), ("worst", 0)]


def test_describe_data_names_the_source():
    assert describe_data({"data": "/d", "split": "test"}) == "/d (split test)"
    assert describe_data({"data": "/d", "split": None}) == "/d"
    assert describe_data({"data": "/d", "split": None, "question": "Building"}) == \
        "/d (change-detection folder, all pairs, question 'Building')"
    assert describe_data({"data": "/d", "split": "val", "question": "Road"}) == \
        "/d (change-detection folder, split val, question 'Road')"


def test_prediction_mode_report():
    per_sample = [{"name": "x", "iou": 0.8}, {"name": "y", "iou": None}]
    report = render_report(prediction_summary(), per_sample, [("best", 0), ("worst", 1)])
    assert "- data: /p against /l" in report and "- model:" not in report
    assert "| 0.500 | 0.500 |" in report and "TP 1,200, FP 30, FN 45, TN 1,000,000" in report
    assert "## By question kind" not in report and "## Does the mask follow the question?" not in report
    assert "| [best](panels/best.png) | x | 0.800 |" in report and "| [worst](panels/worst.png) | y | – |" in report


def test_model_mode_report_writes_a_dash_for_what_was_not_measured():
    report = render_report(model_summary(), [{"name": "x", "iou": 0.3}], [("best", 0)])
    assert "- model: `/ckpt`" in report
    assert "- data: /data/levir (change-detection folder, all pairs, question 'Building')" in report
    assert "| explicit | 3 | 0.250 |" in report and "| absent | 1 | – | 0.250 |" in report
    assert "| no `[SEG]` where it is absent (absent-CRoI accuracy) | – | 0 samples |" in report
    assert "(steering) | – | 0 comparisons |" in report
    assert "| 0.900 | 6 comparisons |" in report and "| 0.050 | 4 samples |" in report
    assert "Teacher forced" not in report
    assert "Teacher forced: `[SEG]` counts as emitted" in render_report(
        model_summary("teacher_forced"), [{"name": "x", "iou": 0.3}], [("best", 0)])


def test_question_use_line_explains_missing_figures():
    measured = question_use_line(model_summary())
    assert measured == ("question sensitivity 0.900 (truths 0.200, 6 comparisons; 1 = question ignored); "
                        "counterfactual F1 drop 0.050 (F1 0.600 -> 0.550 with [SEG] states swapped, 4 samples; "
                        "about 0 = prompt ignored); fidelity score 0.400")
    missing = question_use_line(model_summary(measured=False))
    assert missing.startswith("question sensitivity – (no pair with two asked changes whose truths differ); ")
    assert "counterfactual F1 drop – (no pair with [SEG] answers for two different truths)" in missing


def test_summary_lines(tmp_path):
    lines = summary_lines(prediction_summary(), tmp_path / "out")
    assert lines == ["predictions, 3 samples: F1 0.500, Precision 0.500, Recall 0.500, OA 0.500, IoU 0.500, "
                     "Kappa 0.500, gIoU 0.500, cIoU 0.500",
                     f"wrote {tmp_path / 'out'}/ (metrics.json, report.md, panels/)"]
    lines = summary_lines(model_summary(), tmp_path)
    assert len(lines) == 3 and lines[1] == question_use_line(model_summary())


def test_write_outputs(tmp_path):
    summary, per_sample, chosen = prediction_summary(), [{"name": "x", "iou": 0.8}], [("best", 0)]
    write_outputs(tmp_path, summary, per_sample, chosen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "per_sample.json", "report.md"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary
    assert json.loads((tmp_path / "per_sample.json").read_text()) == per_sample
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == render_report(summary, per_sample, chosen)
