"""reasoncd.demo: questions about one pair encode its images once, and answer as a fresh prediction does."""
import numpy as np
import pytest

from helpers import image_pair, seg_tiny
from reasoncd.demo import ChangeDetector
from reasoncd.loading import predict


def test_questions_about_one_pair_encode_the_images_once():
    model, processor = seg_tiny(0)
    detector = ChangeDetector(model, processor, max_new_tokens=3)
    t1, t2 = image_pair(64, 80, seed=1)
    first = detector.ask(t1, t2, "new buildings")
    second = detector.ask(t1.copy(), t2.copy(), "changes caused by heavy rainfall, and explain why")
    assert (first["reused"], second["reused"], detector.encodings) == (False, True, 1)
    expected = predict(model, processor, t1, t2, ["changes caused by heavy rainfall, and explain why"], 3)[0]
    assert second["text"] == expected["text"] and np.array_equal(second["mask"], expected["mask"])
    # Reused features give the confidences a fresh encoding gives.
    assert second["mask_confidence"] == pytest.approx(expected["mask_confidence"], abs=1e-5)
    assert second["seg_probability"] == pytest.approx(expected["seg_probability"], abs=1e-6)
    assert 0.5 < second["mask_confidence"] <= 1.0 and 0.99 < second["seg_probability"] <= 1.0
    assert second["raw_text"].startswith("[SEG]") and "[SEG]" not in second["text"]
    assert second["mask"].any()
    detector.ask(t2, t1, "new buildings")  # another pair: encoded again
    assert detector.encodings == 2
