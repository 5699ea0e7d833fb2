"""Geometric augmentation of training pairs: mirror images and quarter turns of a view from above.

Seen from above, a scene turned by 90 degrees or mirrored is as plausible as the original (the synthetic scenes draw
the sun's direction at random; real satellite and aerial imagery has no fixed "up" either), and the question does
not change: no question of the bank names a side or a direction on the ground. One transform is drawn per pair and
applied alike to T1, T2 and the masks of every question about the pair, so what changed, and where, stays true.
"""

import numpy as np
import torch

# The transforms each setting draws from, as indices into the square's eight symmetries: index t turns by
# (t % 4) quarter turns and, for t >= 4, mirrors left to right first.
AUGMENTATIONS = {"none": (0,), "flip": (0, 4), "dihedral": tuple(range(8))}


def draw_transform(augmentation: str) -> int:
    """One transform index of `augmentation`'s set, drawn with torch's global generator (seeded by the run)."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation {augmentation!r}: choose one of {sorted(AUGMENTATIONS)}")
    choices = AUGMENTATIONS[augmentation]
    if len(choices) == 1:
        return choices[0]
    return choices[int(torch.randint(len(choices), ()))]


def transform_view(array: np.ndarray, index: int) -> np.ndarray:
    """`array` (H x W, or H x W x C) under transform `index` of `AUGMENTATIONS`, as a new contiguous array."""
    if not 0 <= index < 8:
        raise ValueError(f"transform index {index}: must be in 0..7")
    if index >= 4:
        array = array[:, ::-1]
    return np.ascontiguousarray(np.rot90(array, index % 4, axes=(0, 1)))
