"""The mask geometry shared by the model and the processor: SAM's resize rule, un-padding and resizing logits, and
that the processor's code loads without the model's."""
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from geometry_reasoncd import sam_resized_shape, upscale_mask_logits
from helpers import REPO_ROOT, run_script


@pytest.mark.parametrize("height, width, side", [(200, 300, 1024), (300, 200, 1024), (1, 999, 64), (333, 333, 32),
                                                 (17, 1000, 1024), (1000, 17, 1000)])
def test_resized_shape_is_segment_anythings(height, width, side):
    assert sam_resized_shape(height, width, side) == ResizeLongestSide.get_preprocess_shape(height, width, side)


def test_upscale_drops_the_padding_and_keeps_the_boundary():
    frame, low = 64, 16
    # A 2:1 input fills the top 32 rows of the 64x64 frame (low-res rows 0-7); SAM pads the rest.
    rows = torch.arange(low, dtype=torch.float32)[:, None].expand(low, low)
    full = upscale_mask_logits(rows, (32, 64), (100, 200), frame)
    assert full.shape == (100, 200)
    assert full.min() >= 0 and 7 < full.max() < 8  # the padded rows 8-15 are cut off (kept, the top would be 15)
    assert (full.diff(dim=0) >= 0).all() and full[-1, 0] - full[0, 0] > 7  # stretched over the whole height
    left_half = torch.full((low, low), -5.0)
    left_half[:, : low // 2] = 5.0
    changed = upscale_mask_logits(left_half, (32, 64), (100, 200), frame) > 0
    assert changed[:, :99].all() and not changed[:, 101:].any()


def test_the_processor_loads_without_the_model_code():
    probe = ("import sys, processing_reasoncd; "
             "print(sorted(m for m in ('modeling_reasoncd', 'generation_reasoncd', 'segment_anything') "
             "if m in sys.modules))")
    result = run_script(["-c", probe], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
