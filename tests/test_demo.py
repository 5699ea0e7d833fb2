"""reasoncd.demo: questions about one pair encode its images once, and answer as a fresh prediction does; the page's
words: plain status lines, the user's file names in messages, a tiny model called a demonstration model."""
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


def test_the_status_says_in_plain_words_when_answer_and_map_disagree_and_when_images_were_shrunk():
    from reasoncd.demo import status_text

    result = {"mask": np.zeros((40, 50), bool), "changed_fraction": 0.0, "reused": False, "encode_seconds": 0.5,
              "raw_text": "[SEG] new buildings", "mask_confidence": 0.7, "seg_probability": 0.9}
    text = status_text(result, (6000, 6000), 256, {"T1": "uint16 stretched to 8 bit", "T2": None})
    assert "the two disagree" in text and "[SEG]" not in text
    assert "probability that the answer points at a change 0.90" in text
    assert "T1 converted: uint16 stretched to 8 bit" in text and "T2 converted" not in text
    assert "shrunk about 23×" in text and "predict_scene.py" in text
    quiet = status_text({**result, "raw_text": "no such change", "mask": np.ones((40, 50), bool)}, (256, 256), 256,
                        {})
    assert "found no such change" in quiet and "disagree" not in quiet and "shrunk" not in quiet


def test_an_answer_about_several_changes_gets_a_legend_of_its_colours():
    from reasoncd.demo import status_text

    mask = np.zeros((10, 10), bool)
    mask[:2] = True
    targets = [{"label": "new buildings", "mask": mask, "changed_fraction": 0.2, "mask_confidence": 0.81},
               {"label": "new water bodies", "mask": ~mask, "changed_fraction": 0.8, "mask_confidence": 0.64}]
    result = {"mask": np.ones((10, 10), bool), "changed_fraction": 1.0, "reused": True, "encode_seconds": 0.0,
              "raw_text": "The new buildings [SEG] and the new water bodies [SEG].", "mask_confidence": 0.7,
              "seg_probability": 0.9, "targets": targets}
    text = status_text(result, (10, 10), 256, {})
    assert ("🟥 red: **new buildings** (20.00% of the pixels, confidence 0.81); "
            "🟦 blue: **new water bodies** (80.00% of the pixels, confidence 0.64)") in text
    assert "own colour" not in status_text({**result, "targets": targets[:1]}, (10, 10), 256, {})


def test_the_detector_returns_every_target():
    model, processor = seg_tiny(0)
    detector = ChangeDetector(model, processor, max_new_tokens=2)
    t1, t2 = image_pair(64, 80, seed=1)
    result = detector.ask(t1, t2, "new buildings and new ponds")
    assert len(result["targets"]) == 2
    assert np.array_equal(result["targets"][0]["mask"] | result["targets"][1]["mask"], result["mask"])
    assert all(t["changed_fraction"] == pytest.approx(float(t["mask"].mean())) for t in result["targets"])


def test_messages_name_the_users_file_and_not_batch_positions(tmp_path):
    from reasoncd.demo import plain_message, read_upload

    upload = tmp_path / "gradio-cache" / "0123abcd" / "holiday.png"
    upload.parent.mkdir(parents=True)
    upload.write_text("not an image")
    with pytest.raises(ValueError) as refused:
        read_upload(str(upload), "T1")
    assert "holiday.png" in str(refused.value) and str(upload.parent) not in str(refused.value)
    assert plain_message(ValueError("pair 0: T1 is 64x64 but T2 is 32x32")) == "T1 is 64x64 but T2 is 32x32"


def test_a_tiny_model_is_named_a_demonstration_model(tmp_path):
    from reasoncd.demo import model_facts

    model, _ = seg_tiny(0)
    facts, warning = model_facts(str(tmp_path), model, "the built-in synthetic images (python train.py)")
    assert "M parameters" in facts and "synthetic images" in facts
    assert "**tiny demonstration model** trained on synthetic images" in warning
    assert model_facts(str(tmp_path), model)[0].endswith("trained on: not recorded with the model.")
