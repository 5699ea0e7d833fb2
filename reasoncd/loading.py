"""Loading a ReasonCD checkpoint: checking the folder before anything loads it, `load_model` (optionally with the
language model in 8 or 4 bits) and `predict` (one pair, several questions).

Which modules are quantised is the model's business (`ReasonCDForChangeDetection.bitsandbytes_config`); this module
adds the scripts' `--quantize` option, the checks that run before the slow imports, and two workarounds for
bitsandbytes.
"""

import argparse
import importlib.util
import json
import logging
import math
import re
from pathlib import Path

import numpy as np

# A Hugging Face Hub repository id, ORG/NAME (what --model or --push_to_hub may name instead of a folder).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# Files a checkpoint folder cannot load without (weights may also be sharded: an index names the shards).
REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer_config.json", "modeling_reasoncd.py",
                  "configuration_reasoncd.py", "processing_reasoncd.py")
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used; the message names the file and what is wrong with it."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the checkpoint is damaged: copy or build it "
                              "again") from None


def _check_safetensors(path: Path) -> None:
    """The header is read and checked against the file's length, so a truncated download is caught here."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except Exception as error:  # safetensors raises its own SafetensorError for every kind of damage
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}); the file is damaged or "
                              "incomplete: copy or download it again") from None


def check_checkpoint(folder: Path) -> None:
    """Raise a clear error when `folder` is not a complete, readable ReasonCD checkpoint, before loading starts:
    FileNotFoundError for a missing folder or file, CheckpointError for a damaged one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {folder}: no such folder (build one with build_reasoncd.py or train.py)")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not ((folder / WEIGHTS).is_file() or (folder / WEIGHTS_INDEX).is_file()):
        missing.append(WEIGHTS)
    if missing:
        raise FileNotFoundError(f"--model {folder}: checkpoint folder is missing {', '.join(missing)}")
    for name in REQUIRED_FILES:
        if name.endswith(".json"):
            _read_json(folder / name)
    if (folder / WEIGHTS).is_file():
        shards = [WEIGHTS]
    else:
        index = _read_json(folder / WEIGHTS_INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / WEIGHTS_INDEX}: no weight_map naming the weight files")
        shards = sorted(set(weight_map.values()))
        absent = [name for name in shards if not (folder / name).is_file()]
        if absent:
            raise FileNotFoundError(f"--model {folder}: checkpoint folder is missing {', '.join(absent)} (named in "
                                    f"{WEIGHTS_INDEX})")
    for name in shards:
        _check_safetensors(folder / name)


# ------------------------------------------------------------------------------------------------ quantisation

QUANTIZE_BITS = (8, 4)
# bitsandbytes 0.50's AVX512-BF16 kernel for 4-bit layers on the CPU repacks weights in blocks of 32 output rows
# and `blocksize` inputs, and asserts on other shapes (the tiny preset's 688-wide MLP; LLaMA-2-7b's all fit).
_BNB_CPU_PACK_ROWS = 32


def add_quantize_argument(parser: argparse.ArgumentParser, default: int | str | None = None) -> None:
    """`--quantize {8,4}`, the same in predict.py, eval.py and app.py."""
    parser.add_argument("--quantize", type=int, choices=QUANTIZE_BITS, default=default,
                        help="load the language model in 8 or 4 bits with bitsandbytes (pip install -e .[quant]); "
                             "CLIP, SAM, the fusion module, the projector and lm_head stay unquantised. Runs on "
                             "the GPU when there is one")


