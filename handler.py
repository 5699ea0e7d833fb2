"""Inference Endpoints handler for a ReasonCD export (copied next to the weights by export.py).

Request:
    {"inputs": {"image_t1": "<base64 image>", "image_t2": "<base64 image>", "text": "new buildings" | [...]},
     "parameters": {"max_new_tokens": 64}}
Response per question:
    {"text": "It's the new buildings.", "raw_text": "It's the new buildings [SEG].",
     "mask": "<base64 PNG, 0/255, the input size>", "changed_fraction": 0.031, "width": W, "height": H}
a list of them for a list of questions, or {"error": "..."} for a request that cannot be answered.

Set REASONCD_QUANTIZE=8 or 4 in the endpoint's environment to load the language model with bitsandbytes (add
bitsandbytes to requirements.txt); CLIP, SAM, the fusion module and lm_head stay in bf16 (fp32 on a CPU).
"""

import base64
import binascii
import io
import os

import torch
from PIL import Image
from transformers import pipeline

QUANTIZE_VARIABLE = "REASONCD_QUANTIZE"

MAX_NEW_TOKENS_LIMIT = 512


class RequestError(ValueError):
    """A request the handler cannot answer; the message tells the caller what to fix."""


def decode_image(value, name: str) -> Image.Image:
    """A base64 string (optionally a `data:image/...;base64,` URL) as a decoded PIL image."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"inputs.{name} is missing: send the image as a base64-encoded PNG/JPEG/TIFF string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"inputs.{name} is not valid base64 ({error})") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, Image.DecompressionBombError) as error:
        raise RequestError(f"inputs.{name}: the decoded {len(data)} bytes are not a readable image ({error})") from None
    return image


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_request(data) -> tuple[Image.Image, Image.Image, str | list[str], dict]:
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), dict):
        raise RequestError('the request must be {"inputs": {"image_t1": ..., "image_t2": ..., "text": ...}, '
                           '"parameters": {...}}')
    inputs = data["inputs"]
    image_t1 = decode_image(inputs.get("image_t1"), "image_t1")
    image_t2 = decode_image(inputs.get("image_t2"), "image_t2")
    if image_t1.size != image_t2.size:
        raise RequestError(f"image_t1 is {image_t1.width}x{image_t1.height} but image_t2 is "
                           f"{image_t2.width}x{image_t2.height}: the two dates must be co-registered images of the "
                           "same size")
    text = inputs.get("text")
    questions = [text] if isinstance(text, str) else text
    if not isinstance(questions, list) or not questions or not all(
            isinstance(q, str) and q.strip() for q in questions):
        raise RequestError("inputs.text must be a non-empty question (or a list of them) naming the change of "
                           "interest, e.g. 'new buildings'")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError("parameters must be an object, e.g. {\"max_new_tokens\": 64}")
    unknown = set(parameters) - {"max_new_tokens"}
    if unknown:
        raise RequestError(f"unknown parameters {sorted(unknown)}; supported: max_new_tokens")
    max_new_tokens = parameters.get("max_new_tokens")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT):
        raise RequestError(f"parameters.max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT}, "
                           f"got {max_new_tokens!r}")
    call_parameters = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    return image_t1, image_t2, text, call_parameters


def loading_options(path: str) -> dict:
    """`pipeline` arguments: none by default; with REASONCD_QUANTIZE=8|4, the checkpoint's own `BitsAndBytesConfig`
    (only the language model's decoder layers quantised), on the GPU when there is one."""
    bits = os.environ.get(QUANTIZE_VARIABLE, "").strip()
    if not bits:
        return {}
    if bits not in ("8", "4"):
        raise ValueError(f"{QUANTIZE_VARIABLE}={bits!r}: set 8 or 4 (bits of the language model's weights), or unset")
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_class = get_class_from_dynamic_module("modeling_reasoncd.ReasonCDForChangeDetection", path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return {"device_map": {"": device}, "dtype": dtype,
            "model_kwargs": {"quantization_config": model_class.bitsandbytes_config(int(bits), compute_dtype=dtype)}}


class EndpointHandler:
    def __init__(self, path: str = ""):
        self.detector = pipeline("change-detection", model=path, trust_remote_code=True, **loading_options(path))

    def __call__(self, data: dict) -> dict | list[dict]:
        try:
            image_t1, image_t2, text, parameters = parse_request(data)
            results = self.detector({"image_t1": image_t1, "image_t2": image_t2, "text": text}, **parameters)
        except ValueError as error:  # ours above, or the processor's (e.g. a prompt longer than the context)
            return {"error": str(error)}
        answers = [self._serialise(r) for r in (results if isinstance(results, list) else [results])]
        return answers if isinstance(text, list) else answers[0]

    @staticmethod
    def _serialise(result: dict) -> dict:
        mask = result["mask"]
        return {"text": result["text"], "raw_text": result["raw_text"], "mask": encode_png(mask),
                "changed_fraction": result["changed_fraction"], "width": mask.width, "height": mask.height}
