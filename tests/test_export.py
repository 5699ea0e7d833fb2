"""export.py: what a Hub user gets loads with the exported code alone (AutoModel, AutoProcessor, pipeline) and
answers as the model did before export; the card, the adapter round trip and an offline push."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import export
from reasoncd.build import save_checkpoint
from modeling_reasoncd import ReasonCDForChangeDetection
from reasoncd.loading import predict
from processing_reasoncd import ReasonCDProcessor
from helpers import REMOTE_CODE, image_pair, precious_places, seg_tiny, tree
from reasoncd.training.lora import apply_lora
from reasoncd.io import MARKER
from reasoncd.publishing.card import base_models

QUESTIONS = ["new buildings", "changes caused by heavy rainfall, and explain why"]
MAX_NEW_TOKENS = 4
REMOTE_CODE_FILES = {f"{name}.py" for name in REMOTE_CODE}
FULL_EXPORT = {"README.md", "chat_template.jinja", "config.json", "generation_config.json", "handler.py",
               "model.safetensors", "processor_config.json", "requirements.txt", "tokenizer.json",
               "tokenizer_config.json", *REMOTE_CODE_FILES}
# An adapter export carries the processor's code and what it imports; the model's code comes with the base model.
ADAPTER_EXPORT = {"README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                  "configuration_reasoncd.py", "geometry_reasoncd.py", "processing_reasoncd.py",
                  "processor_config.json", "tokenizer.json", "tokenizer_config.json"}
METRICS = {"f1": 0.61, "precision": 0.58, "recall": 0.64, "oa": 0.95, "iou": 0.44, "kappa": 0.58, "giou": 0.5,
           "ciou": 0.44, "n_samples": 12, "groups": {"explicit": {"f1": 0.7, "iou": 0.54, "giou": 0.6, "n_samples": 6}}}

# Runs with `python -I` in a folder outside the repository, with the repository's modules blocked (an editable
# install would otherwise put them on the path): only the exported files can provide the code.
LOAD_EXPORT = r"""
import json, sys

class BlockRepository:
    NAMES = (*json.loads(sys.argv[6]), "reasoncd")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.NAMES:
            raise ImportError(f"{name} must come from the export, not the repository")
        return None

sys.meta_path.insert(0, BlockRepository())
import numpy as np
from transformers import AutoModel, AutoProcessor, pipeline

folder, t1, t2, out = sys.argv[1:5]
questions = json.loads(sys.argv[5])
model, info = AutoModel.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
detector = pipeline("change-detection", model=folder, trust_remote_code=True)
from PIL import Image
images = [np.array(Image.open(path)) for path in (t1, t2)]
direct = processor.post_process_generation(
    model.generate(**processor(images_t1=images[0], images_t2=images[1], text=questions), max_new_tokens=4))
piped = detector({"image_t1": t1, "image_t2": t2, "text": questions})
single = detector({"image_t1": t1, "image_t2": t2, "text": questions[0]})
# The Inference Endpoints toolkit puts the repository folder on the path and imports handler.py from it.
import base64
sys.path.insert(0, folder)
from handler import EndpointHandler
encoded = {key: base64.b64encode(open(path, "rb").read()).decode()
           for key, path in (("image_t1", t1), ("image_t2", t2))}
endpoint = EndpointHandler(folder)({"inputs": {**encoded, "text": questions[0]}})
np.savez(out + ".npz", direct=np.stack([r["mask"] for r in direct]),
         piped=np.stack([np.array(r["mask"]) for r in piped]), single=np.array(single["mask"]))
