"""The browser demo's work (app.py is its command line): a detector that keeps the last pair's encoding for the
next question, and the Gradio page around it. Uploads are read by the reader `predict.py` uses (PNG, JPEG, GeoTIFF;
16-bit, multispectral and grey images converted), and every refusal is a message on the page that stays until the
next action, with the previous result cleared."""

import hashlib
import os
import re
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
EXAMPLE_PAIRS = (3, 11)  # synthetic pairs (of the built-in generator) offered as examples
DEMO_PARAMETERS = 100_000_000  # a model smaller than this is a demonstration model (the tiny preset: ~10 M)
SHRINK_NOTE_FACTOR = 4  # an image this many times larger than the model's frame gets a pointer to predict_scene.py
UPLOAD_TYPES = ["image", ".tif", ".tiff"]
# Screen-reader names and alt texts, set on Gradio's generic elements by a script in the page.
ACCESSIBLE_NAMES = {"#image_t1 input[type=file]": "Upload T1, the earlier image",
                    "#image_t2 input[type=file]": "Upload T2, the later image",
                    "#preview_t1 img": "T1 as the model reads it", "#preview_t2 img": "T2 as the model reads it",
                    "#mask img": "Change mask: changed pixels white, unchanged black",
                    "#overlay img": "T2 with the changed pixels painted red (several changes: one colour each, "
                                    "named under the answer)"}


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
        "targets", "reused" (bool), "encode_seconds"}` for one question; `text` is the answer for a reader, `raw_text`
        the model's own with `[SEG]`; `targets` one `{"label", "mask", "changed_fraction", "mask_confidence",
        "seg_probability"}` per `[SEG]` (`mask` is their union); the confidences as
        `ReasonCDProcessor.post_process_generation` defines them (None from a checkpoint whose code predates them)."""
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
        from reasoncd.loading import with_readable_text, with_targets

        result = with_targets(with_readable_text(self.processor.post_process_generation(outputs)[0]))
        return {**result, "reused": reused, "encode_seconds": encode_seconds}


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
    """What the page says under an answer, in plain words: the changed share, the confidences, the legend of the
    targets when the answer names several (each in its colour on the overlay), whether the answer and the map
    disagree, how the uploads were converted, and a pointer to predict_scene.py when the images were shrunk far
    below their size to fit the model's `frame`."""
    from reasoncd.data.samples import SEG
    from reasoncd.evaluation.figures import target_legend

    mask = result["mask"]
    encoding = ("reused the encoded images of this pair" if result["reused"]
                else f"images encoded in {result['encode_seconds']:.2f} s")
    lines = [f"**{result['changed_fraction']:.2%}** of the pixels changed · {encoding}"]
    if result["mask_confidence"] is not None:
        lines[0] += (f" · confidence of the map {result['mask_confidence']:.2f}, "
                     f"probability that the answer points at a change {result['seg_probability']:.2f}")
    targets = result.get("targets") or []
    if len(targets) > 1:
        lines.append("Each change has its own colour on the overlay: " + "; ".join(
            f"{target_legend(k)}: **{target['label']}** ({target['changed_fraction']:.2%} of the pixels"
            + ("" if target["mask_confidence"] is None else f", confidence {target['mask_confidence']:.2f}") + ")"
            for k, target in enumerate(targets)))
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

    from reasoncd.evaluation.figures import overlay_targets
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
        painted = overlay_targets(image_t2, [target["mask"] for target in result["targets"]] or [mask])
        return result["text"], (mask.astype(np.uint8) * 255), painted, str(path), status

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
