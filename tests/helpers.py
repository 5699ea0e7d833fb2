"""Shared building blocks of the tests: tiny checkpoints (built once per session) and tiny models whose answers
hold `[SEG]`, image pairs, a LLaMA-2-like tokenizer made offline, a logits processor that makes greedy decoding emit
a chosen answer, running scripts, and the places no command may write over."""
import configparser
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerFast

REPO_ROOT = Path(__file__).resolve().parents[1]


def _remote_code() -> tuple[str, ...]:
    """The remote-code modules (they travel with checkpoints and exports): the top-level modules setup.cfg installs."""
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    return tuple(setup["options"]["py_modules"].split())


REMOTE_CODE = _remote_code()

import build_reasoncd
from reasoncd import build
from reasoncd.build import make_seg_the_only_answer  # noqa: F401 (the tests' way to run the mask path)

_CHECKPOINTS: dict[str, Path] = {}


def tiny_checkpoint(tmp_path_factory, seed: int = 0) -> Path:
    """The `tiny` preset built by `build_reasoncd.main` into a session temp folder; built once per seed."""
    key = f"tiny-{seed}"
    if key not in _CHECKPOINTS:
        out = tmp_path_factory.mktemp(key) / "checkpoint"
        assert build_reasoncd.main(["--preset", "tiny", "--seed", str(seed), "--output_dir", str(out)]) == 0
        _CHECKPOINTS[key] = out
    return _CHECKPOINTS[key]


def seg_forcing_checkpoint(tmp_path_factory) -> Path:
    """A `tiny` checkpoint whose model answers `[SEG]` after any prompt, so the mask path runs end to end."""
    key = "seg-forcing"
    if key not in _CHECKPOINTS:
        model, processor = build.build_tiny(0)
        make_seg_the_only_answer(model)
        out = tmp_path_factory.mktemp(key) / "checkpoint"
        build.save_checkpoint(model, processor, out)
        _CHECKPOINTS[key] = out
    return _CHECKPOINTS[key]


def seg_tiny(seed: int = 0):
    """A `tiny` model (in memory, eval mode) and its processor whose answers hold `[SEG]`, so masks are really
    decoded (the export, handler and app tests)."""
    model, processor = build.build_tiny(seed)
    make_seg_the_only_answer(model)
    return model.eval(), processor


def synthetic_samples(root: Path, pairs: int, seed: int) -> Path:
    """`pairs` synthetic pairs in SECOND's layout under root/raw, converted to JSON samples in root/samples."""
    from reasoncd.data.second import convert_second
    from reasoncd.data.synthetic import generate_second_layout

    generate_second_layout(root / "raw", pairs, seed=seed, progress=False)
    convert_second(root / "raw", root / "samples", seed=seed, progress=False)
    return root / "samples"


def image_pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth random RGB images, the second with a bright block (a 'change')."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3))
    t1 = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width].astype(np.uint8)
    t2 = t1.copy()
    t2[height // 4: height // 2, width // 3: 2 * width // 3] = 250
    return t1, t2


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth-ish random RGB uint8 image (blocks of colour plus noise), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(height // 16, 1) + 1, max(width // 16, 1) + 1, 3))
    image = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    image = image + rng.integers(-20, 21, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def llama_like_tokenizer(size: int = 32000) -> PreTrainedTokenizerFast:
    """A word-level tokenizer laid out like LLaMA-2's: exactly `size` entries, `<unk>`, `<s>`, `</s>` at 0, 1, 2,
    no pad token. Words are `w3` ... `w{size-1}` plus common English words in the low ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["the", "is", "a", "of", "new", "buildings", "roads", "water", "It's", ".", ",", "changes", "that",
             "provide", "more", "living", "areas", "for", "people", "[INST]", "[/INST]", "For", "Change",
             "Detection", "task", "image", "taken", "earlier", "later", "and", "same", "place", "The", "change",
             "interest", "Please", "produce", "changemap", "me", "(T1)", "(T2)"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    index = 0
    while len(vocab) < size:
        vocab.setdefault(f"w{index}", len(vocab))
        index += 1
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    assert len(tokenizer) == size
    return tokenizer


class ForceAnswers(LogitsProcessor):
    """
    Greedy decoding emits `answers[row]` token by token, then `</s>` and padding.

    Only the scores are replaced (every token but the forced one gets -inf); the forward passes, the KV cache and
    the hidden states are the model's own, so what `generate` reads off them is what it would read had the model
    chosen these tokens itself. With only `inputs_embeds`, the `input_ids` seen here are the generated tokens so
    far, so their length is the step.
    """

    def __init__(self, answers: list[list[int]], eos_token_id: int) -> None:
        self.answers = answers
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1]
        forced = torch.full_like(scores, float("-inf"))
        for row, answer in enumerate(self.answers):
            forced[row, answer[step] if step < len(answer) else self.eos_token_id] = 0.0
        return forced


def answer_token_ids(processor, answers: list[str]) -> list[list[int]]:
    """The token ids of each answer as the processor builds its labels (answer + `</s>`): what `ForceAnswers` takes."""
    labels = processor(images_t1=np.zeros((8, 8, 3), np.uint8), images_t2=np.zeros((8, 8, 3), np.uint8),
                       text=["x"] * len(answers), answers=answers)["labels"]
    return [row[row != -100].tolist() for row in labels]


def script_env(extra_env: dict | None = None) -> dict:
    """The environment of scripts the tests start: offline, no tokenizer thread pools."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(extra_env or {})
    return env


def run_script(args: list[str], *, cwd: Path, timeout: float = 120, extra_env: dict | None = None):
    """Runs `python <args>` with the interpreter of the tests; returns the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=script_env(extra_env), capture_output=True,
                          text=True, timeout=timeout)


def precious_places(root: Path) -> dict[str, Path]:
    """Three places no command may write over without being asked: a folder holding a user's file, a training run
    as train.py leaves it (marker, checkpoints, model, metrics), and an existing file."""
    from reasoncd.io import OutputDir

    user = root / "mine"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("a week of field notes\n")
    run = root / "run"
    OutputDir(run, "train.py", entries=("checkpoints", "model", "metrics.json")).claim(start_over=True)
    (run / "checkpoints" / "checkpoint-800").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-800" / "trainer_state.json").write_text('{"global_step": 800}')
    (run / "model").mkdir()
    (run / "model" / "model.safetensors").write_bytes(b"a week of training")
    (run / "metrics.json").write_text('{"f1": 0.9}')
    results = root / "results.csv"
    results.write_text("f1\n0.9\n")
    return {"a folder holding a user's file": user, "a trained run": run, "a file": results}


def tree(path: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) at and under `path`, to compare before and after a command."""
    path = Path(path)
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}
