"""Inference Endpoints handler for a ReasonCD export (copied next to the weights by export.py).

Request:
    {"inputs": {"image_t1": "<base64 image>", "image_t2": "<base64 image>", "text": "new buildings" | [...]},
     "parameters": {"max_new_tokens": 64}}
Response per question:
    {"text": "It's the new buildings.", "raw_text": "It's the new buildings [SEG].",
     "mask": "<base64 PNG, 0/255, the input size>", "changed_fraction": 0.031, "width": W, "height": H,
     "mask_confidence": 0.87, "seg_probability": 0.98,
     "targets": [{"label": "new buildings", "mask": "<base64 PNG>", "changed_fraction": 0.031,
                  "mask_confidence": 0.87, "seg_probability": 0.98}]}
(`targets`: one per `[SEG]` of the answer, each with its own mask; an answer about several changes names each, and
`mask` is their union)
a list of them for a list of questions, or {"error": "..."} for a request that cannot be answered (an image of
more than REASONCD_MAX_IMAGE_PIXELS pixels among them, checked from its header before it is decoded).

Requests are bounded before any base64 is decoded (the pipeline's REQUEST_LIMITS; set in the endpoint's
environment or given to EndpointHandler): REASONCD_MAX_REQUEST_BYTES (default 64,000,000) bytes of base64 images
and question text, REASONCD_MAX_QUESTIONS (16) questions, and REASONCD_MAX_ANSWER_TOKENS (2,048) answer tokens,
that is questions x max_new_tokens (each at most 512).

Set REASONCD_QUANTIZE=8 or 4 in the endpoint's environment to load the language model with bitsandbytes (add
bitsandbytes to requirements.txt); CLIP, SAM, the fusion module and lm_head stay in bf16 (fp32 on a CPU).

The endpoint answers requests in threads: the handler keeps no per-request state, and the checkpoint's pipeline
bounds how many decode at once (`max_concurrent`). This file imports nothing from the checkpoint by name: the
pipeline and the model class come through transformers' loader of the checkpoint's own code.
"""

import base64
import binascii
import io
import os

from PIL import Image
from transformers import pipeline

QUANTIZE_VARIABLE = "REASONCD_QUANTIZE"

MAX_NEW_TOKENS_LIMIT = 512


class RequestError(ValueError):
    """A request the handler cannot answer; the message tells the caller what to fix."""


def base64_text(value, name: str) -> str:
    """The base64 text of an image field (without a `data:image/...;base64,` prefix), not yet decoded."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"inputs.{name} is missing: send the image as a base64-encoded PNG/JPEG/TIFF string")
    return value.partition(",")[2] if value.startswith("data:") else value


def decode_base64(value: str, name: str) -> bytes:
    """Base64 text as the encoded image's bytes; the pipeline opens them, checking the size in the header against
    its pixel limit before decoding."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"inputs.{name} is not valid base64 ({error})") from None


def encode_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_request(data) -> tuple[str, str, str | list[str], dict]:
    """The request's base64 images (not decoded), its text and its call parameters, checked for shape."""
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), dict):
        raise RequestError('the request must be {"inputs": {"image_t1": ..., "image_t2": ..., "text": ...}, '
                           '"parameters": {...}}')
    inputs = data["inputs"]
    image_t1 = base64_text(inputs.get("image_t1"), "image_t1")
    image_t2 = base64_text(inputs.get("image_t2"), "image_t2")
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
    """`pipeline` arguments: none by default; with REASONCD_QUANTIZE=8|4, the checkpoint's own
    `quantized_loading_options` (only the language model's decoder layers quantised, its dtype and device)."""
    bits = os.environ.get(QUANTIZE_VARIABLE, "").strip()
    if not bits:
        return {}
    if bits not in ("8", "4"):
        raise ValueError(f"{QUANTIZE_VARIABLE}={bits!r}: set 8 or 4 (bits of the language model's weights), or unset")
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_class = get_class_from_dynamic_module("modeling_reasoncd.ReasonCDForChangeDetection", path)
    options = model_class.quantized_loading_options(int(bits))
    return {"device_map": options["device_map"], "dtype": options["dtype"],
            "model_kwargs": {"quantization_config": options["quantization_config"]}}


class EndpointHandler:
    """
    path: the exported checkpoint. max_image_pixels: the largest image accepted (default: $REASONCD_MAX_IMAGE_PIXELS,
    else 268,435,456). max_concurrent: requests decoding at once (default: the pipeline's). max_request_bytes,
    max_questions, max_answer_tokens: the request limits (default: their environment variables, else the
    pipeline's defaults; see the module's docstring).
    """

    def __init__(self, path: str = "", max_image_pixels: int | None = None, max_concurrent: int | None = None,
                 **limits):
        options = loading_options(path)
        given = {"max_image_pixels": max_image_pixels, "max_concurrent": max_concurrent, **limits}
        options.update({name: value for name, value in given.items() if value is not None})
        self.detector = pipeline("change-detection", model=path, trust_remote_code=True, **options)

    def __call__(self, data: dict) -> dict | list[dict]:
        try:
            image_t1, image_t2, text, parameters = parse_request(data)
            questions = [text] if isinstance(text, str) else text
            # Bytes, questions and answer tokens against the limits before any base64 is decoded.
            self.detector.check_request(questions, len(image_t1) + len(image_t2), parameters.get("max_new_tokens"))
            images = {"image_t1": decode_base64(image_t1, "image_t1"), "image_t2": decode_base64(image_t2, "image_t2")}
            results = self.detector({**images, "text": text}, **parameters)
        except ValueError as error:  # ours above, or the pipeline's and processor's (size, limit, context, ...)
            return {"error": str(error)}
        answers = [self._serialise(r) for r in (results if isinstance(results, list) else [results])]
        return answers if isinstance(text, list) else answers[0]

    @staticmethod
    def _serialise(result: dict) -> dict:
        mask = result["mask"]
        return {"text": result["text"], "raw_text": result["raw_text"], **_mask_fields(result),
                "width": mask.width, "height": mask.height,
                "targets": [{"label": target["label"], **_mask_fields(target)}
                            for target in result.get("targets", [])]}


def _mask_fields(result: dict) -> dict:
    """An answer's or a target's mask as base64 PNG, its changed share and its two confidences."""
    return {"mask": encode_png(result["mask"]), "changed_fraction": result["changed_fraction"],
            "mask_confidence": result.get("mask_confidence"), "seg_probability": result.get("seg_probability")}
