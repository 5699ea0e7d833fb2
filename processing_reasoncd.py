"""ReasonCD processor: prompt building, CLIP and SAM preprocessing of both dates, and post-processing.

The prompt is the processor's chat template (the paper's wording in LLaMA-2 chat form); `<T1>`/`<T2>` placeholders
are expanded to `image_seq_length` tokens each, which the model replaces with projected CLIP features.
"""

import os
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

try:
    from .configuration_reasoncd import NEW_TOKENS, ReasonCDSamConfig
    from .geometry_reasoncd import sam_resized_shape, upscale_mask_logits
except ImportError:
    from configuration_reasoncd import NEW_TOKENS, ReasonCDSamConfig
    from geometry_reasoncd import sam_resized_shape, upscale_mask_logits

logger = logging.get_logger(__name__)

T1_TOKEN, T2_TOKEN, P_START_TOKEN, P_END_TOKEN, SEG_TOKEN = NEW_TOKENS
# What a reader sees where `[SEG]` is the object of the sentence ("It's [SEG].").
SEG_STANDIN = "the area marked in the mask"
SEG_ONLY_ANSWER = "The change is marked in the mask."
_ENDS_IN_VERB = re.compile(r"(?:^|\s)(?:it's|it is|is|are|was|were)$", re.IGNORECASE)
# A target's label is the last clause before its [SEG], after its last determiner (`target_labels`).
_CLAUSE_BREAK = re.compile(r"[.;:,!?]|\sand\s")
_DETERMINER = re.compile(r"\b(?:the|these|those)\s+", re.IGNORECASE)

# The paper's prompt: the task first, the temporal order of the two placeholders, the CRoI between <p> and </p>,
# and the closing request. An assistant turn is the answer followed by </s>.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "[INST] For the Change Detection task, <T1> is the image taken earlier (T1) and <T2> is the image taken "
    "later (T2) of the same place. The change of interest is <p>{{ message['content'] }}</p>. "
    "Please produce the changemap for me. [/INST]"
    "{% elif message['role'] == 'assistant' %}"
    " {{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

SAM_PIXEL_MEAN = tuple(ReasonCDSamConfig().pixel_mean)
SAM_PIXEL_STD = tuple(ReasonCDSamConfig().pixel_std)


# The pixel limit of images decoded whole: a small file can claim a huge size (a "decompression bomb") and would
# fill the memory. The remote code's pipeline and endpoint handler apply it here; reasoncd/data/images.py applies
# the same variable and default to files read by the scripts (a test keeps the two equal).
DEFAULT_MAX_IMAGE_PIXELS = 2**28  # 268 million pixels, e.g. 16,384 x 16,384: 805 MB as 8-bit RGB
MAX_IMAGE_PIXELS_VARIABLE = "REASONCD_MAX_IMAGE_PIXELS"


def positive_setting(given, *, name: str, variable: str, default: int, unit: str, example: int) -> int:
    """A limit: `given` when not None, else $`variable`, else `default`; a whole number of `unit` above 0."""
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise ValueError(f"{name}={given!r}: expected a positive whole number of {unit}")
        return given
    value = os.environ.get(variable, "").strip().replace("_", "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{variable}={value!r}: expected a positive whole number of {unit}, e.g. {example}")
    return int(value)


def max_image_pixels(limit: int | None = None) -> int:
    """The pixel limit: `limit` when given, else $REASONCD_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS."""
    return positive_setting(limit, name="max_image_pixels", variable=MAX_IMAGE_PIXELS_VARIABLE,
                            default=DEFAULT_MAX_IMAGE_PIXELS, unit="pixels", example=1000000000)


def check_image_pixels(name: str, width: int, height: int, limit: int) -> None:
    """Refuse an image of more than `limit` pixels (call it on a header's size, before decoding)."""
    if width * height > limit:
        raise ValueError(
            f"{name}: the image is {width:,} x {height:,} = {width * height:,} pixels, more than the limit of "
            f"{limit:,} (which stops damaged or malicious files from filling the memory). For a real scene this "
            f"large, raise the limit ({MAX_IMAGE_PIXELS_VARIABLE}={width * height} or max_image_pixels), or cut "
            "it into tiles")


