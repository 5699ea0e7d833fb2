"""The change-detection pipeline as a server uses it: many threads at once give what one request at a time gives,
no more than `max_concurrent` requests decode at once, and images above the pixel limit are refused before they
are decoded."""

import contextlib
import io
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import pipeline_reasoncd
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


# ------------------------------------------------------------------------------------- requests bounded in work


@contextlib.contextmanager
def nothing_decoded(monkeypatch):
    """Within the block no image may be opened: a request's limits must refuse it first."""
    def load_image(*args, **kwargs):
        raise AssertionError("an image was opened before the request's limits were checked")

    with monkeypatch.context() as patched:
        patched.setattr(pipeline_reasoncd, "load_image", load_image)
        yield


def test_too_many_questions_are_refused_before_any_image_is_read(detector, monkeypatch):
    t1, t2 = image_pair(32, 32, seed=0)
    request = {"image_t1": _png(t1), "image_t2": _png(t2), "text": [f"question {k}" for k in range(10_000)]}
    with nothing_decoded(monkeypatch), pytest.raises(ValueError, match=(
            r"the request asks 10,000 questions, more than the limit of 16 per request \(max_questions, or "
            r"\$REASONCD_MAX_QUESTIONS\): send them in several")):
        detector(request)
    monkeypatch.setenv("REASONCD_MAX_QUESTIONS", "1")  # the environment, read request by request
    with nothing_decoded(monkeypatch), pytest.raises(ValueError, match="the request asks 2 questions, more than the "
                                                                       "limit of 1"):
        detector({**request, "text": ["roads", "water"]})
    assert len(detector({"image_t1": t1, "image_t2": t2, "text": ["roads", "water"]}, max_new_tokens=1,
                        max_questions=2)) == 2  # a call's own limit overrides it


def test_answer_tokens_are_bounded_per_request(detector, monkeypatch):
    t1, t2 = image_pair(32, 32, seed=0)
    request = {"image_t1": t1, "image_t2": t2, "text": ["roads", "water", "new buildings"]}
    with nothing_decoded(monkeypatch), pytest.raises(ValueError, match=(
            r"the request may generate 3 questions x 3 max_new_tokens = 9 answer tokens, more than the limit of 8 "
            r"per request \(max_answer_tokens")):
        detector({**request, "image_t1": _png(t1)}, max_new_tokens=3, max_answer_tokens=8)
    assert [len(a["raw_text"].split()) for a in detector(request, max_new_tokens=2, max_answer_tokens=6)] == [2] * 3
    # Without max_new_tokens the checkpoint's default counts: the model's generation_config (64 here) x 3.
    with pytest.raises(ValueError, match=r"3 questions x \d+ max_new_tokens"):
        detector(request, max_answer_tokens=8)


def test_a_request_bringing_too_many_bytes_is_refused_before_decoding(detector, monkeypatch):
    big = b"\0" * 3000
    with nothing_decoded(monkeypatch), pytest.raises(ValueError, match=(
            r"the request brings 6,005 bytes of images and text, more than the limit of 5,000 \(max_request_bytes, "
            r"or \$REASONCD_MAX_REQUEST_BYTES\)")):
        detector({"image_t1": big, "image_t2": big, "text": "roads"}, max_request_bytes=5000)
    monkeypatch.setenv("REASONCD_MAX_REQUEST_BYTES", "100")
    t1, t2 = image_pair(32, 32, seed=0)
    with pytest.raises(ValueError, match="more than the limit of 100"):
        detector({"image_t1": _png(t1), "image_t2": _png(t2), "text": "roads"}, max_new_tokens=1)
    # Arrays and files on disk bring no encoded bytes: the pixel limit bounds them.
    assert detector({"image_t1": t1, "image_t2": t2, "text": "roads"}, max_new_tokens=1)["mask"].size == (32, 32)


def test_a_download_stops_at_the_request_s_byte_limit(detector, monkeypatch):
    import huggingface_hub

    served = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self):
            pass

        def iter_bytes(self):
            for _ in range(1000):  # a "100 MB" body, in 1,000-byte pieces
                served.append(1000)
                yield b"\0" * 1000

    class Session:
        def stream(self, method, url, **kwargs):
            assert method == "GET"
            return Response()

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Session())
    t1, _ = image_pair(32, 32, seed=0)
    with pytest.raises(ValueError, match=r"image_t2: 'https://example.org/huge.tif' sends more than the 9,995 bytes "
                                         r"left of the request's limit \(max_request_bytes"):
        detector({"image_t1": t1, "image_t2": "https://example.org/huge.tif", "text": "roads"},
                 max_request_bytes=10_000)
    assert sum(served) <= 11_000  # the rest was never downloaded


def test_bad_limits_are_refused_when_the_pipeline_is_made(detector, monkeypatch):
    make = lambda **limits: ReasonCDChangeDetectionPipeline(  # noqa: E731
        model=detector.model, processor=detector.processor, tokenizer=detector.processor.tokenizer, **limits)
    with pytest.raises(ValueError, match="max_questions=0: expected a positive whole number of questions"):
        make(max_questions=0)
    monkeypatch.setenv("REASONCD_MAX_ANSWER_TOKENS", "many")
    with pytest.raises(ValueError, match="REASONCD_MAX_ANSWER_TOKENS='many': expected a positive whole number of "
                                         "tokens"):
        make()
    monkeypatch.delenv("REASONCD_MAX_ANSWER_TOKENS")
    strict = make(max_questions=1)
    t1, t2 = image_pair(32, 32, seed=0)
    with pytest.raises(ValueError, match="the request asks 2 questions, more than the limit of 1"):
        strict({"image_t1": t1, "image_t2": t2, "text": ["roads", "water"]}, max_new_tokens=1)


def test_oversized_requests_are_refused_while_normal_ones_keep_being_answered(detector):
    requests = _requests()
    expected = [_comparable(detector(request, max_new_tokens=MAX_NEW_TOKENS)) for request in requests]
    oversized = [{**requests[0], "text": ["roads"] * 1000},
                 {**requests[1], "image_t1": b"\0" * 70_000_000}]  # above the default 64,000,000 bytes

    def serve(thread: int):
        if thread % 2:
            request = oversized[thread // 2 % 2]
            with pytest.raises(ValueError, match="more than the limit"):
                detector(request, max_new_tokens=MAX_NEW_TOKENS)
            return None
        index = thread // 2 % len(requests)
        return index, _comparable(detector(requests[index], max_new_tokens=MAX_NEW_TOKENS))

    with ThreadPoolExecutor(THREADS) as pool:
        answered = [item for item in pool.map(serve, range(4 * THREADS)) if item is not None]
    assert len(answered) == 2 * THREADS
    for index, answers in answered:
        assert answers == expected[index]


def test_images_on_paths_with_spaces_and_non_ascii_names_are_read(detector, tmp_path):
    t1, t2 = image_pair(32, 40, seed=2)
    folder = tmp_path / "Zürich 2016 – 变化"
    folder.mkdir()
    Image.fromarray(t1).save(folder / "avant été.png")
    Image.fromarray(t2).save(folder / "après été.png")
    result = detector({"image_t1": str(folder / "avant été.png"), "image_t2": folder / "après été.png",
                       "text": "neue Gebäude"}, max_new_tokens=1)
    assert result["mask"].size == (40, 32)
