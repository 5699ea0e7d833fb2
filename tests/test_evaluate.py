"""reasoncd.evaluation.evaluate (eval.py's work, whose command line tests/test_eval.py covers): names of the saved
predictions, matching files by name, and size checks from image headers."""
import numpy as np
import pytest
from PIL import Image

from reasoncd.evaluation.evaluate import EvalError, check_file_sizes, match_files, prediction_names
from reasoncd.messages import MAX_LISTED


def png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_prediction_names_are_prefixed_by_their_folder_only_where_they_repeat():
    samples = [{"source": "/d/test/a_0.json"}, {"source": "/d/val/a_0.json"}, {"source": "/d/test/b_1.json"}]
    assert prediction_names(samples) == ["test_a_0", "val_a_0", "b_1"]


def test_match_files_pairs_by_name_and_lists_at_most_max_listed(tmp_path):
    mask = np.zeros((4, 6), np.uint8)
    for name in ("a", "b"):
        png(tmp_path / "pred" / f"{name}.png", mask)
        png(tmp_path / "label" / f"{name}.tif", mask)
    files = match_files(tmp_path / "pred", tmp_path / "label")
    assert files == {name: {"pred": tmp_path / "pred" / f"{name}.png", "label": tmp_path / "label" / f"{name}.tif"}
                     for name in ("a", "b")}
    for index in range(MAX_LISTED + 3):
        png(tmp_path / "pred" / f"extra{index:02d}.png", mask)
    with pytest.raises(EvalError) as error:
        match_files(tmp_path / "pred", tmp_path / "label")
    message = str(error.value)
    assert message.startswith(f"{MAX_LISTED + 3} names are not in every folder")
    assert f"extra{MAX_LISTED - 1:02d}: not in --label_dir" in message and f"extra{MAX_LISTED:02d}" not in message
    assert message.endswith("... and 3 more")
    with pytest.raises(EvalError, match=f"--t1_dir {tmp_path / 'nowhere'}: no such folder"):
        match_files(tmp_path / "pred", tmp_path / "label", tmp_path / "nowhere", tmp_path / "nowhere")


def test_check_file_sizes_names_every_file_of_a_mismatch(tmp_path):
    png(tmp_path / "p.png", np.zeros((4, 6), np.uint8))
    png(tmp_path / "l.png", np.zeros((4, 6), np.uint8))
    png(tmp_path / "t1.png", np.zeros((4, 5, 3), np.uint8))
    check_file_sizes({"x": {"pred": tmp_path / "p.png", "label": tmp_path / "l.png"}})
    with pytest.raises(EvalError, match="1 predictions differ in size") as error:
        check_file_sizes({"x": {"pred": tmp_path / "p.png", "label": tmp_path / "l.png", "t1": tmp_path / "t1.png"}})
    assert f"{tmp_path / 'p.png'} 4 x 6, {tmp_path / 'l.png'} 4 x 6, {tmp_path / 't1.png'} 4 x 5" in str(error.value)
