"""eval.py: scoring saved masks against known figures, a tiny checkpoint on real pairs end to end, input errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, jaccard_score, precision_score, recall_score

import build_reasoncd
import eval as eval_script
from reasoncd.data.folders import prepare_folder
from reasoncd.evaluation.scoring import GROUPS
from reasoncd.evaluation.metrics import METRIC_NAMES

SCRIPT = Path(eval_script.__file__)
FAST = ["--max_new_tokens", "4"]  # a random model never stops on its own: keep its answers short


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "checkpoint"
    assert build_reasoncd.main(["--preset", "tiny", "--output_dir", str(folder)]) == 0
    return folder


def assert_nothing_written(output_dir: Path):
    assert not output_dir.exists()
    assert not [p for p in output_dir.parent.iterdir() if p.name.startswith(f".{output_dir.name}.")]


def png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def assert_outputs(out: Path, n_predictions: int, size: tuple[int, int] | None):
    metrics = json.loads((out / "metrics.json").read_text())
    for name in METRIC_NAMES:
        # kappa is the one figure that goes below 0 (worse than chance), which a random model can be
        low = -1.0 if name == "kappa" else 0.0
        assert low <= metrics[name] <= 1.0, name
    assert metrics["n_samples"] == n_predictions
    report = (out / "report.md").read_text()
    assert "| F1 | Precision | Recall | OA | IoU | Kappa | gIoU | cIoU |" in report
    assert sorted(p.name for p in (out / "panels").iterdir()) == ["best.png", "median.png", "worst.png"]
    if size:
        predictions = sorted((out / "predictions").glob("*.png"))
        assert len(predictions) == n_predictions
        for path in predictions:
            mask = np.asarray(Image.open(path))
            assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
    return metrics


# ------------------------------------------------------------------------------------------------ prediction mode


@pytest.fixture
def masks(tmp_path) -> tuple[Path, Path, list[np.ndarray], list[np.ndarray]]:
    """Three pairs in the formats methods save: 0/255 PNG, probability-like 8-bit against a TIFF label, and an
    empty prediction of an empty label (another size), with the binary truths and predictions they stand for."""
    rng = np.random.default_rng(0)
    truth_a = rng.random((32, 32)) < 0.3
    pred_a = truth_a ^ (rng.random((32, 32)) < 0.1)
    truth_b = np.zeros((32, 32), bool)
    truth_b[4:20, 8:30] = True
    probability_b = np.clip(rng.normal(60, 30, (32, 32)) + 120 * truth_b, 0, 255).astype(np.uint8)
    probability_b[0, :3] = (127, 128, 254)  # right at the threshold
    truth_c, pred_c = np.zeros((16, 24), bool), np.zeros((16, 24), bool)
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "label"
    png(pred_dir / "a.png", pred_a.astype(np.uint8) * 255)
    png(label_dir / "a.png", truth_a.astype(np.uint8) * 255)
    png(pred_dir / "b.png", probability_b)
    label_dir.mkdir(exist_ok=True)
    tifffile.imwrite(label_dir / "b.tif", truth_b.astype(np.uint8))
    png(pred_dir / "c.png", pred_c.astype(np.uint8))
    png(label_dir / "c.png", truth_c.astype(np.uint8))
    return pred_dir, label_dir, [truth_a, truth_b, truth_c], [pred_a, probability_b > 127, pred_c]


def test_prediction_mode_gives_the_known_figures(masks, tmp_path):
    pred_dir, label_dir, truths, preds = masks
    out = tmp_path / "out"
    assert eval_script.main(["--pred_dir", str(pred_dir), "--label_dir", str(label_dir), "--threshold", "127",
                             "--output_dir", str(out)]) == 0
    metrics = assert_outputs(out, 3, size=None)
    y_true = np.concatenate([t.ravel() for t in truths])
    y_pred = np.concatenate([p.ravel() for p in preds])
    expected = {
        "f1": f1_score(y_true, y_pred), "precision": precision_score(y_true, y_pred),
        "recall": recall_score(y_true, y_pred), "oa": accuracy_score(y_true, y_pred),
        "iou": jaccard_score(y_true, y_pred), "kappa": cohen_kappa_score(y_true, y_pred),
        # per-sample IoU, an empty prediction of an empty label counting 1 (LISA's gIoU)
        "giou": np.mean([jaccard_score(t.ravel(), p.ravel()) for t, p in zip(truths[:2], preds[:2])] + [1.0]),
        "ciou": jaccard_score(y_true, y_pred),
        "tp": int((y_true & y_pred).sum()), "fp": int((~y_true & y_pred).sum()),
        "fn": int((y_true & ~y_pred).sum()), "tn": int((~y_true & ~y_pred).sum()),
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert metrics["mode"] == "predictions" and metrics["n_samples"] == 3
    per_sample = {row["name"]: row["iou"] for row in json.loads((out / "per_sample.json").read_text())}
    assert per_sample["c"] == 1.0
    assert "groups" not in metrics and "[best](panels/best.png)" in (out / "report.md").read_text()


def test_prediction_mode_needs_a_threshold_for_probability_maps(masks, tmp_path, capsys):
    pred_dir, label_dir, _, _ = masks
    out = tmp_path / "out"
    assert eval_script.main(["--pred_dir", str(pred_dir), "--label_dir", str(label_dir),
                             "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(pred_dir / "b.png") in error and "--threshold" in error
    assert_nothing_written(out)


def test_prediction_mode_panels_show_the_images_when_given(masks, tmp_path):
    pred_dir, label_dir, truths, _ = masks
    for name, truth in zip("abc", truths):
        png(tmp_path / "t1" / f"{name}.jpg", np.full((*truth.shape, 3), 90, np.uint8))
        png(tmp_path / "t2" / f"{name}.png", np.full((*truth.shape, 3), 160, np.uint8))
    out = tmp_path / "out"
    assert eval_script.main(["--pred_dir", str(pred_dir), "--label_dir", str(label_dir), "--threshold", "127",
                             "--t1_dir", str(tmp_path / "t1"), "--t2_dir", str(tmp_path / "t2"),
                             "--output_dir", str(out)]) == 0
    assert len(list((out / "panels").glob("*.png"))) == 3


def test_unmatched_names_are_listed_and_nothing_is_written(masks, tmp_path):
    pred_dir, label_dir, _, _ = masks
    png(pred_dir / "only_predicted.png", np.zeros((32, 32), np.uint8))
    (label_dir / "a.png").rename(label_dir / "a_renamed.png")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(SCRIPT), "--pred_dir", str(pred_dir), "--label_dir", str(label_dir),
                             "--output_dir", str(out)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "3 names are not in every folder" in result.stderr
    for line in (f"a: not in --label_dir {label_dir}", f"a_renamed: not in --pred_dir {pred_dir}",
                 f"only_predicted: not in --label_dir {label_dir}"):
        assert line in result.stderr
    assert_nothing_written(out)


def test_a_size_mismatch_names_both_files(masks, tmp_path, capsys):
    pred_dir, label_dir, _, _ = masks
    png(pred_dir / "a.png", np.zeros((32, 31), np.uint8))
    out = tmp_path / "out"
    assert eval_script.main(["--pred_dir", str(pred_dir), "--label_dir", str(label_dir), "--threshold", "127",
                             "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{pred_dir / 'a.png'} 32 x 31, {label_dir / 'a.png'} 32 x 32" in error
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------------- model mode


def test_model_mode_on_a_levir_folder(checkpoint, realcd, tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_script.main(["--model", str(checkpoint), "--data", str(realcd / "LEVIR-CD" / "ChangeFormer"),
                             "--question", "Building", "--max_samples", "3", "--output_dir", str(out), *FAST]) == 0
    # one question per pair: nothing to compare, and the summary says so rather than leaving the figures out
    printed = capsys.readouterr().out
    assert "question sensitivity – (no pair with two asked changes" in printed
    assert "counterfactual F1 drop – (no pair with [SEG] answers for two different truths)" in printed
    metrics = assert_outputs(out, 3, size=(256, 256))
    assert metrics["mode"] == "generate" and metrics["question"] == "Building"
    assert metrics["model"] == str(checkpoint.resolve())
    # the first three pairs by name, each prediction named after its pair, so prediction mode can compare methods
    assert sorted(p.stem for p in (out / "predictions").iterdir()) == [
        "test_102_0512_0000", "test_121_0768_0256", "test_2_0000_0000"]
    assert set(metrics["groups"]) <= set(GROUPS) and sum(g["n_samples"] for g in metrics["groups"].values()) == 3
    for group in metrics["groups"].values():
        assert all(0 <= group[name] <= 1 for name in METRIC_NAMES if name != "kappa")
    assert set(metrics["text"]) == {"seg_emission_rate", "absent_accuracy", "n_present", "n_absent",
                                    "answer_map_agreement"}
    assert "accuracy" in metrics["steering"]
    assert metrics["question_sensitivity"] == {"mean_iou": None, "truth_mean_iou": None, "n_comparisons": 0}
    assert metrics["counterfactual"]["n_rows"] == 0 and 0 <= metrics["fidelity_score"] <= 1
    report = (out / "report.md").read_text()
    assert "## By question kind" in report and "| explicit | 3 |" in report and "`[SEG]` emitted" in report


def test_teacher_forced_on_whu_prev_curr_matches_prediction_mode(checkpoint, realcd, tmp_path):
    whu = realcd / "WHU-CD" / "UCD-SCM"
    out = tmp_path / "out"
    assert eval_script.main(["--model", str(checkpoint), "--data", str(whu), "--teacher_forced",
                             "--max_samples", "2", "--batch_size", "2", "--output_dir", str(out)]) == 0
    metrics = assert_outputs(out, 2, size=(1024, 1024))
    assert metrics["mode"] == "teacher_forced" and metrics["text"]["n_present"] == 2
    # the saved predictions, scored as another method's would be, give the same confusion matrix
    labels = tmp_path / "labels"
    labels.mkdir()
    for path in (out / "predictions").iterdir():
        shutil.copy(whu / "label" / path.name, labels / path.name)
    rescored = tmp_path / "rescored"
    assert eval_script.main(["--pred_dir", str(out / "predictions"), "--label_dir", str(labels),
                             "--output_dir", str(rescored)]) == 0
    again = json.loads((rescored / "metrics.json").read_text())
    assert [again[k] for k in ("tp", "fp", "fn", "tn")] == [metrics[k] for k in ("tp", "fp", "fn", "tn")]


def test_model_mode_on_a_json_split(checkpoint, realcd, tmp_path):
    samples = tmp_path / "samples"
    prepare_folder(realcd / "LEVIR-CD" / "ChangeFormer", "Building", samples)
    out = tmp_path / "out"
    assert eval_script.main(["--model", str(checkpoint), "--data", str(samples), "--split", "val",
                             "--teacher_forced", "--output_dir", str(out)]) == 0
    metrics = assert_outputs(out, 1, size=(256, 256))
    assert metrics["split"] == "val" and "question" not in metrics


@pytest.fixture(scope="module")
def second_samples(tmp_path_factory) -> Path:
    """Synthetic SECOND-style pairs: several questions per pair, about changes with different truths."""
    from helpers import synthetic_samples

    return synthetic_samples(tmp_path_factory.mktemp("second"), 6, seed=3)


@pytest.mark.parametrize("teacher_forced", [False, True])
def test_model_mode_reports_whether_the_mask_follows_the_question(tmp_path_factory, second_samples, tmp_path,
                                                                 capsys, teacher_forced):
    from helpers import seg_forcing_checkpoint

    out = tmp_path / "out"
    mode = ["--teacher_forced"] if teacher_forced else ["--max_new_tokens", "2"]
    assert eval_script.main(["--model", str(seg_forcing_checkpoint(tmp_path_factory)), "--data", str(second_samples),
                             "--split", "train", "--output_dir", str(out), *mode]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sensitivity, counterfactual = metrics["question_sensitivity"], metrics["counterfactual"]
    assert sensitivity["n_comparisons"] > 0 and 0 <= sensitivity["mean_iou"] <= 1
    assert counterfactual["n_rows"] > 0
    assert counterfactual["f1_drop"] == pytest.approx(counterfactual["f1_original"] - counterfactual["f1_swapped"])
    # this model says [SEG] after any prompt, and teacher forcing reads that off its logits too
    assert metrics["text"]["seg_emission_rate"] == 1.0 and metrics["text"]["absent_accuracy"] == 0.0
    assert metrics["presence_threshold"] == 0.0  # the decision these figures were read at
    expected = np.mean([metrics["f1"], metrics["steering"]["accuracy"], 0.0, 1 - sensitivity["mean_iou"]])
    assert metrics["fidelity_score"] == pytest.approx(expected)
    report = (out / "report.md").read_text()
    assert "## Does the mask follow the question?" in report
    assert f"| {sensitivity['mean_iou']:.3f} | {sensitivity['n_comparisons']} comparisons |" in report
    assert f"| {counterfactual['f1_drop']:.3f} | {counterfactual['n_rows']} samples |" in report
    printed = capsys.readouterr().out
    assert f"question sensitivity {sensitivity['mean_iou']:.3f}" in printed
    assert f"counterfactual F1 drop {counterfactual['f1_drop']:.3f}" in printed


def test_model_mode_input_errors(checkpoint, realcd, tmp_path, capsys):
    out = tmp_path / "out"
    levir = str(realcd / "LEVIR-CD" / "ChangeFormer")

    def fails(*args) -> str:
        assert eval_script.main([*args, "--output_dir", str(out)]) == 2
        assert_nothing_written(out)
        return capsys.readouterr().err

    assert "no such folder" in fails("--model", str(tmp_path / "nowhere"), "--data", levir)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(checkpoint, incomplete)
    (incomplete / "model.safetensors").unlink()
    assert "missing model.safetensors" in fails("--model", str(incomplete), "--data", levir)
    (tmp_path / "empty").mkdir()
    assert "no JSON samples" in fails("--model", str(checkpoint), "--data", str(tmp_path / "empty"))
    (tmp_path / "json" / "train").mkdir(parents=True)
    (tmp_path / "json" / "train" / "x.json").write_text("{}")
    assert "samples are in train (choose one with --split)" in fails(
        "--model", str(checkpoint), "--data", str(tmp_path / "json"))
    assert "field 'img1_path' is missing" in fails(
        "--model", str(checkpoint), "--data", str(tmp_path / "json"), "--split", "train")
    bisam = str(realcd / "WHU-CD" / "BiSAM-CD")  # a change-detection folder with only a test/ split
    assert "no val/ folder; its splits are test" in fails("--model", str(checkpoint), "--data", bisam, "--split", "val")


# ------------------------------------------------------------------------------------- what eval.py never touches


def test_refuses_folders_it_did_not_write_and_keeps_them_byte_for_byte(masks, tmp_path, capsys):
    from helpers import precious_places, tree

    pred_dir, label_dir, _, _ = masks
    scoring = ["--pred_dir", str(pred_dir), "--label_dir", str(label_dir), "--threshold", "127"]
    places = precious_places(tmp_path / "places")
    # The input's own folder: the one holding --pred_dir and --label_dir, and --pred_dir itself.
    places.update({"the inputs' folder": tmp_path, "the input folder": pred_dir})
    for what, place in places.items():
        before = tree(place)
        assert eval_script.main([*scoring, "--output_dir", str(place)]) == 2, what
        error = capsys.readouterr().err
        assert error.startswith("eval.py: error: ") and str(place) in error, (what, error)
        assert tree(place) == before, what
    # The training run being evaluated (the natural slip): refused before the model is even checked.
    run = places["a trained run"]
    before = tree(run)
    assert eval_script.main(["--model", str(run / "model"), "--data", str(tmp_path), "--output_dir", str(run)]) == 2
    assert "holds this command's input" in capsys.readouterr().err and tree(run) == before

    # --overwrite writes eval.py's outputs beside the user's file, which stays as it was; a rerun replaces them.
    user = places["a folder holding a user's file"]
    for _ in range(2):
        assert eval_script.main([*scoring, "--output_dir", str(user), "--overwrite"]) == 0
    assert (user / "notes.txt").read_text() == "a week of field notes\n"
    assert {"metrics.json", "report.md", "per_sample.json", "panels"} <= {p.name for p in user.iterdir()}
    # A folder eval.py wrote before is its own to replace, without --overwrite.
    assert eval_script.main([*scoring, "--output_dir", str(tmp_path / "eval")]) == 0
    assert eval_script.main([*scoring, "--output_dir", str(tmp_path / "eval")]) == 0


def test_a_damaged_checkpoint_is_named(checkpoint, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    weights = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    out = tmp_path / "out"
    assert eval_script.main(["--model", str(damaged), "--data", str(tmp_path), "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{damaged / 'model.safetensors'}: not a readable safetensors file" in error
    assert_nothing_written(out)


@pytest.mark.parametrize("teacher_forced", [False, True])
def test_model_mode_reads_the_presence_decision_at_the_threshold_given(tmp_path_factory, second_samples, tmp_path,
                                                                      teacher_forced):
    from helpers import seg_forcing_checkpoint

    out = tmp_path / "out"
    mode = ["--teacher_forced"] if teacher_forced else ["--max_new_tokens", "2"]
    # the model above says [SEG] to every question (emission 1.0); above every logit, to none
    assert eval_script.main(["--model", str(seg_forcing_checkpoint(tmp_path_factory)), "--data", str(second_samples),
                             "--split", "train", "--output_dir", str(out), "--presence_threshold", "1e6",
                             *mode]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["presence_threshold"] == 1e6
    assert metrics["text"]["seg_emission_rate"] == 0.0 and metrics["text"]["absent_accuracy"] == 1.0
