"""handler.py (Inference Endpoints) on an exported model: real pairs in, base64 PNG masks out; bad requests get
an error message, never a traceback."""

import base64
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import export
from reasoncd.build import save_checkpoint
from handler import EndpointHandler
from helpers import seg_tiny

LEVIR = "LEVIR-CD/ChangeFormer"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("handler")
    save_checkpoint(*seg_tiny(0), root / "model")
    assert export.main(["--run", str(root / "model"), "--output_dir", str(root / "export"),
                        "--max_new_tokens", "3"]) == 0
    return root / "export"


@pytest.fixture(scope="module")
def handler(exported) -> EndpointHandler:
    return EndpointHandler(str(exported))


def _b64(path_or_image) -> str:
    if isinstance(path_or_image, Image.Image):
        buffer = io.BytesIO()
        path_or_image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()
    return base64.b64encode(path_or_image.read_bytes()).decode()


@pytest.fixture(scope="module")
def pair(realcd) -> dict:
    name = sorted((realcd / LEVIR / "A").glob("*.png"))[0].name
    return {"image_t1": _b64(realcd / LEVIR / "A" / name), "image_t2": _b64(realcd / LEVIR / "B" / name)}


def _decode_mask(result: dict) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(result["mask"])))
    assert image.format == "PNG" and image.mode == "L"
    return np.array(image)


def test_answers_a_real_pair(handler, pair):
    result = handler({"inputs": {**pair, "text": "new buildings"}, "parameters": {"max_new_tokens": 2}})
    json.dumps(result)  # what the endpoint sends back
    assert result["raw_text"] == "[SEG] [SEG]"  # max_new_tokens reached the model
    assert result["text"] == "The change is marked in the mask."  # the reader sees no [SEG]
    mask = _decode_mask(result)
    assert mask.shape == (256, 256) and (result["height"], result["width"]) == (256, 256)
    assert set(np.unique(mask)) <= {0, 255} and mask.any()
    assert result["changed_fraction"] == pytest.approx(float((mask > 0).mean()))
    # The model answers [SEG] whatever it is asked (its logit is the only positive one).
    assert 0.99 < result["seg_probability"] <= 1.0
    assert 0.5 < result["mask_confidence"] <= 1.0  # the mean change probability over a non-empty mask
    # Each [SEG] is a target with its own mask and confidences; the answer's mask is their union.
    assert [target["label"] for target in result["targets"]] == ["change 1", "change 2"]
    masks = [_decode_mask(target) for target in result["targets"]]
    assert np.array_equal(np.maximum(*masks), mask) and not np.array_equal(masks[0], masks[1])
    for target, target_mask in zip(result["targets"], masks):
        assert target["changed_fraction"] == pytest.approx(float((target_mask > 0).mean()))
        assert 0.99 < target["seg_probability"] <= 1.0 and 0.5 < target["mask_confidence"] <= 1.0
    assert result["seg_probability"] == pytest.approx(min(t["seg_probability"] for t in result["targets"]))


def test_a_list_of_questions_gives_a_list(handler, pair):
    data_url = "data:image/png;base64," + pair["image_t1"]
    results = handler({"inputs": {**pair, "image_t1": data_url, "text": ["new buildings", "water"]}})
    assert isinstance(results, list) and len(results) == 2
    for result in results:
        assert result["raw_text"] == "[SEG] [SEG] [SEG]"  # the export's generation_config.json default
        assert _decode_mask(result).shape == (256, 256)


@pytest.mark.parametrize("change, message", [
    (lambda p: {"inputs": {"image_t2": p["image_t2"], "text": "roads"}}, "inputs.image_t1 is missing"),
    (lambda p: {"inputs": {**p, "image_t2": "this is not base64!", "text": "roads"}},
     "inputs.image_t2 is not valid base64"),
    (lambda p: {"inputs": {**p, "image_t2": base64.b64encode(b"plain text").decode(), "text": "roads"}},
     "image_t2: the 10 bytes given are not a readable image"),
    (lambda p: {"inputs": {**p, "image_t2": _b64(Image.new("RGB", (128, 256))), "text": "roads"}},
     "must be co-registered"),
    (lambda p: {"inputs": {**p, "text": "  "}}, "inputs.text must be a non-empty question"),
    (lambda p: {"inputs": {**p, "text": []}}, "inputs.text must be a non-empty question"),
    (lambda p: {"inputs": {**p}}, "inputs.text must be a non-empty question"),
    (lambda p: {"image_t1": p["image_t1"]}, 'the request must be {"inputs"'),
    (lambda p: {"inputs": {**p, "text": "roads"}, "parameters": {"max_new_tokens": 0}}, "max_new_tokens must be"),
    (lambda p: {"inputs": {**p, "text": "roads"}, "parameters": {"temperature": 1.0}}, "unknown parameters"),
])
def test_bad_requests_get_a_clear_error(handler, pair, change, message):
    result = handler(change(pair))
    assert set(result) == {"error"}, result
    assert message in result["error"]


