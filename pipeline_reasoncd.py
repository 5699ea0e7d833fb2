"""The `change-detection` pipeline: two dates of one place and one or more questions -> answer and change mask.

    from transformers import pipeline
    detector = pipeline("change-detection", model="ORG/NAME", trust_remote_code=True)
    detector({"image_t1": "t1.png", "image_t2": "t2.png", "text": "new buildings"})
    # {"text": "It's the new buildings.", "raw_text": "It's the new buildings [SEG].",
    #  "mask": <PIL.Image mode L, 0/255, the inputs' size>, "changed_fraction": 0.031,
    #  "mask_confidence": 0.87, "seg_probability": 0.98, "targets": [{"label": "new buildings", "mask": ..., ...}]}

`text` may be a list of questions about the same pair: the answer is then a list, and the images are encoded once.
Images may be file paths, http(s) URLs, encoded image bytes, PIL images or HxWx3 arrays; one of more than
`max_image_pixels` pixels (default: $REASONCD_MAX_IMAGE_PIXELS, else 268,435,456) is refused, a file's from its
header before it is decoded.

One pipeline may serve requests from many threads: it keeps no per-request state, runs the model in inference mode
(the model in eval mode changes no buffer), and lets at most `max_concurrent` requests decode at once, so the memory
their activations and KV caches take stays bounded however many threads call it.

Each request is bounded too, before anything in it is decoded (REQUEST_LIMITS): the bytes it brings (images given
as encoded bytes or downloaded from URLs, and the question text; at the endpoint, the base64 text; files on disk
are read by Pillow as needed and bounded by the pixel limit), the number of questions, and the answer tokens it may
generate (questions x max_new_tokens). Each limit is a pipeline argument (also per call), else an environment
variable, else its default.
"""

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import GenerationConfig, Pipeline

try:
    from .processing_reasoncd import check_image_pixels, positive_setting
    from .processing_reasoncd import max_image_pixels as pixel_limit
except ImportError:
    from processing_reasoncd import check_image_pixels, positive_setting
    from processing_reasoncd import max_image_pixels as pixel_limit

IMAGE_KEYS = ("image_t1", "image_t2")
DEFAULT_MAX_NEW_TOKENS = 64
# Requests decoding at once in one pipeline. Each holds its own activations and KV cache (about 0.3 GiB for
# reasoncd-7b in bf16); on the CPU of `benchmarks/bench.py serve`, two get 80-100 % of the throughput eight get.
DEFAULT_MAX_CONCURRENT = 2


@dataclass(frozen=True)
class RequestLimit:
    name: str  # the pipeline's (and handler's) argument
    variable: str  # the environment variable read when the argument is not given
    default: int
    unit: str


# What one request may bring and ask for. The answer tokens bound the KV caches a request fills: every question is
# a row of the decoding batch over the whole prompt (for reasoncd-7b in bf16, about 0.5 MB per token and row).
REQUEST_LIMITS = {
    "max_request_bytes": RequestLimit("max_request_bytes", "REASONCD_MAX_REQUEST_BYTES", 64_000_000, "bytes"),
    "max_questions": RequestLimit("max_questions", "REASONCD_MAX_QUESTIONS", 16, "questions"),
    "max_answer_tokens": RequestLimit("max_answer_tokens", "REASONCD_MAX_ANSWER_TOKENS", 2048, "tokens"),
}


def request_limit(name: str, given: int | None = None) -> int:
    """A request limit: `given`, else its environment variable, else its default (read at every request)."""
    limit = REQUEST_LIMITS[name]
    return positive_setting(given, name=name, variable=limit.variable, default=limit.default, unit=limit.unit,
                            example=limit.default * 2)


def check_request(questions: list[str], encoded_bytes: int, max_new_tokens: int, limits: dict | None = None) -> int:
    """
    Refuse a request above a limit, from sizes alone (nothing is decoded): more than `max_questions` questions,
    more than `max_answer_tokens` = questions x `max_new_tokens`, or more than `max_request_bytes` of encoded
    images (`encoded_bytes`) and question text. `limits`: {name: value} given by the caller (the rest as
    `request_limit` reads them). Returns the bytes left within the limit (for downloads).
    """
    limits = limits or {}

    def limit(name: str) -> tuple[int, str]:
        value = request_limit(name, limits.get(name))
        return value, f"{name}, or ${REQUEST_LIMITS[name].variable}"

    most, how = limit("max_questions")
    if len(questions) > most:
        raise ValueError(f"the request asks {len(questions):,} questions, more than the limit of {most:,} per "
                         f"request ({how}): send them in several requests")
    most, how = limit("max_answer_tokens")
    tokens = len(questions) * max_new_tokens
    if tokens > most:
        raise ValueError(f"the request may generate {len(questions):,} questions x {max_new_tokens:,} max_new_tokens "
                         f"= {tokens:,} answer tokens, more than the limit of {most:,} per request ({how}): ask fewer "
                         "questions at once, or lower max_new_tokens")
    most, how = limit("max_request_bytes")
    size = encoded_bytes + sum(len(question.encode("utf-8")) for question in questions)
    if size > most:
        raise ValueError(f"the request brings {size:,} bytes of images and text, more than the limit of {most:,} "
                         f"({how}): send smaller files (PNG or JPEG rather than uncompressed TIFF), or raise the "
                         "limit")
    return most - size