json.dump({
    "modules": [type(x).__module__ for x in (model, processor, detector)],
    "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
    "direct": [r["raw_text"] for r in direct], "piped": [r["raw_text"] for r in piped],
    "single": single["raw_text"], "piped_text": [r["text"] for r in piped],
    "modes": [r["mask"].mode for r in piped] + [single["mask"].mode],
    "fractions": [r["changed_fraction"] for r in piped],
    "confidences": [[r["mask_confidence"], r["seg_probability"]] for r in piped],
    "direct_confidences": [[r["mask_confidence"], r["seg_probability"]] for r in direct],
    "endpoint": {key: endpoint[key] for key in ("raw_text", "changed_fraction", "mask_confidence", "seg_probability")},
    "handler_module": sys.modules["handler"].__file__,
}, open(out, "w"))
"""


def exported_names(folder: Path) -> set[str]:
    """What export.py wrote; the marker that records it is left out of Hub uploads."""
    names = {p.name for p in folder.iterdir()}
    assert MARKER in names
    return names - {MARKER}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A train.py-shaped run: base model, a PEFT checkpoint trained from it, the merged model/ and metrics.json."""
    root = tmp_path_factory.mktemp("export")
    model, processor = seg_tiny(0)
    save_checkpoint(model, processor, root / "base")
    base = ReasonCDForChangeDetection.from_pretrained(root / "base")
    peft_model = apply_lora(base, rank=4, alpha=8)
    torch.manual_seed(1)
    with torch.no_grad():  # stands in for training: every trainable part moves away from the base
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    peft_model.save_pretrained(root / "run" / "checkpoints" / "checkpoint-2")
    save_checkpoint(peft_model.merge_and_unload(), processor, root / "run" / "model")
    (root / "run" / "metrics.json").write_text(json.dumps(METRICS))
    t1, t2 = image_pair(96, 128, seed=2)
    Image.fromarray(t1).save(root / "t1.png")
    Image.fromarray(t2).save(root / "t2.png")
    return root


