"""Loading ReasonCD with its language model in 8 or 4 bits (bitsandbytes), for predict.py, eval.py and app.py.

Which modules are quantised is the model's business (`ReasonCDForChangeDetection.bitsandbytes_config`); this module
adds the scripts' option, the checks that run before the slow imports, and two workarounds for bitsandbytes.
"""

import argparse
import importlib.util
import logging

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
    `bitsandbytes_config` (the module names it lists have not changed)."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = getattr(AutoConfig.from_pretrained(location, trust_remote_code=True), "auto_map", None) or {}
    model_class = get_class_from_dynamic_module(auto_map["AutoModel"], location) if "AutoModel" in auto_map else None
    if not hasattr(model_class, "bitsandbytes_config"):
        from modeling_reasoncd import ReasonCDForChangeDetection as model_class
    return model_class


def quantized_loading_options(location: str, bits: int, device: str | None = None) -> dict:
    """`from_pretrained` keyword arguments: the model's `BitsAndBytesConfig`, the dtype of the unquantised parts
    (bf16 on a GPU that has it, else fp32) and the device (default: CUDA when available), which a bitsandbytes
    model gets while loading and cannot change afterwards."""
    import torch

    require_bitsandbytes(bits)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return {"quantization_config": _model_class(location).bitsandbytes_config(bits, compute_dtype=dtype),
            "dtype": dtype, "device_map": {"": device}}


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
