"""Training: sample validation, collator, feature cache, learning, resume, train.py."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reasoncd.build import build_tiny
from reasoncd.training.feature_cache import FrozenFeatureCache, image_keys
from reasoncd.training.lora import apply_lora
from reasoncd.data.samples import SEG, SampleError, load_split
from reasoncd.training.dataset import ReasonCDCollator
from reasoncd.data.second import convert_second
from reasoncd.data.synthetic import generate_second_layout

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("second")
    generate_second_layout(root / "raw", 20, seed=3, progress=False)
    convert_second(root / "raw", root / "samples", seed=3, progress=False)
    return root / "samples"


def _write_sample(folder: Path, name: str, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(fields))
    return path


def test_collator_masks_everything_but_the_answer(tiny, samples_dir):
    model, processor = tiny
    samples = load_split(samples_dir, "train")
    with_seg = next(s for s in samples if SEG in s["answer"])
    absent = next(s for s in samples if SEG not in s["answer"])
    batch = ReasonCDCollator(processor)([with_seg, absent])
    ids, labels = batch["input_ids"], batch["labels"]
    for row, sample in enumerate([with_seg, absent]):
        answer = processor.tokenizer.encode(sample["answer"] + processor.tokenizer.eos_token, add_special_tokens=False)
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == answer  # exactly the answer tokens and </s>
        assert (ids[row][labels[row] != -100] == labels[row][labels[row] != -100]).all()
        # image placeholders, prompt and padding are never targets
        image_slots = (ids[row] == model.config.t1_token_id) | (ids[row] == model.config.t2_token_id)
        assert image_slots.sum() == 2 * model.config.image_seq_length
        assert (labels[row][image_slots] == -100).all()
        assert (labels[row][batch["attention_mask"][row] == 0] == -100).all()
    # the mask is carried for the [SEG] sample and empty for the absent one
    assert batch["masks"].shape == (2, 256, 256)
    assert batch["masks"][0].sum() > 0 and batch["masks"][1].sum() == 0


def test_split_validation_names_file_and_field(tmp_path):
    good_image = tmp_path / "a.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good_image)
    fields = dict(img1_path="../a.png", img2_path="../a.png", mask_path="../a.png", question="q", answer="It's [SEG].")
    _write_sample(tmp_path / "train", "ok", **fields)
    bad = _write_sample(tmp_path / "train", "no_answer", **{k: v for k, v in fields.items() if k != "answer"})
    gone = _write_sample(tmp_path / "train", "missing_file", **{**fields, "mask_path": "../nowhere.png"})
    with pytest.raises(SampleError) as error:
        load_split(tmp_path, "train")
    message = str(error.value)
    assert f"{bad}: field 'answer' is missing" in message
    assert f"{gone}: field 'mask_path' points at a missing file" in message
    (tmp_path / "val").mkdir()
    with pytest.raises(SampleError, match="empty"):
        load_split(tmp_path, "val")


def test_feature_cache_hits_and_matches_the_encoders(tiny, samples_dir, tmp_path):
    model, processor = tiny
    model.eval()
    first_of_pair = {}
    for sample in load_split(samples_dir, "train"):
        first_of_pair.setdefault(sample["pair_id"], sample)
    samples = list(first_of_pair.values())[:3]  # three different pairs: six images
    batch = ReasonCDCollator(processor)(samples)
    keys = image_keys(batch)
    cache = FrozenFeatureCache(model, tmp_path / "cache")
    first = cache.frozen_features(model, batch, keys)
    assert (cache.hits, cache.misses) == (0, 6)
    second = cache.frozen_features(model, batch, keys)
    assert cache.hits == 6
    with torch.no_grad():
        direct = model.encode_frozen(batch["pixel_values_t1"], batch["pixel_values_t2"],
                                     batch["sam_pixel_values_t1"], batch["sam_pixel_values_t2"])
    for name in ("vision_features_t1", "vision_features_t2", "sam_features_t1", "sam_features_t2"):
        torch.testing.assert_close(second[name], direct[name])
        torch.testing.assert_close(first[name], direct[name])
    # a new cache over the same folder reads the disk entries; changing an encoder changes the namespace
    assert FrozenFeatureCache(model, tmp_path / "cache").fingerprint == cache.fingerprint
    with torch.no_grad():
        model.sam_image_encoder.neck[0].weight.mul_(1.01)
    assert FrozenFeatureCache(model, tmp_path / "cache").fingerprint != cache.fingerprint
    with torch.no_grad():
        model.sam_image_encoder.neck[0].weight.div_(1.01)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(samples_dir):
    torch.manual_seed(0)
    model, processor = build_tiny(seed=1)
    samples = [s for s in load_split(samples_dir, "train") if SEG in s["answer"]][:4]
    batch = ReasonCDCollator(processor)(samples)
    peft_model = apply_lora(model, rank=8, alpha=16, full_embeddings=True)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model.train()
    losses = []
    for _ in range(8):
        out = peft_model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


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


def test_training_curves_show_whether_masks_follow_the_question(tmp_path, monkeypatch):
    from reasoncd.evaluation import figures

    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path, tight=True: drawn.setdefault("figure", fig))
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5, "eval_f1": 0.3, "eval_steering": 0.6,
               "eval_absent_accuracy": 0.9, "eval_question_sensitivity": 0.95, "eval_counterfactual_f1_drop": -0.02,
               "eval_fidelity_score": 0.46}]
    figures.training_curves(tmp_path / "curves.png", history)
    question_use = drawn["figure"].axes[3]
    labels = {line.get_label() for line in question_use.lines}
    assert labels == {"steering", "absent-CRoI accuracy", "question sensitivity (1 = ignored)",
                      "counterfactual F1 drop", "fidelity score (picks the best checkpoint)"}
    assert question_use.get_ylim()[0] < -0.02  # a negative drop stays in view


def test_train_script_writes_a_loadable_model_and_metrics(tmp_path):
    result = _train(["--max_steps", "30", "--output_dir", str(tmp_path / "run"), "--train_eval_samples", "8"],
                    cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
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
