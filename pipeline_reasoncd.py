"""The `change-detection` pipeline: two dates of one place and one or more questions -> answer and change mask.

    from transformers import pipeline
    detector = pipeline("change-detection", model="ORG/NAME", trust_remote_code=True)
    detector({"image_t1": "t1.png", "image_t2": "t2.png", "text": "new buildings"})
    # {"text": "It's the new buildings.", "raw_text": "It's the new buildings [SEG].",
    #  "mask": <PIL.Image mode L, 0/255, the inputs' size>, "changed_fraction": 0.031}

`text` may be a list of questions about the same pair: the answer is then a list, and the images are encoded once.
Images may be file paths, http(s) URLs, PIL images or HxWx3 arrays.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import GenerationConfig, Pipeline

IMAGE_KEYS = ("image_t1", "image_t2")
DEFAULT_MAX_NEW_TOKENS = 64


def load_image(image, *, name: str):
    """A path or URL is read into a PIL image; PIL images and arrays pass through (the processor converts them)."""
    if isinstance(image, Path):
        image = str(image)
    if not isinstance(image, str):
        return image
    if image.startswith(("http://", "https://")):
        from huggingface_hub import get_session

        response = get_session().get(image, timeout=30, follow_redirects=True)
        response.raise_for_status()
        source = io.BytesIO(response.content)
    elif Path(image).is_file():
        source = image
    else:
        raise FileNotFoundError(f"{name}: {image!r} is neither an existing file nor an http(s) URL")
    try:
        opened = Image.open(source)
        opened.load()  # decode now, so a broken file fails here with its name
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{name}: {image!r} is not a readable image ({error})") from None
    return opened


class ReasonCDChangeDetectionPipeline(Pipeline):
    """
    Inputs: `{"image_t1": ..., "image_t2": ..., "text": str | list[str]}` (or a list of such dicts).
    Outputs per question: `{"text": str, "raw_text": str, "mask": PIL.Image (mode "L", 0 = unchanged, 255 = change,
    the input size), "changed_fraction": float}`; a list of them when `text` is a list. `text` is the answer for a
    reader, `raw_text` the model's own, with the `[SEG]` token that points at the mask. Call parameter: `max_new_tokens`
    (default: the checkpoint's generation_config.json).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError("the change-detection pipeline needs the ReasonCD processor of the checkpoint")
        self.default_max_new_tokens = self._checkpoint_max_new_tokens()

    def _checkpoint_max_new_tokens(self) -> int:
        # ReasonCD delegates decoding to its language model, so the checkpoint's generation_config.json is read here.
        try:
            generation = GenerationConfig.from_pretrained(self.model.name_or_path)
        except (OSError, ValueError):
            return DEFAULT_MAX_NEW_TOKENS
        return generation.max_new_tokens or DEFAULT_MAX_NEW_TOKENS

    def _sanitize_parameters(self, max_new_tokens=None, **kwargs):
        if kwargs:
            raise TypeError(f"unknown change-detection parameters: {', '.join(sorted(kwargs))}")
        forward = {}
        if max_new_tokens is not None:
            if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
            forward["max_new_tokens"] = max_new_tokens
        return {}, forward, {}

    def preprocess(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError('inputs must be a dict {"image_t1": ..., "image_t2": ..., "text": ...}, '
                             f"got {type(inputs).__name__}")
        missing = [key for key in (*IMAGE_KEYS, "text") if inputs.get(key) is None]
        if missing:
            raise ValueError(f"inputs lack {', '.join(missing)}: give image_t1 (earlier), image_t2 (later) and "
                             "text (the change of interest)")
        images = [load_image(inputs[key], name=key) for key in IMAGE_KEYS]
        text = inputs["text"]
        questions = [text] if isinstance(text, str) else list(text)
        if not questions:
            raise ValueError("text is an empty list; ask at least one question")
        model_inputs = dict(self.processor(images_t1=images[0], images_t2=images[1], text=questions))
        model_inputs["single_question"] = isinstance(text, str)
        return model_inputs

    def _forward(self, model_inputs, max_new_tokens=None):
        single = model_inputs.pop("single_question")
        outputs = self.model.generate(**model_inputs, max_new_tokens=max_new_tokens or self.default_max_new_tokens)
        # Masks are resized on the model's device; what leaves _forward is plain text and numpy.
        return {"results": self.processor.post_process_generation(outputs), "single_question": single}

    def postprocess(self, model_outputs):
        results = []
        for result in model_outputs["results"]:
            mask = result["mask"]
            results.append({
                "text": result["text"],
                "raw_text": result["raw_text"],
                "mask": Image.fromarray(mask.astype(np.uint8) * 255),
                "changed_fraction": float(mask.mean()),
            })
        return results[0] if model_outputs["single_question"] else results
