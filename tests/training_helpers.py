"""Short real trainings for the reproducibility, resume and distributed tests: a small synthetic data set, train.py's
arguments for a run of a few steps, and bit-for-bit comparison of the weights two runs end with."""
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, script_env

from reasoncd.data.second import convert_second
from reasoncd.data.synthetic import generate_second_layout

STEPS = 8  # two epochs of the 8 training pairs, two pairs a step: the second epoch reuses the feature cache
SAVE_EVERY = 2
# Two threads whatever the tests run with: bit-equality must hold where reductions are split across threads.
THREADS = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}

_CACHE: dict[str, Path] = {}


def training_data(tmp_path_factory) -> Path:
    """10 synthetic pairs in the JSON sample format (8 train, 1 val, 1 test), made once per session."""
    if "data" not in _CACHE:
        root = tmp_path_factory.mktemp("training-data")
        generate_second_layout(root / "raw", 10, seed=5, progress=False)
        convert_second(root / "raw", root / "samples", seed=5, progress=False)
        _CACHE["data"] = root / "samples"
    return _CACHE["data"]


def train_args(data: Path, output_dir: Path, *extra: str) -> list[str]:
    """train.py's arguments for a short run (no test split, a two-sample validation at every save)."""
    return ["train.py", "--data", str(data), "--output_dir", str(output_dir), "--max_steps", str(STEPS),
            "--eval_steps", str(SAVE_EVERY), "--per_device_train_batch_size", "2", "--batch_size", "2",
            "--learning_rate", "1e-3", "--warmup_steps", "0", "--full_embeddings", "--max_val_samples", "2",
            "--skip_test", "--seed", "7", *extra]


def start_training(args: list[str], **popen_kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=script_env(THREADS), text=True,
                            **popen_kwargs)


def run_training(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=script_env(THREADS), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def reference_training(tmp_path_factory) -> Path:
    """One uninterrupted short run (its output folder), made once per session."""
    if "reference" not in _CACHE:
        output = tmp_path_factory.mktemp("reference") / "run"
        run_training(train_args(training_data(tmp_path_factory), output))
        _CACHE["reference"] = output
    return _CACHE["reference"]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """What a run ends with: the trained adapter of its last checkpoint and the merged model it wrote."""
    adapter = load_file(str(run / "checkpoints" / f"checkpoint-{STEPS}" / "adapter_model.safetensors"))
    merged = load_file(str(run / "model" / "model.safetensors"))
    return {**{f"adapter/{k}": v for k, v in adapter.items()}, **{f"model/{k}": v for k, v in merged.items()}}


def differing_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ in any bit (or exist in one only)."""
    names = sorted(set(a) | set(b))
    return [name for name in names if name not in a or name not in b or a[name].dtype != b[name].dtype
            or a[name].shape != b[name].shape
            or not torch.equal(a[name].reshape(-1).view(torch.uint8), b[name].reshape(-1).view(torch.uint8))]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]



def answers_with_a_mask(model_dir: Path, **loading) -> dict:
    """Loads a trained model through AutoModel/AutoProcessor (no key missing or unexpected), has it answer one question
    with `[SEG]` (the answer forced: a few steps teach no answer), and returns the post-processed result."""
    import numpy as np
    from transformers import AutoModel, AutoProcessor, LogitsProcessorList

    from helpers import ForceAnswers, image_pair

    model, info = AutoModel.from_pretrained(model_dir, trust_remote_code=True, output_loading_info=True, **loading)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    t1, t2 = image_pair(64, 96, seed=1)
    labels = processor(images_t1=t1, images_t2=t2, text=["new buildings"], answers=["It's [SEG]."])["labels"]
    answer = labels[0][labels[0] != -100].tolist()
    out = model.eval().generate(**processor(images_t1=t1, images_t2=t2, text="new buildings"),
                                max_new_tokens=len(answer) + 1,
                                logits_processor=LogitsProcessorList([ForceAnswers([answer], model.config.eos_token_id)]))
    result = processor.post_process_generation(out)[0]
    assert "[SEG]" in result["raw_text"] and result["mask"].shape == t1.shape[:2]
    assert np.isfinite(result["mask_confidence"]) and np.isfinite(out.pred_masks.float().numpy()).all()
    result["dtype"] = model.dtype
    return result