def test_quantised_endpoint_from_the_environment(tmp_path, monkeypatch, pair):
    """REASONCD_QUANTIZE=8 loads the exported model's language model in 8 bits and still answers."""
    bnb = pytest.importorskip("bitsandbytes", reason="needs bitsandbytes (pip install -e .[quant])")
    save_checkpoint(*seg_tiny(0), tmp_path / "model")
    assert export.main(["--run", str(tmp_path / "model"), "--output_dir", str(tmp_path / "export"),
                        "--max_new_tokens", "3"]) == 0
    monkeypatch.setenv("REASONCD_QUANTIZE", "3")
    with pytest.raises(ValueError, match="REASONCD_QUANTIZE='3'"):
        EndpointHandler(str(tmp_path / "export"))
    monkeypatch.setenv("REASONCD_QUANTIZE", "8")
    quantised = EndpointHandler(str(tmp_path / "export"))
    model = quantised.detector.model
    assert isinstance(model.language_model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
    assert not isinstance(model.language_model.lm_head, bnb.nn.Linear8bitLt)
    assert not any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.vision_tower.modules())
    result = quantised({"inputs": {**pair, "text": "new buildings"}})
    assert result["raw_text"] == "[SEG] [SEG] [SEG]"
    assert _decode_mask(result).shape == (result["height"], result["width"])


