"""ReasonCD in the browser: upload two dates of one place, ask about a change, get the answer and the change map.

    python app.py                                       # runs/quickstart/model (an untrained one until trained)
    python app.py --model exports/mine                  # any ReasonCD folder ...
    python app.py --model ORG/NAME --host 0.0.0.0       # ... or Hub id (a Space: set REASONCD_MODEL instead)
    python app.py --model ORG/NAME --quantize 4         # the language model in 4 bits (or $REASONCD_QUANTIZE)

Asking several questions about the same pair reuses the encoded images: CLIP and SAM run once per pair. Uploads are
read by the reader `predict.py` uses (PNG, JPEG, GeoTIFF; 16-bit, multispectral and grey images converted), and
every refusal is a message on the page that stays until the next action, with the previous result cleared.
"""

import argparse
import hashlib
import os
import re
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
EXAMPLE_PAIRS = (3, 11)  # synthetic pairs (of the built-in generator) offered as examples
DEMO_PARAMETERS = 100_000_000  # a model smaller than this is a demonstration model (the tiny preset: ~10 M)
SHRINK_NOTE_FACTOR = 4  # an image this many times larger than the model's frame gets a pointer to predict_scene.py
UPLOAD_TYPES = ["image", ".tif", ".tiff"]
# Screen-reader names and alt texts, set on Gradio's generic elements by a script in the page.
ACCESSIBLE_NAMES = {"#image_t1 input[type=file]": "Upload T1, the earlier image",
                    "#image_t2 input[type=file]": "Upload T2, the later image",
                    "#preview_t1 img": "T1 as the model reads it", "#preview_t2 img": "T2 as the model reads it",
                    "#mask img": "Change mask: changed pixels white, unchanged black",
                    "#overlay img": "T2 with the changed pixels painted red"}


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


def model_facts(location: str, model, trained_on: str | None = None) -> tuple[str, str | None]:
    """A line about the model for the page (its size and what it was trained on: `trained_on`, else what the
    folder's model card says) and a plain warning for a demonstration model."""
    parameters = sum(p.numel() for p in model.parameters())
    datasets = []
    card = Path(location) / "README.md"
    if card.is_file():  # an exported model's card lists its data sets
        from huggingface_hub import ModelCard

        try:
            datasets = list(ModelCard.load(card).data.datasets or [])
        except (OSError, ValueError, AttributeError):
            datasets = []
    trained = trained_on or (", ".join(datasets) if datasets else "not recorded with the model")
    line = f"{parameters / 1e6:.1f} M parameters; trained on: {trained}."
    warning = None
    if parameters < DEMO_PARAMETERS:
        warning = ("This is a **tiny demonstration model**"
                   + (" trained on synthetic images" if "synthetic" in trained.lower() else "")
                   + ": it shows how the app works, but its answers and change maps are not reliable on real imagery.")
    return line, warning


def plain_message(error: BaseException, names: dict[str, str] | None = None) -> str:
    """An error's message for the page: upload paths on the server replaced by the file names the user chose, and
    the processor's batch positions ("pair 0: ", "question 0 ") dropped (the page has one pair, one question)."""
    message = str(error)
    for path, name in (names or {}).items():
        message = message.replace(path, name)
    return re.sub(r"\b(pair|question) 0:? ", "", message)


def read_upload(path: str | None, which: str) -> tuple[np.ndarray, str | None]:
    """An uploaded file read as predict.py reads it: (H, W, 3) uint8 and a note on how it was converted; raises
    ValueError with a message naming the file as the user knows it."""
    from reasoncd.data.images import read_rgb

    if path is None:
        raise ValueError(f"Upload {which}.")
    try:
        return read_rgb(path)
    except ValueError as error:
        raise ValueError(plain_message(error, {str(path): Path(path).name})) from None