def _finite_logit(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_presence_threshold_argument(parser: argparse.ArgumentParser) -> None:
    """`--presence_threshold`, the same in predict.py and eval.py."""
    parser.add_argument("--presence_threshold", type=_finite_logit,
                        help="the presence logit above which the asked change counts as there (default: the "
                             "model's own, presence_threshold in its config.json, which train.py "
                             "--calibrate_presence places); higher answers 'no change of interest' more often. "
                             "Needs a model with a presence decision")


def require_bitsandbytes(bits: int | None) -> None:
    """Fail fast (before the slow imports) on a bad `--quantize` value or a missing bitsandbytes."""
    if bits is None:
        return
    if bits not in QUANTIZE_BITS or isinstance(bits, bool):
        raise ValueError(f"--quantize {bits!r}: choose 8 or 4 (bits of the language model's weights)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"--quantize {bits} needs bitsandbytes: pip install -e .[quant] "
                          "(or pip install 'bitsandbytes>=0.46.1')")


def _model_class(location: str):
    """The checkpoint's own model class (what `AutoModel` builds); this repository's for code that predates
    `quantized_loading_options` (the module names `bitsandbytes_config` lists have not changed)."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = getattr(AutoConfig.from_pretrained(location, trust_remote_code=True), "auto_map", None) or {}
    model_class = get_class_from_dynamic_module(auto_map["AutoModel"], location) if "AutoModel" in auto_map else None
    if not hasattr(model_class, "quantized_loading_options"):
        from modeling_reasoncd import ReasonCDForChangeDetection as model_class
    return model_class


def quantized_loading_options(location: str, bits: int, device: str | None = None) -> dict:
    """`from_pretrained` keyword arguments for the checkpoint at `location` in `bits`: the model's own
    `quantized_loading_options` (its `BitsAndBytesConfig`, the dtype of the unquantised parts and the device)."""
    require_bitsandbytes(bits)
    return _model_class(location).quantized_loading_options(bits, device)


class _OnceFilter(logging.Filter):
    """Lets each distinct message through once: bitsandbytes logs LLM.int8's cast of the inputs to float16 at every
    matmul, hundreds of lines per answer."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        new = record.msg not in self.seen
        self.seen.add(record.msg)
        return new


def use_generic_cpu_4bit_kernel(model) -> None:
    """4-bit layers on the CPU whose shape bitsandbytes' AVX512-BF16 kernel cannot repack use its generic path."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and module.weight.device.type == "cpu":
            blocksize = module.weight.quant_state.blocksize
            if module.out_features % _BNB_CPU_PACK_ROWS or module.in_features % blocksize:
                module.support_avx512bf16_for_cpu = False


def finish_quantized_loading(model) -> None:
    """The two bitsandbytes workarounds, after `from_pretrained` with `quantized_loading_options`."""
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OnceFilter) for f in bnb_logger.filters):
        bnb_logger.addFilter(_OnceFilter())
    use_generic_cpu_4bit_kernel(model)


# ----------------------------------------------------------------------------------------- loading, predicting


def load_model(location: str | Path, quantize: int | None = None, device: str | None = None,
               presence_threshold: float | None = None):
    """
    `AutoModel` / `AutoProcessor` with the checkpoint's own code, in eval mode; `location` is a checkpoint folder
    (checked first) or a Hub id.

    quantize: 8 or 4 loads the language model's decoder layers with bitsandbytes (LLM.int8 / NF4) and leaves CLIP,
        SAM, the fusion module, the projector, `text_hidden_fc` and `lm_head` unquantised: in bfloat16 on a GPU
        that supports it, else in float32.
    device: where the model runs. Default: the CPU; quantised, CUDA when available.
    presence_threshold: replaces the config's `presence_threshold` (CheckpointError for a model without a presence
        decision).
    """
    require_bitsandbytes(quantize)
    from transformers import AutoModel, AutoProcessor

    location = str(location)
    if Path(location).exists():
        check_checkpoint(Path(location))
    options = {} if quantize is None else quantized_loading_options(location, quantize, device)
    model = AutoModel.from_pretrained(location, trust_remote_code=True, **options).eval()
    if quantize is not None:
        finish_quantized_loading(model)
    elif device is not None:
        model.to(device)
    if presence_threshold is not None:
        if getattr(model, "presence", None) is None:
            raise CheckpointError(f"{location}: the model has no presence decision (presence_head is off), so there "
                                  "is no threshold for --presence_threshold to set")
        model.config.presence_threshold = float(presence_threshold)
    processor = AutoProcessor.from_pretrained(location, trust_remote_code=True)
    return model, processor


def predict(model, processor, image_t1: np.ndarray, image_t2: np.ndarray, questions: list[str],
            max_new_tokens: int = 64) -> list[dict]:
    """One pair, k questions (the images are encoded once): k `{"text", "raw_text", "mask", "changed_fraction",
    "mask_confidence", "seg_probability", "targets"}` (`text` is the answer for a reader, `raw_text` the model's own
    with `[SEG]`; `targets` one `{"label", "mask", "changed_fraction", "mask_confidence", "seg_probability"}` per
    `[SEG]`, `mask` their union; the confidences as `ReasonCDProcessor.post_process_generation` defines them)."""
    inputs = processor(images_t1=image_t1, images_t2=image_t2, text=questions, return_tensors="pt").to(model.device)
    outputs = model.generate(**inputs, max_new_tokens=max_new_tokens)
    return [with_targets(with_readable_text(result)) for result in processor.post_process_generation(outputs)]


def with_targets(result: dict) -> dict:
    """The result with its changed fraction, and each target's, also from a checkpoint whose processor code
    predates the confidences (None) or the targets (the answer's one mask as its one target)."""
    result["changed_fraction"] = float(result["mask"].mean())
    result.setdefault("mask_confidence", None)
    result.setdefault("seg_probability", None)
    if "targets" not in result:
        result["targets"] = [] if "[SEG]" not in result["raw_text"] else [
            {"label": "change 1", "mask": result["mask"], "mask_confidence": result["mask_confidence"],
             "seg_probability": result["seg_probability"]}]
    for target in result["targets"]:
        target["changed_fraction"] = float(target["mask"].mean())
    return result


def with_readable_text(result: dict) -> dict:
    """The result with `text` for a reader and `raw_text` with `[SEG]`, also from a checkpoint whose processor code
    predates `raw_text` (its `text` is the raw answer)."""
    if "raw_text" not in result:
        from processing_reasoncd import ReasonCDProcessor

        result["raw_text"] = result["text"]
        result["text"] = ReasonCDProcessor.readable_answer(result["text"])
    return result