def _download(url: str, *, name: str, max_bytes: int) -> bytes:
    """The body at `url`, refused as soon as it passes `max_bytes` (what is left of the request's byte limit)."""
    from huggingface_hub import get_session

    received, size = [], 0
    with get_session().stream("GET", url, timeout=30, follow_redirects=True) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                limit = REQUEST_LIMITS["max_request_bytes"]
                raise ValueError(f"{name}: {url!r} sends more than the {max_bytes:,} bytes left of the request's "
                                 f"limit ({limit.name}, or ${limit.variable}); the download was stopped there")
            received.append(chunk)
    return b"".join(received)


def is_url(image) -> bool:
    return isinstance(image, str) and image.startswith(("http://", "https://"))


def load_image(image, *, name: str, max_pixels: int, url: str | None = None):
    """
    A path or encoded bytes is opened, its header's size checked against `max_pixels`, then decoded into a PIL
    image; PIL images and arrays pass the same size check unchanged (the processor converts them). `url`: where
    the bytes were downloaded from, for messages.
    """
    if isinstance(image, Path):
        image = str(image)
    if isinstance(image, (bytes, bytearray)):
        source = io.BytesIO(image)
        shown = f"{url!r} is" if url else f"the {len(image):,} bytes given are"
    elif isinstance(image, str):
        shown = f"{image!r} is"
        if Path(image).is_file():
            source = image
        else:
            raise FileNotFoundError(f"{name}: {image!r} is neither an existing file nor an http(s) URL")
    else:
        width, height = image.size if isinstance(image, Image.Image) else np.shape(image)[1::-1]
        check_image_pixels(name, width, height, max_pixels)
        return image
    try:
        opened = Image.open(source)
        check_image_pixels(name, opened.width, opened.height, max_pixels)  # the header's size, nothing decoded yet
        opened.load()  # decode now, so a broken file fails here with its name
    except Image.DecompressionBombError as error:  # Pillow's own limit, 2 x PIL.Image.MAX_IMAGE_PIXELS
        raise ValueError(f"{name}: {shown} refused by Pillow's decompression-bomb limit ({error}); raise "
                         "PIL.Image.MAX_IMAGE_PIXELS as well for such images") from None
    except OSError as error:
        raise ValueError(f"{name}: {shown} not a readable image ({error})") from None
    return opened