def _png_claiming(width: int, height: int) -> str:
    """Base64 of a PNG of a few dozen bytes whose header claims `width` x `height` RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return base64.b64encode(data).decode()


def test_images_above_the_pixel_limit_are_refused(handler, exported, pair, monkeypatch):
    # A header claiming 8,000 x 7,000 pixels, refused before anything is decoded (the default limit is higher).
    strict = EndpointHandler(str(exported), max_image_pixels=50_000_000)
    result = strict({"inputs": {**pair, "image_t2": _png_claiming(8_000, 7_000), "text": "roads"}})
    assert result == {"error": "image_t2: the image is 8,000 x 7,000 = 56,000,000 pixels, more than the limit of "
                               "50,000,000 (which stops damaged or malicious files from filling the memory). For a "
                               "real scene this large, raise the limit (REASONCD_MAX_IMAGE_PIXELS=56000000 or "
                               "max_image_pixels), or cut it into tiles"}
    # Without a limit of its own the handler follows the environment, request by request.
    monkeypatch.setenv("REASONCD_MAX_IMAGE_PIXELS", "65535")  # the 256 x 256 pair has 65,536 pixels
    assert "image_t1: the image is 256 x 256 = 65,536 pixels" in handler({"inputs": {**pair, "text": "roads"}})["error"]
    monkeypatch.setenv("REASONCD_MAX_IMAGE_PIXELS", "65536")
    assert "error" not in handler({"inputs": {**pair, "text": "roads"}, "parameters": {"max_new_tokens": 1}})


def test_concurrent_requests_get_the_answers_sequential_ones_get(handler):
    """8 threads x 8 requests against one handler, as an endpoint serves them, equal one request at a time (the
    pipeline's own test runs 8 x 25; the handler adds only stateless parsing and encoding)."""
    from helpers import image_pair

    requests = []
    for seed, (height, width) in enumerate([(48, 64), (40, 56), (64, 48)]):
        t1, t2 = (_b64(Image.fromarray(image)) for image in image_pair(height, width, seed=seed))
        requests.append({"inputs": {"image_t1": t1, "image_t2": t2, "text": "new buildings"},
                         "parameters": {"max_new_tokens": 2}})
        requests.append({"inputs": {"image_t1": t1, "image_t2": t2, "text": ["roads", "changes caused by rain"]},
                         "parameters": {"max_new_tokens": 1}})
    sequential = [handler(request) for request in requests]
    assert all("error" not in answer for answer in sequential if isinstance(answer, dict))

    def serve(thread: int) -> list[tuple[int, dict | list]]:
        return [((thread * 8 + k) % len(requests), handler(requests[(thread * 8 + k) % len(requests)]))
                for k in range(8)]

    with ThreadPoolExecutor(8) as pool:
        answered = [item for items in pool.map(serve, range(8)) for item in items]
    assert len(answered) == 64
    for index, answer in answered:
        assert answer == sequential[index], index  # the same text, PNG, fraction and confidences


# ------------------------------------------------------------------------------------- requests bounded in work


@pytest.fixture
def nothing_decoded(monkeypatch):
    """No base64 may be decoded (and no image opened) while the block runs: the limits must refuse first."""
    import handler as handler_module

    def decode(*args, **kwargs):
        raise AssertionError("base64 was decoded before the request's limits were checked")

    monkeypatch.setattr(handler_module.base64, "b64decode", decode)


def test_a_100_mb_payload_is_refused_before_it_is_decoded(handler, pair, nothing_decoded):
    huge = "A" * 100_000_000  # valid base64 of 75 MB
    result = handler({"inputs": {**pair, "image_t2": huge, "text": "roads"}})
    assert set(result) == {"error"}
    size = len(pair["image_t1"]) + len(huge) + len("roads")
    assert result["error"] == (f"the request brings {size:,} bytes of images and text, more than the limit of "
                               "64,000,000 (max_request_bytes, or $REASONCD_MAX_REQUEST_BYTES): send smaller files "
                               "(PNG or JPEG rather than uncompressed TIFF), or raise the limit")


def test_ten_thousand_questions_are_refused_before_anything_is_decoded(handler, pair, nothing_decoded):
    result = handler({"inputs": {**pair, "text": ["new buildings"] * 10_000}})
    assert result == {"error": "the request asks 10,000 questions, more than the limit of 16 per request "
                               "(max_questions, or $REASONCD_MAX_QUESTIONS): send them in several requests"}


def test_max_new_tokens_at_the_limit_for_many_questions_is_refused(handler, pair, nothing_decoded):
    result = handler({"inputs": {**pair, "text": ["roads"] * 5}, "parameters": {"max_new_tokens": 512}})
    assert result == {"error": "the request may generate 5 questions x 512 max_new_tokens = 2,560 answer tokens, "
                               "more than the limit of 2,048 per request (max_answer_tokens, or "
                               "$REASONCD_MAX_ANSWER_TOKENS): ask fewer questions at once, or lower max_new_tokens"}


def test_the_limits_are_configurable(exported, pair, monkeypatch):
    strict = EndpointHandler(str(exported), max_questions=2, max_answer_tokens=4, max_request_bytes=400_000)
    assert "more than the limit of 2 per request" in strict({"inputs": {**pair, "text": ["a", "b", "c"]}})["error"]
    assert "more than the limit of 4 per request" in strict({"inputs": {**pair, "text": ["a", "b"]},
                                                            "parameters": {"max_new_tokens": 3}})["error"]
    answers = strict({"inputs": {**pair, "text": ["a", "b"]}, "parameters": {"max_new_tokens": 2}})
    assert [a["raw_text"] for a in answers] == ["[SEG] [SEG]"] * 2
    # Without its own limits the handler follows the endpoint's environment.
    monkeypatch.setenv("REASONCD_MAX_REQUEST_BYTES", str(len(pair["image_t1"]) * 2))
    relaxed = EndpointHandler(str(exported))
    assert "more than the limit of" in relaxed({"inputs": {**pair, "text": "roads"}})["error"]
    monkeypatch.setenv("REASONCD_MAX_QUESTIONS", "zero")
    with pytest.raises(ValueError, match="REASONCD_MAX_QUESTIONS='zero'"):
        EndpointHandler(str(exported))


def test_oversized_requests_do_not_stop_normal_ones_being_answered(handler, pair):
    normal = {"inputs": {**pair, "text": "new buildings"}, "parameters": {"max_new_tokens": 1}}
    expected = handler(normal)
    oversized = [{"inputs": {**pair, "image_t1": "A" * 70_000_000, "text": "roads"}},
                 {"inputs": {**pair, "text": ["roads"] * 200}},
                 {"inputs": {**pair, "text": ["roads"] * 8}, "parameters": {"max_new_tokens": 512}}]

    def serve(k: int):
        return k, handler(oversized[k // 2 % 3] if k % 2 else normal)

    with ThreadPoolExecutor(6) as pool:
        answered = list(pool.map(serve, range(24)))
    for k, answer in answered:
        if k % 2:
            assert set(answer) == {"error"} and "more than the limit" in answer["error"]
        else:
            assert answer == expected