def stretch_to_uint8(array: np.ndarray, max_samples: int = 1_000_000) -> tuple[np.ndarray, float, float]:
    """
    16-bit, 32-bit or float imagery to 8 bit by a linear 2-98 percentile stretch (robust to a few hot pixels;
    11-12-bit sensor data would come out nearly black under a plain /257). Percentiles come from an even subsample
    of large images; NaN becomes 0. Returns the image and the stretch's low/high values.
    """
    step = max(1, int((array.shape[0] * array.shape[1] / max_samples) ** 0.5))
    sample = array[::step, ::step].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    low, high = np.percentile(sample, (2, 98)) if sample.size else (0.0, 1.0)
    high = max(float(high), float(low) + float(np.finfo(np.float32).eps))  # a constant image maps to black
    scaled = (array.astype(np.float32) - low) * (255.0 / (high - low))
    return np.nan_to_num(np.clip(scaled, 0, 255), nan=0.0).round().astype(np.uint8), float(low), high


def to_rgb_array(image, *, name: str = "image") -> np.ndarray:
    """A PIL image or HxW(x1/3/4) array as HxWx3 uint8; grayscale, alpha and 16-bit inputs are converted (logged)."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            image = np.asarray(image, dtype=np.float64)
        elif image.mode != "RGB":
            logger.info(f"{name}: {image.mode} image converted to RGB")
            return np.array(image.convert("RGB"))
        else:
            return np.array(image)
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{name}: expected an HxW or HxWx3 image, got an array of shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 4:
        logger.info(f"{name}: alpha channel dropped")
        array = array[..., :3]
    if array.ndim == 2 or array.shape[2] == 1:
        logger.info(f"{name}: grayscale image replicated to RGB")
        array = np.repeat(array.reshape(array.shape[0], array.shape[1], 1), 3, axis=2)
    if array.dtype != np.uint8:
        array, low, high = stretch_to_uint8(array)
        logger.warning(f"{name}: image scaled to 8 bit by a 2-98 percentile stretch ({low:g} to {high:g})")
    # torch refuses to share memory with read-only arrays (as decoded images often are): copy those.
    return np.ascontiguousarray(array) if array.flags.writeable else np.array(array)


def mask_confidence(probabilities: torch.Tensor, mask: torch.Tensor) -> float:
    """
    How sure a decoded mask is, in [0, 1], from the decoder's change probabilities (sigmoid of the logits) at the
    mask's size: their mean over the predicted change region (each above 0.5 there), or, when the region is empty,
    the mean of `1 - probability` over the whole image (how sure the decoder is that nothing changed).
    """
    probabilities = probabilities.float()
    if bool(mask.any()):
        return float(probabilities[mask].mean())
    return float((1.0 - probabilities).mean())


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


class ReasonCDProcessor(ProcessorMixin):
    r"""
    Builds model inputs from image pairs and questions, and turns `generate` outputs into answers and masks.

    Args:
        image_processor ([`CLIPImageProcessor`]): CLIP preprocessing, configured to resize to a fixed square
            without centre-cropping (a change-detection tile must be seen whole).
        tokenizer: the language model's tokenizer, holding the five ReasonCD tokens as single ids.
        chat_template (`str`, *optional*): Jinja template of the prompt; defaults to the paper's wording.
        image_seq_length (`int`): image tokens per date (the model config's `image_seq_length`).
        sam_image_size (`int`): SAM's input frame (longest side after resizing; the rest is zero padding).
        sam_pixel_mean, sam_pixel_std (`list[float]`): SAM's normalisation in 0..255 units.
        max_sequence_length (`int`, *optional*): the language model's context; longer prompts are refused.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_seq_length: int = 256,
        sam_image_size: int = 1024,
        sam_pixel_mean=SAM_PIXEL_MEAN,
        sam_pixel_std=SAM_PIXEL_STD,
        max_sequence_length: int | None = None,
        **kwargs,
    ):
        self.image_seq_length = int(image_seq_length)
        self.sam_image_size = int(sam_image_size)
        self.sam_pixel_mean = list(sam_pixel_mean)
        self.sam_pixel_std = list(sam_pixel_std)
        self.max_sequence_length = max_sequence_length
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE)
        self.token_ids = {}
        for token in NEW_TOKENS:
            ids = tokenizer.encode(token, add_special_tokens=False)
            # One id that is the token itself (not `<unk>`, which a word-level vocabulary would give).
            if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids[0]) != token:
                raise ValueError(
                    f"the tokenizer encodes {token!r} as {len(ids)} ids {ids}, not as the token itself; add the "
                    f"ReasonCD tokens with "
                    f"tokenizer.add_tokens({list(NEW_TOKENS)}, special_tokens=True) (build_reasoncd.py does this)"
                )
            self.token_ids[token] = ids[0]

    # --- images ---
    def _sam_pixels(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """segment-anything's pipeline: longest side to `sam_image_size` (PIL bilinear), normalise, pad bottom-right."""
        h, w = image.shape[:2]
        rh, rw = sam_resized_shape(h, w, self.sam_image_size)
        resized = np.array(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
        pixels = torch.from_numpy(resized).permute(2, 0, 1).float()
        mean = torch.tensor(self.sam_pixel_mean).view(3, 1, 1)
        std = torch.tensor(self.sam_pixel_std).view(3, 1, 1)
        pixels = (pixels - mean) / std
        pixels = F.pad(pixels, (0, self.sam_image_size - rw, 0, self.sam_image_size - rh))
        return pixels, (rh, rw)

    def _prepare_pairs(self, images_t1, images_t2):
        t1 = [to_rgb_array(img, name=f"images_t1[{i}]") for i, img in enumerate(_as_list(images_t1))]
        t2 = [to_rgb_array(img, name=f"images_t2[{i}]") for i, img in enumerate(_as_list(images_t2))]
        if len(t1) != len(t2):
            raise ValueError(f"got {len(t1)} T1 images but {len(t2)} T2 images; give one T2 per T1")
        for i, (a, b) in enumerate(zip(t1, t2)):
            if a.shape != b.shape:
                raise ValueError(
                    f"pair {i}: T1 is {a.shape[1]}x{a.shape[0]} but T2 is {b.shape[1]}x{b.shape[0]} (width x height); "
                    "the two dates must be co-registered images of the same size"
                )
        return t1, t2

    def process_images(self, images_t1, images_t2) -> dict:
        """CLIP and SAM inputs for P pairs: `pixel_values_t1/t2`, `sam_pixel_values_t1/t2`, sizes."""
        t1, t2 = self._prepare_pairs(images_t1, images_t2)
        clip = self.image_processor(images=t1 + t2, return_tensors="pt")["pixel_values"]
        sam = [self._sam_pixels(img) for img in t1 + t2]
        pairs = len(t1)
        return {
            "pixel_values_t1": clip[:pairs],
            "pixel_values_t2": clip[pairs:],
            "sam_pixel_values_t1": torch.stack([p for p, _ in sam[:pairs]]),
            "sam_pixel_values_t2": torch.stack([p for p, _ in sam[pairs:]]),
            "reshaped_sizes": torch.tensor([size for _, size in sam[:pairs]], dtype=torch.long),
            "image_sizes": torch.tensor([img.shape[:2] for img in t1], dtype=torch.long),
        }

    # --- text ---
    def build_prompt(self, question: str) -> str:
        """The chat-template prompt for one question, with the image placeholders expanded."""
        prompt = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], chat_template=self.chat_template, tokenize=False
        )
        for token in (T1_TOKEN, T2_TOKEN):
            if prompt.count(token) != 1:
                raise ValueError(f"the chat template must place {token} exactly once, found {prompt.count(token)}")
            prompt = prompt.replace(token, token * self.image_seq_length)
        return prompt

    def _encode_rows(self, questions, answers):
        rows, label_rows = [], []
        for i, question in enumerate(questions):
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"question {i} is empty; describe the change of interest, e.g. 'new buildings'")
            reserved = [token for token in NEW_TOKENS if token in question]
            if reserved:
                raise ValueError(f"question {i} contains the reserved token(s) {', '.join(reserved)}; "
                                 "write the change of interest in plain words")
            ids = self.tokenizer.encode(self.build_prompt(question.strip()), add_special_tokens=False)
            labels = [-100] * len(ids)
            if answers is not None:
                answer_ids = self.tokenizer.encode(answers[i].strip() + self.tokenizer.eos_token,
                                                   add_special_tokens=False)
                ids, labels = ids + answer_ids, labels + answer_ids
            if self.max_sequence_length and len(ids) > self.max_sequence_length:
                raise ValueError(
                    f"question {i} makes a sequence of {len(ids)} tokens, more than the model's context of "
                    f"{self.max_sequence_length} (of which {2 * self.image_seq_length} are image tokens); "
                    "shorten the question (or answer) — image tokens and [SEG] are never truncated"
                )
            rows.append(ids)
            label_rows.append(labels)
        return rows, label_rows

    def __call__(
        self,
        images_t1=None,
        images_t2=None,
        text=None,
        answers=None,
        masks=None,
        pair_index=None,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            images_t1, images_t2: a PIL image or HxWx3 uint8 array per date, or lists of them (P pairs).
            text (`str` or `list[str]`): the question(s). With one pair, k questions give k rows about that pair
                (the images are encoded once); otherwise one question per pair.
            answers (`list[str]`, *optional*): training answers; adds `labels` (-100 on prompt and padding).
            masks (*optional*): ground-truth masks, per question one HxW array (any value > 0 = change), or, for an
                answer with several `[SEG]` tokens, a list of them: one per `[SEG]`, in order.
            pair_index (`list[int]`, *optional*): the pair each question is about, for several pairs with several
                questions each.
        Returns: `input_ids`, `attention_mask` (left-padded), `pixel_values_t1/t2`, `sam_pixel_values_t1/t2`,
            `pair_index` (row -> pair), `reshaped_sizes`, `image_sizes` (per pair), and `labels`/`masks` (`masks`:
            `(B, H, W)`, or `(B, K, H, W)` when a question has a list of masks, K the longest list, zero-padded).
        """
        if images_t1 is None or images_t2 is None:
            raise ValueError("ReasonCD needs both images: pass images_t1 (earlier) and images_t2 (later)")
        if text is None:
            raise ValueError("pass text: the change of interest, e.g. 'new buildings'")
        if return_tensors != "pt":
            raise ValueError("ReasonCDProcessor returns PyTorch tensors only (return_tensors='pt')")
        questions = _as_list(text)
        if answers is not None:
            answers = _as_list(answers)
            if len(answers) != len(questions):
                raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
        image_inputs = self.process_images(images_t1, images_t2)
        pairs = image_inputs["pixel_values_t1"].shape[0]
        if pair_index is not None:
            pair_index = torch.as_tensor(pair_index, dtype=torch.long)
            if pair_index.shape != (len(questions),) or int(pair_index.min()) < 0 or int(pair_index.max()) >= pairs:
                raise ValueError(f"pair_index must give each of the {len(questions)} questions a pair in "
                                 f"0..{pairs - 1}, got {pair_index.tolist()}")
        elif pairs == 1:
            pair_index = torch.zeros(len(questions), dtype=torch.long)
        elif pairs == len(questions):
            pair_index = torch.arange(pairs)
        else:
            raise ValueError(f"got {pairs} image pairs and {len(questions)} questions; give one question per "
                             "pair, several questions with a single pair, or pair_index")
        rows, label_rows = self._encode_rows(questions, answers)
        data = {**self._pad_left(rows, label_rows if answers is not None else None), **image_inputs,
                "pair_index": pair_index}
        if masks is not None:
            masks = _as_list(masks)
            if answers is not None:
                for i, (answer, given) in enumerate(zip(answers, masks)):
                    if isinstance(given, (list, tuple)) and len(given) != answer.count(SEG_TOKEN):
                        raise ValueError(f"question {i}: {len(given)} masks for an answer with "
                                         f"{answer.count(SEG_TOKEN)} {SEG_TOKEN}; give one mask per {SEG_TOKEN}")
            data["masks"] = self._stack_masks(masks, len(questions))
        return BatchFeature(data=data)

    def _pad_left(self, rows, label_rows):
        # Left padding keeps every prompt's end aligned for batched greedy generation.
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.unk_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, length - len(row):] = torch.tensor(row)
            attention[i, length - len(row):] = 1
            if label_rows is not None:
                labels[i, length - len(row):] = torch.tensor(label_rows[i])
        out = {"input_ids": input_ids, "attention_mask": attention}
        if label_rows is not None:
            out["labels"] = labels
        return out

    @staticmethod
    def _stack_masks(masks, expected: int) -> torch.Tensor:
        if len(masks) != expected:
            raise ValueError(f"got {len(masks)} masks for {expected} questions")
        per_target = any(isinstance(m, (list, tuple)) for m in masks)
        groups = [[np.asarray(a) for a in m] if isinstance(m, (list, tuple)) else [np.asarray(m)] for m in masks]
        shapes = {a.shape[:2] for group in groups for a in group}
        if len(shapes) > 1:
            raise ValueError(f"masks of one batch must share a size, got {sorted(shapes)}")
        if not shapes:  # only empty lists: answers without [SEG]
            raise ValueError("the masks give no size: pass each question's mask (an empty one where nothing changed)")
        size = shapes.pop()
        width = max(max(len(group) for group in groups), 1)
        stacked = np.zeros((len(groups), width, *size), dtype=bool)
        for row, group in enumerate(groups):
            for k, a in enumerate(group):
                stacked[row, k] = (a if a.ndim == 2 else a.max(axis=2)) > 0
        return torch.from_numpy(stacked if per_target else stacked[:, 0]).float()

    # --- outputs ---
    def decode_answer(self, token_ids) -> str:
        """Answer text with every special token except `[SEG]` removed."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False)
        tokenizer = self.tokenizer
        for token in {tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token,
                      T1_TOKEN, T2_TOKEN, P_START_TOKEN, P_END_TOKEN} - {None}:
            text = text.replace(token, "")
        # `[SEG]` absorbs the space before it when tokenised; give it back for reading.
        return " ".join(text.replace(SEG_TOKEN, f" {SEG_TOKEN}").split())

    @staticmethod
    def readable_answer(text: str) -> str:
        """The answer for a reader. `[SEG]` is the model's pointer to the mask, which is shown beside the text, so
        it is dropped; where it is the object of its sentence ("It's [SEG].") a phrase pointing at the mask stands
        in. "It's the new buildings [SEG]." -> "It's the new buildings."; an answer of `[SEG]` alone ->
        SEG_ONLY_ANSWER."""
        if SEG_TOKEN not in text:
            return text
        pieces = text.split(SEG_TOKEN)
        readable = pieces[0]
        for piece in pieces[1:]:
            before = readable.rstrip()
            if _ENDS_IN_VERB.search(before):
                readable = f"{before} {SEG_STANDIN}{piece}"
            else:
                readable = before.rstrip(":;,").rstrip() + piece  # "... (T2): [SEG]." -> "... (T2)."
        readable = re.sub(r"\s+", " ", readable)
        readable = re.sub(r"\s+([.,;:!?])", r"\1", readable)
        readable = re.sub(r"([.!?])(?:\s*[.,;:!?])+", r"\1", readable).strip(" ,;:")
        return readable if re.search(r"\w", readable) else SEG_ONLY_ANSWER

    @staticmethod
    def target_labels(text: str) -> list[str]:
        """The words that name each `[SEG]`'s target in an answer (raw, with its `[SEG]` tokens), in order: the
        clause before the `[SEG]`, from after its last "the"/"these"/"those". "The new buildings [SEG] and the new
        ponds [SEG]." -> ["new buildings", "new ponds"]; "It's the new buildings [SEG]." -> ["new buildings"]. A
        clause without those words is kept whole; one that names nothing ("...: [SEG].", "It's [SEG].") gives
        "change k"."""
        labels = []
        for k, piece in enumerate(text.split(SEG_TOKEN)[:-1]):
            clause = _CLAUSE_BREAK.split(piece)[-1].strip()
            words = _ENDS_IN_VERB.sub("", _DETERMINER.split(clause)[-1]).strip()  # "It's [SEG]." names nothing
            labels.append(words or f"change {k + 1}")
        return labels

    def _decode_targets(self, target_masks, target_present, reshaped_sizes, target_sizes):
        """Per row, `(bool mask, change probabilities)` of each present target at the row's `(height, width)`.
        `target_masks` `(B, K, h, w)` with `target_present` `(B, K)`, or `(B, h, w)` with `(B,)` (one per row)."""
        if target_masks.dim() == 3:
            target_masks, target_present = target_masks[:, None], torch.as_tensor(target_present)[:, None]
        decoded = []
        for row, (height, width) in enumerate(target_sizes):
            reshaped = reshaped_sizes[row] if reshaped_sizes is not None else \
                sam_resized_shape(height, width, self.sam_image_size)
            targets = []
            for k in range(target_masks.shape[1]):
                if not bool(target_present[row][k]):
                    continue
                logits = upscale_mask_logits(target_masks[row, k].float(), reshaped, (height, width),
                                             self.sam_image_size)
                targets.append((logits > 0, torch.sigmoid(logits)))
            decoded.append(targets)
        return decoded

    def post_process_targets(self, target_masks, target_present, reshaped_sizes, target_sizes) -> list[list]:
        """Every target's low-res logits `(B, K, h, w)` (present where `target_present` `(B, K)`) -> per row, the
        bool masks of its targets at the row's `(height, width)`, in order."""
        return [[mask.cpu().numpy() for mask, _ in targets]
                for targets in self._decode_targets(target_masks, target_present, reshaped_sizes, target_sizes)]

    def post_process_masks(self, pred_masks, seg_present, reshaped_sizes, target_sizes) -> list[np.ndarray]:
        """Low-res logits -> bool masks of each row's `(height, width)`, empty where no `[SEG]`: `(B, h, w)` with
        `seg_present` `(B,)`, or every target's `(B, K, h, w)` with `(B, K)`, whose union each row's mask is."""
        return [np.logical_or.reduce(targets) if targets else np.zeros(size, dtype=bool)
                for size, targets in zip(target_sizes, self.post_process_targets(pred_masks, seg_present,
                                                                                 reshaped_sizes, target_sizes))]

    def post_process_generation(self, outputs, target_sizes=None) -> list[dict]:
        """
        Args:
            outputs: [`ReasonCDGenerateOutput`] of `model.generate`.
            target_sizes (`list[tuple[int, int]]`, *optional*): `(height, width)` per row, or one for all rows;
                defaults to each input's original size.
        Returns: one `{"text": str, "raw_text": str, "mask": bool ndarray (height, width), "mask_confidence": float,
            "seg_probability": float, "targets": list}` per row: `text` is the answer for a reader (see
            `readable_answer`), `raw_text` the model's own with its `[SEG]` tokens. `targets` holds one
            `{"label": str, "mask": bool ndarray, "seg_probability": float, "mask_confidence": float}` per `[SEG]`,
            in order: `label` the words naming it in the answer (`target_labels`), `mask` decoded from its own
            state. `mask` is their union: empty when the answer holds no `[SEG]` (the change of interest is absent;
            `targets` is then empty), the one target's mask when there is one.
            A target's `seg_probability` is the probability the language model gave its `[SEG]`; the answer's is
            the lowest of its targets', or, for an answer without `[SEG]`, the highest it gave `[SEG]` at any step
            (`ReasonCDGenerateOutput`). `mask_confidence` is `mask_confidence()` of a decoded mask (the answer's:
            of the union, with each pixel's highest probability over the targets); for an answer without `[SEG]`
            the map is empty by the language model's decision and its confidence is `1 - seg_probability`. All are
            in [0, 1], and None for outputs made without `seg_probabilities`.
        """
        rows = outputs.sequences.shape[0]
        if target_sizes is None:
            if outputs.image_sizes is None:
                raise ValueError("pass target_sizes, or the processor's image_sizes to generate")
            target_sizes = outputs.image_sizes.tolist()
        target_sizes = [tuple(int(v) for v in s) for s in target_sizes]
        if len(target_sizes) == 1 and rows > 1:
            target_sizes = target_sizes * rows
        if len(target_sizes) != rows:
            raise ValueError(f"got {len(target_sizes)} target sizes for {rows} generated rows")
        seg_probabilities = getattr(outputs, "seg_probabilities", None)
        target_probabilities = getattr(outputs, "target_seg_probabilities", None)
        if getattr(outputs, "target_masks", None) is not None:
            decoded = self._decode_targets(outputs.target_masks, outputs.target_present, outputs.reshaped_sizes,
                                           target_sizes)
        else:  # an output with one mask per answer
            decoded = self._decode_targets(outputs.pred_masks, outputs.seg_present, outputs.reshaped_sizes,
                                           target_sizes)
            if seg_probabilities is not None:
                target_probabilities = seg_probabilities[:, None]
        results = []
        for row, targets in enumerate(decoded):
            raw = self.decode_answer(outputs.sequences[row])
            labels = self.target_labels(raw)
            seg_probability = None if seg_probabilities is None else float(seg_probabilities[row])
            entries = [{"label": labels[k] if k < len(labels) else f"change {k + 1}", "mask": mask.cpu().numpy(),
                        "seg_probability": None if target_probabilities is None else
                        float(target_probabilities[row][k]),
                        "mask_confidence": mask_confidence(probability, mask)}
                       for k, (mask, probability) in enumerate(targets)]
            if targets:
                union = torch.stack([mask for mask, _ in targets]).any(dim=0)
                highest = torch.stack([probability for _, probability in targets]).amax(dim=0)
                confidence = mask_confidence(highest, union)
                union = union.cpu().numpy()
            else:
                union = np.zeros(target_sizes[row], dtype=bool)
                confidence = None if seg_probability is None else 1.0 - seg_probability
            results.append({"text": self.readable_answer(raw), "raw_text": raw, "mask": union,
                            "mask_confidence": confidence, "seg_probability": seg_probability, "targets": entries})
        return results


__all__ = ["ReasonCDProcessor"]