class ReasonCDChangeDetectionPipeline(Pipeline):
    """
    Inputs: `{"image_t1": ..., "image_t2": ..., "text": str | list[str]}` (or a list of such dicts).
    Outputs per question: `{"text": str, "raw_text": str, "mask": PIL.Image (mode "L", 0 = unchanged, 255 = change,
    the input size), "changed_fraction": float, "mask_confidence": float, "seg_probability": float, "targets":
    list}`; a list of them when `text` is a list. `text` is the answer for a reader, `raw_text` the model's own, with
    the `[SEG]` tokens that point at the masks; `targets` holds one `{"label", "mask", "changed_fraction",
    "mask_confidence", "seg_probability"}` per `[SEG]` (an answer about several changes names each and gives each
    its own mask; `mask` is their union); the confidences are in [0, 1] (`ReasonCDProcessor.post_process_generation`
    defines them). Call parameters: `max_new_tokens` (default: the checkpoint's generation_config.json),
    `max_image_pixels` and the request limits (REQUEST_LIMITS: `max_request_bytes`, `max_questions`,
    `max_answer_tokens`), which may also be given when the pipeline is made, as may `max_concurrent` (requests
    decoding at once, default DEFAULT_MAX_CONCURRENT).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, max_concurrent: int = DEFAULT_MAX_CONCURRENT, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError("the change-detection pipeline needs the ReasonCD processor of the checkpoint")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be a positive integer, got {max_concurrent!r}")
        # A bad $REASONCD_MAX_IMAGE_PIXELS (or request limit) fails when the pipeline is made, not at the first request.
        pixel_limit(self._preprocess_params.get("max_image_pixels"))
        for name in REQUEST_LIMITS:
            request_limit(name, self._preprocess_params.get(name))
        self.default_max_new_tokens = self._checkpoint_max_new_tokens()
        # Shared across requests on purpose: it bounds how many decode at once (see the module's docstring).
        self._decoding_slots = threading.BoundedSemaphore(max_concurrent)

    def _checkpoint_max_new_tokens(self) -> int:
        # ReasonCD delegates decoding to its language model, so the checkpoint's generation_config.json is read here.
        try:
            generation = GenerationConfig.from_pretrained(self.model.name_or_path)
        except (OSError, ValueError):
            return DEFAULT_MAX_NEW_TOKENS
        return generation.max_new_tokens or DEFAULT_MAX_NEW_TOKENS

    def _sanitize_parameters(self, max_new_tokens=None, max_image_pixels=None, **kwargs):
        limits = {name: kwargs.pop(name) for name in REQUEST_LIMITS if name in kwargs}
        if kwargs:
            raise TypeError(f"unknown change-detection parameters: {', '.join(sorted(kwargs))}")
        preprocess, forward = {}, {}
        if max_new_tokens is not None:
            if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
            forward["max_new_tokens"] = preprocess["max_new_tokens"] = max_new_tokens  # the latter for the limits
        if max_image_pixels is not None:
            preprocess["max_image_pixels"] = pixel_limit(max_image_pixels)
        preprocess.update({name: request_limit(name, value) for name, value in limits.items() if value is not None})
        return preprocess, forward, {}

    def check_request(self, questions: list[str], encoded_bytes: int, max_new_tokens: int | None = None,
                      **limits) -> int:
        """`check_request` with this pipeline's limits and default max_new_tokens (the endpoint handler asks it
        before decoding a request's base64); returns the bytes left within the limit."""
        given = {name: self._preprocess_params.get(name) for name in REQUEST_LIMITS}
        given.update({name: value for name, value in limits.items() if value is not None})
        return check_request(questions, encoded_bytes, max_new_tokens or self.default_max_new_tokens, given)

    def get_inference_context(self):
        return torch.inference_mode

    def preprocess(self, inputs, max_image_pixels=None, max_new_tokens=None, **limits):
        if not isinstance(inputs, dict):
            raise ValueError('inputs must be a dict {"image_t1": ..., "image_t2": ..., "text": ...}, '
                             f"got {type(inputs).__name__}")
        missing = [key for key in (*IMAGE_KEYS, "text") if inputs.get(key) is None]
        if missing:
            raise ValueError(f"inputs lack {', '.join(missing)}: give image_t1 (earlier), image_t2 (later) and "
                             "text (the change of interest)")
        text = inputs["text"]
        questions = [text] if isinstance(text, str) else list(text)
        if not questions:
            raise ValueError("text is an empty list; ask at least one question")
        if not all(isinstance(question, str) for question in questions):
            raise ValueError("text must be a question or a list of questions (strings)")
        # The request's size and work, before any image is read or decoded.
        encoded = sum(len(inputs[key]) for key in IMAGE_KEYS if isinstance(inputs[key], (bytes, bytearray)))
        left = self.check_request(questions, encoded, max_new_tokens, **limits)
        limit = pixel_limit(max_image_pixels)
        images = []
        for key in IMAGE_KEYS:
            image, url = inputs[key], None
            if is_url(image):  # downloaded within what is left of the byte limit
                url, image = image, _download(image, name=key, max_bytes=left)
                left -= len(image)
            images.append(load_image(image, name=key, max_pixels=limit, url=url))
        model_inputs = dict(self.processor(images_t1=images[0], images_t2=images[1], text=questions))
        model_inputs["single_question"] = isinstance(text, str)
        return model_inputs

    def _forward(self, model_inputs, max_new_tokens=None):
        single = model_inputs.pop("single_question")
        with self._decoding_slots:
            outputs = self.model.generate(**model_inputs,
                                          max_new_tokens=max_new_tokens or self.default_max_new_tokens)
            # Masks are resized on the model's device; what leaves _forward is plain text and numpy.
            results = self.processor.post_process_generation(outputs)
        return {"results": results, "single_question": single}

    def postprocess(self, model_outputs):
        results = []
        for result in model_outputs["results"]:
            results.append({
                "text": result["text"],
                "raw_text": result["raw_text"],
                **_mask_fields(result),
                "targets": [{"label": target["label"], **_mask_fields(target)}
                            for target in result.get("targets") or []],
            })
        return results[0] if model_outputs["single_question"] else results


def _mask_fields(result: dict) -> dict:
    """An answer's or a target's mask as a 0/255 image, its changed share and its two confidences."""
    mask = result["mask"]
    return {"mask": Image.fromarray(mask.astype(np.uint8) * 255), "changed_fraction": float(mask.mean()),
            "mask_confidence": result.get("mask_confidence"), "seg_probability": result.get("seg_probability")}