def status_text(result: dict, shape: tuple[int, int], frame: int, converted: dict[str, str | None]) -> str:
    """What the page says under an answer, in plain words: the changed share, the confidences, whether the answer
    and the map disagree, how the uploads were converted, and a pointer to predict_scene.py when the images were
    shrunk far below their size to fit the model's `frame`."""
    from reasoncd.data.samples import SEG

    mask = result["mask"]
    encoding = ("reused the encoded images of this pair" if result["reused"]
                else f"images encoded in {result['encode_seconds']:.2f} s")
    lines = [f"**{result['changed_fraction']:.2%}** of the pixels changed · {encoding}"]
    if result["mask_confidence"] is not None:
        lines[0] += (f" · confidence of the map {result['mask_confidence']:.2f}, "
                     f"probability that the answer points at a change {result['seg_probability']:.2f}")
    if SEG not in result["raw_text"]:
        lines.append("The model found no such change: the map is empty.")
    elif not mask.any():
        lines.append("⚠️ The answer points at a change, but the map marks no pixel: the two disagree, so treat the "
                     "answer with caution.")
    lines += [f"{which} converted: {text}" for which, text in converted.items() if text]
    side = max(shape)
    if side > SHRINK_NOTE_FACTOR * frame:
        lines.append(f"The images ({shape[1]}×{shape[0]} pixels) were shrunk about {side / frame:.0f}× to the "
                     f"model's {frame}-pixel frame, so small changes are lost; for a large scene use "
                     "`predict_scene.py`, which reads it tile by tile at full resolution.")
    return "\n\n".join(lines)


def example_pairs(folder: Path) -> list[list[str]]:
    """[t1 path, t2 path, question] for a few pairs of the synthetic generator, written into `folder`."""
    from reasoncd.data.synthetic import synthesize_pair
    from reasoncd.io import write_png_atomic

    examples = []
    for index in EXAMPLE_PAIRS:
        pair = synthesize_pair(index, seed=0, size=256)
        paths = [folder / f"synthetic-{index}-t1.png", folder / f"synthetic-{index}-t2.png"]
        for path, image in zip(paths, (pair.image1, pair.image2)):
            write_png_atomic(path, image)
        before, after = pair.transitions[0]
        examples.append([str(paths[0]), str(paths[1]),
                         f"{before} that became {after}".replace("_", " ")])
    return examples


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


def page_script() -> str:
    """JavaScript run on page load: names Gradio's generic upload inputs and result images for screen readers
    (ACCESSIBLE_NAMES), again whenever the page changes."""
    names = "; ".join(
        f"document.querySelectorAll({selector!r}).forEach(e => e.setAttribute({attribute!r}, {text!r}))"
        for selector, text in ACCESSIBLE_NAMES.items()
        for attribute in ["alt" if selector.endswith("img") else "aria-label"])
    return ("() => { const name = () => { " + names + " }; name(); "
            "new MutationObserver(name).observe(document.body, {childList: true, subtree: true}); }")


