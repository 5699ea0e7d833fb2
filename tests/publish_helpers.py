"""Tiny models for the export, handler and app tests: ones whose answers hold `[SEG]`, so masks are really decoded."""

import numpy as np

from reasoncd.build import build_tiny
from helpers import make_seg_the_only_answer


def seg_tiny(seed: int = 0):
    model, processor = build_tiny(seed)
    make_seg_the_only_answer(model)
    return model.eval(), processor


def image_pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two smooth random RGB images, the second with a bright block (a 'change')."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3))
    t1 = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width].astype(np.uint8)
    t2 = t1.copy()
    t2[height // 4: height // 2, width // 3: 2 * width // 3] = 250
    return t1, t2