def _answers(folder: Path, root: Path, **load_kwargs) -> list[dict]:
    model = ReasonCDForChangeDetection.from_pretrained(folder, **load_kwargs).eval()
    processor = ReasonCDProcessor.from_pretrained(folder, trust_remote_code=True)
    images = [np.array(Image.open(root / name)) for name in ("t1.png", "t2.png")]
    return predict(model, processor, *images, QUESTIONS, max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def exported(run) -> tuple[Path, int, str]:
    """The run exported with an (offline) push: the exit status and what export.py printed."""
    out, messages = run / "out", io.StringIO()
    with contextlib.redirect_stdout(messages), contextlib.redirect_stderr(messages):
        returncode = export.main(["--run", str(run / "run"), "--output_dir", str(out), "--push_to_hub",
                                  "someone/reasoncd-test", "--dataset", "synthetic", "--max_new_tokens",
                                  str(MAX_NEW_TOKENS)])
    return out, returncode, messages.getvalue()


def test_offline_push_fails_clearly_and_leaves_a_complete_export(exported):
    out, returncode, output = exported
    assert returncode == 2, output
    assert "could not push to the Hub repository someone/reasoncd-test" in output
    assert f"The export in {out} is complete" in output
    assert exported_names(out) == FULL_EXPORT


def test_push_without_network_fails_clearly(run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    out = tmp_path / "adapter"
    assert export.main(["--run", str(run / "run"), "--output_dir", str(out), "--adapter_only", "--base_model_id",
                        "someone/base", "--push_to_hub", "someone/reasoncd-adapter", "--private"]) == 2
    assert "could not push to the Hub repository someone/reasoncd-adapter" in capsys.readouterr().err
    assert exported_names(out) == ADAPTER_EXPORT


def test_export_loads_without_the_repository_and_answers_as_before(run, exported, tmp_path):
    out = exported[0]
    before = _answers(run / "run" / "model", run)
    assert all("[SEG]" in r["raw_text"] for r in before) and any(r["mask"].any() for r in before)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "load_export.py").write_text(LOAD_EXPORT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-I", "load_export.py", str(out), str(run / "t1.png"), str(run / "t2.png"),
         str(elsewhere / "result.json"), json.dumps(QUESTIONS), json.dumps(REMOTE_CODE)],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    after = json.loads((elsewhere / "result.json").read_text())
    assert all(module.startswith("transformers_modules") for module in after["modules"]), after["modules"]
    assert after["missing"] == [] and after["unexpected"] == []
    texts = [r["raw_text"] for r in before]
    assert after["direct"] == texts and after["piped"] == texts and after["single"] == texts[0]
    assert after["piped_text"] == [r["text"] for r in before] and not any("[SEG]" in t for t in after["piped_text"])
    # generation_config.json's max_new_tokens reached the pipeline: one [SEG] per generated token.
    assert all(text.count("[SEG]") == MAX_NEW_TOKENS for text in after["piped"])
    masks = np.load(elsewhere / "result.json.npz")
    expected = np.stack([r["mask"] for r in before])
    assert masks["direct"].shape == masks["piped"].shape == (2, 96, 128)
    for name in ("direct", "piped"):
        assert np.mean((masks[name] > 0) != expected) < 1e-3, name
    assert set(np.unique(masks["piped"])) <= {0, 255} and after["modes"] == ["L", "L", "L"]
    assert np.array_equal(masks["single"], masks["piped"][0])
    assert after["fractions"] == pytest.approx([float((m > 0).mean()) for m in masks["piped"]])
    expected_confidences = [[r["mask_confidence"], r["seg_probability"]] for r in before]
    assert all(0.0 <= value <= 1.0 for pair in expected_confidences for value in pair)
    for name in ("confidences", "direct_confidences"):
        assert np.allclose(after[name], expected_confidences, atol=1e-4), name
    # handler.py from the export answers through the export's own pipeline.
    assert Path(after["handler_module"]).parent == out
    assert after["endpoint"]["raw_text"] == texts[0]
    assert after["endpoint"]["changed_fraction"] == pytest.approx(after["fractions"][0])
    assert [after["endpoint"]["mask_confidence"], after["endpoint"]["seg_probability"]] == \
        pytest.approx(after["confidences"][0])


def test_config_registers_the_pipeline_and_generation_defaults(exported):
    out = exported[0]
    config = json.loads((out / "config.json").read_text())
    assert config["custom_pipelines"]["change-detection"]["impl"] == "pipeline_reasoncd.ReasonCDChangeDetectionPipeline"
    assert config["auto_map"]["AutoModel"] == "modeling_reasoncd.ReasonCDForChangeDetection"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["max_new_tokens"] == MAX_NEW_TOKENS
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (config["eos_token_id"], config["pad_token_id"])
    requirements = (out / "requirements.txt").read_text().split()
    assert "segment-anything" in requirements and "torchvision" in requirements


def test_model_card_metadata_and_text(exported):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported[0] / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-text-to-text"
    assert {"custom_code", "change-detection", "remote-sensing", "image-segmentation"} <= set(data["tags"])
    assert "base_model" not in data  # tiny: random components
    assert data["datasets"] == ["synthetic"]
    results = {m["type"]: m["value"] for m in data["model-index"][0]["results"][0]["metrics"]}
    assert results["f1"] == METRICS["f1"] and results["iou"] == METRICS["iou"]
    text = card.text
    for expected in ('pipeline("change-detection", model="someone/reasoncd-test", trust_remote_code=True)',
                     "AutoProcessor.from_pretrained", "segment-anything", "torchvision", "<p>", "[SEG]",
                     "| 0.6100 |", "ReasonCD: A Multimodal Reasoning Large Model", "`tiny` preset",
                     "feature fusion ResNet-18 (16-channel stem) + FPN"):
        assert expected in text, expected


def test_card_names_the_paper_components_of_the_7b_preset():
    from configuration_reasoncd import ReasonCDConfig

    assert base_models(ReasonCDConfig.from_preset("reasoncd-7b")) == [
        "meta-llama/Llama-2-7b-chat-hf", "openai/clip-vit-large-patch14", "facebook/sam-vit-huge"]


def test_checkpoint_export_merges_the_adapter_and_shards(run, exported, tmp_path):
    out = tmp_path / "from-checkpoint"
    assert export.main(["--run", str(run / "run" / "checkpoints" / "checkpoint-2"), "--output_dir", str(out),
                        "--max_shard_size", "20MB"]) == 0
    names = exported_names(out)
    assert "model.safetensors.index.json" in names and "model.safetensors" not in names
    assert len([n for n in names if n.startswith("model-0")]) >= 2
    assert (FULL_EXPORT - {"model.safetensors"}) <= names
    sharded = ReasonCDForChangeDetection.from_pretrained(out).state_dict()
    merged = ReasonCDForChangeDetection.from_pretrained(exported[0]).state_dict()
    assert sharded.keys() == merged.keys()
    for key in merged:
        torch.testing.assert_close(sharded[key], merged[key], msg=key)


def test_adapter_only_round_trips_through_peft(run, tmp_path):
    from peft import PeftModel

    out = tmp_path / "adapter"
    assert export.main(["--run", str(run / "run" / "checkpoints" / "checkpoint-2"), "--output_dir", str(out),
                        "--adapter_only", "--base_model_id", "someone/reasoncd-tiny-base"]) == 0
    assert exported_names(out) == ADAPTER_EXPORT
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "someone/reasoncd-tiny-base"
    from huggingface_hub import ModelCard

    data = ModelCard.load(out / "README.md").data.to_dict()
    assert data["base_model"] == "someone/reasoncd-tiny-base" and data["library_name"] == "peft"

    base = ReasonCDForChangeDetection.from_pretrained(run / "base")
    model = PeftModel.from_pretrained(base, out).merge_and_unload().eval()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)  # the adapter folder's own code
    assert type(processor).__module__.startswith("transformers_modules")
    t1, t2 = (np.array(Image.open(run / name)) for name in ("t1.png", "t2.png"))
    inputs = processor(images_t1=t1, images_t2=t2, text=QUESTIONS)
    merged = ReasonCDForChangeDetection.from_pretrained(run / "run" / "model").eval()
    with torch.no_grad():
        ours, reference = model(**inputs), merged(**inputs)
    torch.testing.assert_close(ours.logits, reference.logits)
    torch.testing.assert_close(ours.pred_masks, reference.pred_masks)


