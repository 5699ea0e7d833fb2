"""Overlapping tiles over a scene, and the weight window that blends their probabilities without seams.

Tiles are `tile` pixels square and step by `tile - overlap`; the last row and column are moved inward so that every
tile lies inside the scene and all have one size (a scene smaller than a tile is one tile of the scene's size).
Each tile's probabilities are weighted by a raised-cosine ramp over `overlap` pixels at every edge: where two tiles
overlap by exactly `overlap`, their weights sum to 1 (a partition of unity), so a tile's uncertain border hands over
smoothly to its neighbour's centre. The ramp never reaches 0, so every covered pixel has weight, also at the
scene's border, where only one tile covers it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Box:
    """A pixel rectangle: rows row..row+height-1, columns col..col+width-1."""

    row: int
    col: int
    height: int
    width: int

    def window(self):
        from rasterio.windows import Window

        return Window(self.col, self.row, self.width, self.height)

    def intersection(self, other: Box) -> Box | None:
        top, left = max(self.row, other.row), max(self.col, other.col)
        bottom = min(self.row + self.height, other.row + other.height)
        right = min(self.col + self.width, other.col + other.width)
        return Box(top, left, bottom - top, right - left) if bottom > top and right > left else None


def check_tiling(tile: int, overlap: int) -> None:
    if tile < 16:
        raise ValueError(f"--tile_size {tile}: give at least 16 pixels")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"--overlap {overlap}: give 0 to half the tile size ({tile // 2} pixels)")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis; the last is moved inward to end at `length`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[Box]:
    """The scene's tiles, row by row."""
    check_tiling(tile, overlap)
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    return [Box(r, c, min(tile, height), min(tile, width)) for r in rows for c in cols]


def block_boxes(height: int, width: int, block: int) -> list[Box]:
    """Non-overlapping output blocks covering the scene, row by row."""
    return [Box(r, c, min(block, height - r), min(block, width - c))
            for r in range(0, height, block) for c in range(0, width, block)]


def _ramp(length: int, overlap: int) -> np.ndarray:
    if overlap == 0:
        return np.ones(length)
    position = np.arange(length) + 0.5
    distance = np.minimum(np.minimum(position, length - position) / overlap, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * distance)


@lru_cache(maxsize=8)
def tile_weights(height: int, width: int, overlap: int) -> np.ndarray:
    """(height, width) float64 weights of one tile, > 0 everywhere (read-only: shared between calls)."""
    weights = np.outer(_ramp(height, overlap), _ramp(width, overlap))
    weights.flags.writeable = False
    return weights


def probability_from_logits(logits: np.ndarray) -> np.ndarray:
    """sigmoid in float64 via tanh (no overflow at -inf): > 0.5 exactly where the logit is > 0, as the processor's
    masks are."""
    return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))
