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
"""

import io
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import GenerationConfig, Pipeline

try:
    from .processing_reasoncd import check_image_pixels
    from .processing_reasoncd import max_image_pixels as pixel_limit
except ImportError:
    from processing_reasoncd import check_image_pixels
    from processing_reasoncd import max_image_pixels as pixel_limit

IMAGE_KEYS = ("image_t1", "image_t2")
DEFAULT_MAX_NEW_TOKENS = 64
# Requests decoding at once in one pipeline. Each holds its own activations and KV cache (about 0.3 GiB for
# reasoncd-7b in bf16); on the CPU of `benchmarks/bench.py serve`, two get 80-100 % of the throughput eight get.
DEFAULT_MAX_CONCURRENT = 2


def load_image(image, *, name: str, max_pixels: int):
    """
    A path, http(s) URL or encoded bytes is opened, its header's size checked against `max_pixels`, then decoded
    into a PIL image; PIL images and arrays pass the same size check unchanged (the processor converts them).
    """
    if isinstance(image, Path):
        image = str(image)
    if isinstance(image, (bytes, bytearray)):
        source, shown = io.BytesIO(image), f"the {len(image):,} bytes given are"
    elif isinstance(image, str):
        shown = f"{image!r} is"
        if image.startswith(("http://", "https://")):
            from huggingface_hub import get_session

            response = get_session().get(image, timeout=30, follow_redirects=True)
            response.raise_for_status()
            source = io.BytesIO(response.content)
        elif Path(image).is_file():
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
    defines them). Call parameters: `max_new_tokens` (default: the checkpoint's generation_config.json) and
    `max_image_pixels`, which may also be given when the pipeline is made, as may `max_concurrent` (requests
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
        # A bad $REASONCD_MAX_IMAGE_PIXELS fails when the pipeline is made, not at the first request.
        pixel_limit(self._preprocess_params.get("max_image_pixels"))
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
        if kwargs:
            raise TypeError(f"unknown change-detection parameters: {', '.join(sorted(kwargs))}")
        preprocess, forward = {}, {}
        if max_new_tokens is not None:
            if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
            forward["max_new_tokens"] = max_new_tokens
        if max_image_pixels is not None:
            preprocess["max_image_pixels"] = pixel_limit(max_image_pixels)
        return preprocess, forward, {}

    def get_inference_context(self):
        return torch.inference_mode

    def preprocess(self, inputs, max_image_pixels=None):
        if not isinstance(inputs, dict):
            raise ValueError('inputs must be a dict {"image_t1": ..., "image_t2": ..., "text": ...}, '
                             f"got {type(inputs).__name__}")
        missing = [key for key in (*IMAGE_KEYS, "text") if inputs.get(key) is None]
        if missing:
            raise ValueError(f"inputs lack {', '.join(missing)}: give image_t1 (earlier), image_t2 (later) and "
                             "text (the change of interest)")
        limit = pixel_limit(max_image_pixels)
        images = [load_image(inputs[key], name=key, max_pixels=limit) for key in IMAGE_KEYS]
        text = inputs["text"]
        questions = [text] if isinstance(text, str) else list(text)
        if not questions:
            raise ValueError("text is an empty list; ask at least one question")
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
