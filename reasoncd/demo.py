"""The browser demo's work (app.py is its command line): a detector that keeps the last pair's encoding for the
next question, and the Gradio page around it."""

import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

EXAMPLE_QUESTIONS = [
    ("explicit", "new buildings"),
    ("implicit", "changes that provide more living areas for people"),
    ("with explanation", "changes caused by heavy rainfall, and explain why"),
]


def pair_key(image_t1: np.ndarray, image_t2: np.ndarray) -> str:
    """Identifies a pair by its pixels, so a re-upload of the same files still hits the cache."""
    digest = hashlib.sha256()
    for image in (image_t1, image_t2):
        digest.update(repr((image.shape, image.dtype.str)).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


class ChangeDetector:
    """The model and processor with the last pair's frozen CLIP/SAM features kept for the next question."""

    def __init__(self, model, processor, max_new_tokens: int = 64):
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.encodings = 0
        self._lock = threading.Lock()  # Gradio answers requests in threads; one model, one cache entry
        self._cached_key = None
        self._cached_features = None

    def ask(self, image_t1: np.ndarray, image_t2: np.ndarray, question: str) -> dict:
        """`{"text", "raw_text", "mask" (bool HxW), "changed_fraction", "mask_confidence", "seg_probability",
        "reused" (bool), "encode_seconds"}` for one question; `text` is the answer for a reader, `raw_text` the
        model's own with `[SEG]`; the confidences as `ReasonCDProcessor.post_process_generation` defines them (None
        from a checkpoint whose code predates them)."""
        import torch

        inputs = self.processor(images_t1=image_t1, images_t2=image_t2, text=[question]).to(self.model.device)
        key = pair_key(image_t1, image_t2)
        with self._lock, torch.no_grad():
            reused = key == self._cached_key
            started = time.perf_counter()
            if not reused:
                self._cached_features = self.model.encode_frozen(
                    inputs["pixel_values_t1"], inputs["pixel_values_t2"],
                    inputs["sam_pixel_values_t1"], inputs["sam_pixel_values_t2"])
                self._cached_key = key
                self.encodings += 1
            encode_seconds = time.perf_counter() - started
            outputs = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                          frozen_features=self._cached_features)
        from reasoncd.loading import with_readable_text

        result = with_readable_text(self.processor.post_process_generation(outputs)[0])
        return {"mask_confidence": None, "seg_probability": None, **result,
                "changed_fraction": float(result["mask"].mean()), "reused": reused, "encode_seconds": encode_seconds}


def build_demo(detector: ChangeDetector, model_name: str, note: str | None = None):
    import gradio as gr

    from reasoncd.evaluation.figures import overlay
    from reasoncd.data.samples import SEG
    from reasoncd.io import write_png_atomic

    downloads = Path(tempfile.mkdtemp(prefix="reasoncd-app-"))

    def answer(image_t1, image_t2, question):
        if image_t1 is None or image_t2 is None:
            raise gr.Error("Upload both images: T1 (the earlier date) and T2 (the later date).")
        if not question or not question.strip():
            raise gr.Error("Type a change of interest, e.g. 'new buildings', or pick an example below.")
        try:
            result = detector.ask(image_t1, image_t2, question.strip())
        except ValueError as error:  # the processor's messages say what is wrong with the inputs
            raise gr.Error(str(error)) from None
        mask = result["mask"]
        path = downloads / f"change-mask-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}.png"
        write_png_atomic(path, mask)
        encoding = ("reused the encoded images of this pair" if result["reused"]
                    else f"images encoded in {result['encode_seconds']:.2f} s")
        status = f"**{result['changed_fraction']:.2%}** of the pixels changed · {encoding}"
        if SEG not in result["raw_text"]:
            status += " · the model found no such change: the map is empty"
        if result["mask_confidence"] is not None:
            status += (f" · mask confidence {result['mask_confidence']:.2f}, "
                       f"[SEG] probability {result['seg_probability']:.2f}")
        return result["text"], (mask.astype(np.uint8) * 255), overlay(image_t2, mask), str(path), status

    with gr.Blocks(title="ReasonCD change detection") as demo:
        gr.Markdown(f"# ReasonCD change detection\nModel: `{model_name}`. Upload two co-registered images of the "
                    "same place and describe the change of interest, plainly or implicitly.")
        if note:
            gr.Markdown(f"⚠️ {note}")
        with gr.Row():
            image_t1 = gr.Image(type="numpy", label="T1 (earlier)", sources=["upload", "clipboard"],
                                elem_id="image_t1")
            image_t2 = gr.Image(type="numpy", label="T2 (later)", sources=["upload", "clipboard"],
                                elem_id="image_t2")
        question = gr.Textbox(label="Change of interest", placeholder="e.g. new buildings", elem_id="question")
        gr.Examples([[q] for _, q in EXAMPLE_QUESTIONS], inputs=[question], label="Example questions",
                    example_labels=[f"{kind}: {q}" for kind, q in EXAMPLE_QUESTIONS])
        submit = gr.Button("Detect changes", variant="primary", elem_id="submit")
        answer_box = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            mask_image = gr.Image(label="Change mask", type="numpy", interactive=False, format="png",
                                  elem_id="mask")
            overlay_image = gr.Image(label="Overlay on T2", type="numpy", interactive=False, format="png",
                                     elem_id="overlay")
        mask_file = gr.File(label="Download the mask (PNG, 0/255, the inputs' size)", elem_id="mask_file")
        outputs = [answer_box, mask_image, overlay_image, mask_file, status]
        submit.click(answer, inputs=[image_t1, image_t2, question], outputs=outputs)
        question.submit(answer, inputs=[image_t1, image_t2, question], outputs=outputs)
    return demo