def build_demo(detector: ChangeDetector, model_name: str, note: str | None = None, facts: str | None = None,
               warning: str | None = None):
    import gradio as gr

    from reasoncd.evaluation.figures import overlay
    from reasoncd.io import write_png_atomic

    downloads = Path(tempfile.mkdtemp(prefix="reasoncd-app-"))
    examples = example_pairs(downloads)
    frame = detector.processor.sam_image_size
    empty = ("", None, None, None, "")  # answer, mask, overlay, download, status: a refusal clears the last result

    def refusal(message: str) -> tuple:
        return (*empty[:-1], f"⚠️ **Cannot answer:** {message}")

    def preview(path, which):
        """An upload read now, so a file the app cannot use is named at once; (preview image, message)."""
        if path is None:
            return None, ""
        try:
            image, converted = read_upload(path, which)
        except ValueError as error:
            return None, f"⚠️ **Cannot read {which}:** {error}"
        return image, (f"{which}: {converted}" if converted else "")

    def answer(path_t1, path_t2, question):
        if path_t1 is None or path_t2 is None:
            return refusal("upload both images: T1 (the earlier date) and T2 (the later date).")
        if not question or not question.strip():
            return refusal("type a change of interest, e.g. 'new buildings', or pick an example below.")
        try:
            image_t1, converted_t1 = read_upload(path_t1, "T1")
            image_t2, converted_t2 = read_upload(path_t2, "T2")
            result = detector.ask(image_t1, image_t2, question.strip())
        except ValueError as error:  # the reader's and the processor's messages say what is wrong with the inputs
            return refusal(plain_message(error, {str(path_t1): Path(path_t1).name,
                                                 str(path_t2): Path(path_t2).name}))
        mask = result["mask"]
        path = downloads / f"change-mask-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}.png"
        write_png_atomic(path, mask)
        status = status_text(result, image_t1.shape[:2], frame, {"T1": converted_t1, "T2": converted_t2})
        return result["text"], (mask.astype(np.uint8) * 255), overlay(image_t2, mask), str(path), status

    with gr.Blocks(title="ReasonCD change detection") as demo:
        gr.Markdown(f"# ReasonCD change detection\nModel: `{model_name}`" + (f" ({facts})" if facts else ".")
                    + " Upload two co-registered images of the same place and describe the change of interest, "
                    "plainly or implicitly.")
        for text in (warning, note):
            if text:
                gr.Markdown(f"⚠️ {text}", elem_id="model_warning" if text == warning else None)
        with gr.Row():
            image_t1 = gr.File(label="T1 (earlier): PNG, JPEG or GeoTIFF", file_types=UPLOAD_TYPES,
                               type="filepath", elem_id="image_t1")
            image_t2 = gr.File(label="T2 (later): PNG, JPEG or GeoTIFF", file_types=UPLOAD_TYPES,
                               type="filepath", elem_id="image_t2")
        with gr.Row():
            preview_t1 = gr.Image(label="T1 as the model reads it", interactive=False, elem_id="preview_t1")
            preview_t2 = gr.Image(label="T2 as the model reads it", interactive=False, elem_id="preview_t2")
        upload_message = gr.Markdown(elem_id="upload_message")
        question = gr.Textbox(label="Change of interest", placeholder="e.g. new buildings", elem_id="question")
        gr.Examples([[q] for _, q in EXAMPLE_QUESTIONS], inputs=[question], label="Example questions",
                    example_labels=[f"{kind}: {q}" for kind, q in EXAMPLE_QUESTIONS])
        gr.Examples(examples, inputs=[image_t1, image_t2, question], label="Example image pairs (synthetic)",
                    example_labels=[f"synthetic pair {index}: {q}" for index, (_, _, q) in zip(EXAMPLE_PAIRS, examples)])
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

        def previews(path_t1, path_t2):
            (shown_t1, message_t1), (shown_t2, message_t2) = preview(path_t1, "T1"), preview(path_t2, "T2")
            return shown_t1, shown_t2, "\n\n".join(m for m in (message_t1, message_t2) if m)

        for upload in (image_t1, image_t2):
            upload.change(previews, inputs=[image_t1, image_t2], outputs=[preview_t1, preview_t2, upload_message])
            upload.change(lambda: empty, outputs=outputs)  # a new image: the last result no longer applies
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
        location = resolve_model(args.model)[0]
        trained_on = ("nothing: random weights" if location == str(UNTRAINED_MODEL) else
                      "the built-in synthetic images (python train.py)" if Path(location).resolve() == DEFAULT_MODEL
                      else None)
        facts, warning = model_facts(location, detector.model, trained_on)
    # a missing or incomplete folder, a Hub id that cannot be reached, or --quantize without bitsandbytes
    except (OSError, ImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    demo = build_demo(detector, args.model, note, facts, warning)
    demo.queue().launch(server_name=args.host, server_port=args.port, show_error=True, js=page_script())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
