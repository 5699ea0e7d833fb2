"""The change-detection pipeline as a server uses it: many threads at once give what one request at a time gives,
no more than `max_concurrent` requests decode at once, and images above the pixel limit are refused before they
are decoded."""

import io
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline_reasoncd import DEFAULT_MAX_CONCURRENT, ReasonCDChangeDetectionPipeline
from helpers import image_pair, seg_tiny

THREADS, REQUESTS_PER_THREAD = 8, 25
MAX_NEW_TOKENS = 2


class CountingGenerate:
    """Wraps `model.generate` and records the most calls that were running at the same time."""

    def __init__(self, model) -> None:
        self.generate, self.running, self.most = model.generate, 0, 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self.generate(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture(scope="module")
def detector():
    model, processor = seg_tiny(0)
    model.generate = CountingGenerate(model)
    return ReasonCDChangeDetectionPipeline(model=model, processor=processor, tokenizer=processor.tokenizer,
                                           device=model.device)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _requests() -> list[dict]:
    """Six different requests: three small pairs of different sizes, as arrays or PNG bytes, one or two questions."""
    requests = []
    for seed, (height, width) in enumerate([(48, 64), (64, 40), (56, 56)]):
        t1, t2 = image_pair(height, width, seed=seed)
        requests.append({"image_t1": t1, "image_t2": t2, "text": "new buildings"})
        requests.append({"image_t1": _png(t1), "image_t2": _png(t2),
                         "text": ["changes caused by heavy rainfall, and explain why", "roads"]})
    return requests


def _comparable(result) -> list[tuple]:
    results = result if isinstance(result, list) else [result]
    return [(r["text"], r["raw_text"], np.array(r["mask"]).tobytes(), r["changed_fraction"], r["mask_confidence"],
             r["seg_probability"]) for r in results]


def test_concurrent_requests_answer_as_sequential_ones_with_bounded_decoding(detector):
    requests = _requests()
    sequential = [_comparable(detector(request, max_new_tokens=MAX_NEW_TOKENS)) for request in requests]
    assert detector.model.generate.most == 1
    assert any(np.frombuffer(answer[2], np.uint8).any() for answers in sequential for answer in answers)

    def serve(thread: int) -> list[tuple[int, list[tuple]]]:
        answered = []
        for k in range(REQUESTS_PER_THREAD):
            index = (thread * REQUESTS_PER_THREAD + k) % len(requests)
            answered.append((index, _comparable(detector(requests[index], max_new_tokens=MAX_NEW_TOKENS))))
        return answered

    with ThreadPoolExecutor(THREADS) as pool:
        answered = [item for items in pool.map(serve, range(THREADS)) for item in items]
    assert len(answered) == THREADS * REQUESTS_PER_THREAD
    for index, answers in answered:
        assert answers == sequential[index], index  # bit for bit: text, mask and both confidences
    # Requests overlapped, and never more of them decoded at once than the pipeline allows.
    assert detector.model.generate.most == DEFAULT_MAX_CONCURRENT


def test_every_seg_of_an_answer_is_a_target_with_its_own_mask(detector):
    t1, t2 = image_pair(48, 64, seed=0)
    result = detector({"image_t1": t1, "image_t2": t2, "text": "new buildings and new ponds"}, max_new_tokens=2)
    assert result["raw_text"] == "[SEG] [SEG]" and len(result["targets"]) == 2
    masks = [np.array(target["mask"]) for target in result["targets"]]
    assert all(mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255} for mask in masks)
    assert np.array_equal(np.maximum(*masks), np.array(result["mask"]))
    for target, mask in zip(result["targets"], masks):
        assert target["label"].startswith("change ")  # "[SEG]" alone names nothing
        assert target["changed_fraction"] == pytest.approx(float((mask > 0).mean()))
        assert 0.0 <= target["mask_confidence"] <= 1.0 and 0.0 <= target["seg_probability"] <= 1.0


def test_max_concurrent_is_checked():
    model, processor = seg_tiny(0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_concurrent must be a positive integer"):
            ReasonCDChangeDetectionPipeline(model=model, processor=processor, tokenizer=processor.tokenizer,
                                            max_concurrent=bad)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims `width` x `height` RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_images_above_the_pixel_limit_are_refused(detector, monkeypatch):
    t1, t2 = image_pair(48, 64, seed=0)  # 3,072 pixels
    request = {"image_t1": t1, "image_t2": _png(t2), "text": "new buildings"}
    with pytest.raises(ValueError, match=r"image_t1: the image is 64 x 48 = 3,072 pixels, more than the limit of "
                                         r"3,000 .*REASONCD_MAX_IMAGE_PIXELS=3072 or max_image_pixels"):
        detector(request, max_image_pixels=3000)
    # Encoded images are refused from their header: this one claims 8,000 x 7,000 pixels in 65 bytes.
    with pytest.raises(ValueError, match=r"image_t2: the image is 8,000 x 7,000 = 56,000,000 pixels, more than "
                                         r"the limit of 50,000,000"):
        detector({**request, "image_t2": _png_claiming(8_000, 7_000)}, max_image_pixels=50_000_000)
    # The environment's limit applies when none is given; the call's overrides it.
    monkeypatch.setenv("REASONCD_MAX_IMAGE_PIXELS", "3_000")
    with pytest.raises(ValueError, match="image_t1: the image is 64 x 48"):
        detector(request, max_new_tokens=MAX_NEW_TOKENS)
    assert detector(request, max_new_tokens=MAX_NEW_TOKENS, max_image_pixels=3072)["mask"].size == (64, 48)
    monkeypatch.setenv("REASONCD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="REASONCD_MAX_IMAGE_PIXELS='lots': expected a positive whole number"):
        ReasonCDChangeDetectionPipeline(model=detector.model, processor=detector.processor,
                                        tokenizer=detector.processor.tokenizer)
    with pytest.raises(ValueError, match="max_image_pixels=0: expected a positive whole number"):
        detector(request, max_image_pixels=0)


def test_a_limit_given_when_the_pipeline_is_made_applies_to_every_call(detector):
    strict = ReasonCDChangeDetectionPipeline(model=detector.model, processor=detector.processor,
                                             tokenizer=detector.processor.tokenizer, max_image_pixels=2000)
    t1, t2 = image_pair(40, 48, seed=1)  # 1,920 pixels: within
    assert strict({"image_t1": t1, "image_t2": t2, "text": "roads"}, max_new_tokens=1)["mask"].size == (48, 40)
    t1, t2 = image_pair(48, 48, seed=1)  # 2,304 pixels: above
    with pytest.raises(ValueError, match="more than the limit of 2,000"):
        strict({"image_t1": Image.fromarray(t1), "image_t2": t2, "text": "roads"}, max_new_tokens=1)


def test_pillows_own_limit_is_reported_clearly(detector):
    """Above Pillow's decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS), Pillow refuses first."""
    t1, _ = image_pair(48, 64, seed=0)
    with pytest.raises(ValueError, match=r"image_t2: the \d+ bytes given are refused by Pillow's decompression-bomb "
                                         r"limit .*PIL\.Image\.MAX_IMAGE_PIXELS"):
        detector({"image_t1": t1, "image_t2": _png_claiming(100_000, 100_000), "text": "roads"})