def test_clear_errors(run, tmp_path, capsys):
    checkpoint = run / "run" / "checkpoints" / "checkpoint-2"
    no_base = tmp_path / "checkpoint-3"
    no_base.mkdir()
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    (no_base / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    assert export.main(["--run", str(no_base), "--output_dir", str(tmp_path / "x")]) == 2
    assert "names no base model" in capsys.readouterr().err
    assert export.main(["--run", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "x")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert export.main(["--run", str(run / "run"), "--output_dir", str(run / "run" / "model")]) == 2
    assert f"holds this command's input {(run / 'run').resolve()}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.main(["--run", str(checkpoint), "--output_dir", str(tmp_path / "x"), "--adapter_only"])
    assert "--base_model_id" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_refuses_folders_it_did_not_write_and_keeps_them_byte_for_byte(run, tmp_path, capsys):
    places = precious_places(tmp_path)
    places.update({"the run being exported": run / "run", "the folder holding the run": run,
                   "the checkpoint being exported": run / "run" / "checkpoints" / "checkpoint-2"})
    for what, place in places.items():
        before = tree(place)
        assert export.main(["--run", str(run / "run"), "--output_dir", str(place)]) == 2, what
        error = capsys.readouterr().err
        assert error.startswith("error: ") and (str(place) in error or str(place.resolve()) in error), (what, error)
        assert tree(place) == before, what
    # --overwrite writes the export beside the user's file, never over the run it exports.
    user = places["a folder holding a user's file"]
    adapter = ["--run", str(run / "run" / "checkpoints" / "checkpoint-2"), "--adapter_only", "--base_model_id",
               "someone/base", "--overwrite"]
    assert export.main([*adapter, "--output_dir", str(user)]) == 0
    assert (user / "notes.txt").read_text() == "a week of field notes\n"
    assert ADAPTER_EXPORT <= {p.name for p in user.iterdir()}
    checkpoint = run / "run" / "checkpoints" / "checkpoint-2"
    before = tree(checkpoint)
    assert export.main([*adapter, "--output_dir", str(checkpoint)]) == 2
    assert f"would be replaced, but it is part of {checkpoint.resolve()}" in capsys.readouterr().err
    assert tree(checkpoint) == before


def test_a_damaged_model_is_named(run, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in (run / "run" / "model").iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / "config.json").write_text("{'not': json")
    assert export.main(["--run", str(damaged), "--output_dir", str(tmp_path / "out")]) == 2
    assert f"{damaged / 'config.json'}: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
