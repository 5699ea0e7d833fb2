"""ReasonCD in the browser: upload two dates of one place, ask about a change, get the answer and the change map.

    python app.py                                       # runs/quickstart/model (an untrained one until trained)
    python app.py --model exports/mine                  # any ReasonCD folder ...
    python app.py --model ORG/NAME --host 0.0.0.0       # ... or Hub id (a Space: set REASONCD_MODEL instead)
    python app.py --model ORG/NAME --quantize 4         # the language model in 4 bits (or $REASONCD_QUANTIZE)

Asking several questions about the same pair reuses the encoded images: CLIP and SAM run once per pair.
"""

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from reasoncd.loading import HUB_ID, add_quantize_argument, require_bitsandbytes

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an analyst's machine

REPO = Path(__file__).resolve().parent
DEFAULT_MODEL = REPO / "runs" / "quickstart" / "model"
# Shown while DEFAULT_MODEL does not exist; its own folder, so that train.py's run folder stays train.py's.
UNTRAINED_MODEL = REPO / "runs" / "untrained-tiny"
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


def resolve_model(reference: str) -> tuple[str, str | None]:
    """A local folder or Hub id to load, and a note for the page. Without the default model, an untrained tiny one
    in UNTRAINED_MODEL (built there once) shows the interface."""
    path = Path(reference)
    if path.exists():
        return str(path), None
    if path.resolve() == DEFAULT_MODEL:
        from reasoncd.build import build_tiny, save_checkpoint
        from reasoncd.io import read_marker

        if "app.py" not in read_marker(UNTRAINED_MODEL):
            print(f"no model at {path}: building an untrained tiny one in {UNTRAINED_MODEL} (train one with "
                  "`python train.py`)")
            save_checkpoint(*build_tiny(seed=0), UNTRAINED_MODEL, command="app.py")
        return str(UNTRAINED_MODEL), ("This is an **untrained tiny model**, shown because no trained one was found "
                                      f"at `{path}`: its answers and masks are random. Train one with "
                                      "`python train.py`.")
    if HUB_ID.fullmatch(reference):
        return reference, None
    raise SystemExit(f"--model {reference}: no such folder (and not a Hub id ORG/NAME)")


def load_detector(reference: str, quantize: int | None = None) -> tuple[ChangeDetector, str | None]:
    from transformers import GenerationConfig

    from reasoncd.loading import load_model

    location, note = resolve_model(reference)
    model, processor = load_model(location, quantize=quantize)  # checks a local folder first
    try:
        max_new_tokens = GenerationConfig.from_pretrained(location).max_new_tokens or 64
    except OSError:  # folders written by train.py carry no generation_config.json
        max_new_tokens = 64
    return ChangeDetector(model, processor, max_new_tokens), note


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("REASONCD_MODEL", str(DEFAULT_MODEL)),
                        help="model folder or Hub id (default: $REASONCD_MODEL, else runs/quickstart/model)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    add_quantize_argument(parser, default=os.environ.get("REASONCD_QUANTIZE") or None)
    args = parser.parse_args(argv)
    try:
        require_bitsandbytes(args.quantize)  # $REASONCD_QUANTIZE bypasses argparse's choices
        detector, note = load_detector(args.model, quantize=args.quantize)
    # a missing or incomplete folder, a Hub id that cannot be reached, or --quantize without bitsandbytes
    except (OSError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    demo = build_demo(detector, args.model, note)
    demo.queue().launch(server_name=args.host, server_port=args.port, show_error=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
