"""Tiles over a scene and the blending weights: inside the scene, one size, every pixel covered with weight."""
import numpy as np
import pytest

from reasoncd.scenes.tiling import (Box, block_boxes, probability_from_logits, tile_boxes, tile_starts,
                                    tile_weights)


@pytest.mark.parametrize("height, width, tile, overlap", [(300, 410, 128, 32), (256, 256, 256, 32),
                                                          (100, 700, 128, 0), (90, 60, 128, 32),
                                                          (1000, 333, 200, 100)])
def test_tiles_lie_inside_share_one_size_and_blend_everywhere(height, width, tile, overlap):
    boxes = tile_boxes(height, width, tile, overlap)
    assert len({(b.height, b.width) for b in boxes}) == 1
    assert boxes[0].height == min(tile, height) and boxes[0].width == min(tile, width)
    weight_sum = np.zeros((height, width))
    for box in boxes:
        assert box.row >= 0 and box.col >= 0 and box.row + box.height <= height and box.col + box.width <= width
        weight_sum[box.row:box.row + box.height, box.col:box.col + box.width] += tile_weights(box.height,
                                                                                              box.width, overlap)
    assert weight_sum.min() > 0  # every pixel is covered, also at the scene's border


def test_neighbours_overlapping_by_the_overlap_sum_to_one():
    # Three tiles of 128 stepping by 96 over 320 columns: their weights partition unity away from the borders.
    assert tile_starts(320, 128, 32) == [0, 96, 192]
    row = np.zeros(320)
    for start in tile_starts(320, 128, 32):
        row[start:start + 128] += tile_weights(1, 128, 32)[0] / tile_weights(1, 128, 32)[0].max()
    assert np.allclose(row[32:-32], 1.0)
    assert (row[:32] < 1).all() and (row[:32] > 0).all()


def test_the_last_tile_moves_inward_rather_than_leaving_the_scene():
    assert tile_starts(300, 128, 32) == [0, 96, 172]
    assert tile_starts(128, 128, 32) == [0]
    assert tile_starts(50, 128, 32) == [0]


def test_bad_tiling_is_refused():
    with pytest.raises(ValueError, match="--overlap 80"):
        tile_boxes(500, 500, 128, 80)
    with pytest.raises(ValueError, match="--tile_size 8"):
        tile_boxes(500, 500, 8, 0)


def test_blocks_cover_the_scene_once():
    counts = np.zeros((1100, 700), int)
    for box in block_boxes(1100, 700, 512):
        counts[box.row:box.row + box.height, box.col:box.col + box.width] += 1
    assert (counts == 1).all()


def test_box_intersection():
    assert Box(0, 0, 10, 10).intersection(Box(5, 8, 10, 10)) == Box(5, 8, 5, 2)
    assert Box(0, 0, 10, 10).intersection(Box(10, 0, 5, 5)) is None


def test_probability_is_above_one_half_exactly_where_the_logit_is_positive():
    logits = np.array([-np.inf, -30.0, -1e-12, 0.0, 1e-12, 1e-6, 30.0], dtype=np.float32)
    probability = probability_from_logits(logits)
    assert probability[0] == 0.0 and probability[-1] <= 1.0
    assert ((probability > 0.5) == (logits > 0)).all()
