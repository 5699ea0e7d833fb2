"""How error messages list things."""
from reasoncd.messages import listed, size_mismatch


def test_long_lists_end_with_how_many_more():
    items = [f"file{i}.png" for i in range(25)]
    text = listed(items)
    assert text.split("\n  ")[:2] == ["file0.png", "file1.png"]
    assert text.endswith("file19.png\n  ... and 5 more")
    assert listed(items[:3], separator="; ") == "file0.png; file1.png; file2.png"
    assert listed(items, limit=2, separator="; ") == "file0.png; file1.png; ... and 23 more"


def test_size_mismatch_names_every_file_in_height_by_width():
    assert size_mismatch({"a.tif": (256, 256), "b.tif": (256, 256)}) is None
    assert size_mismatch({"a.tif": (300, 250), "b.tif": [300, 250]}) is None  # a list and a tuple of one size
    assert size_mismatch({"t1.tif": (300, 260), "t2.png": (300, 250)}) == "t1.tif 300 x 260, t2.png 300 x 250"
