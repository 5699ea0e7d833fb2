"""reasoncd.data.augment: the eight symmetries of a square view, drawn per pair from the chosen set."""
import numpy as np
import pytest
import torch

from reasoncd.data.augment import AUGMENTATIONS, draw_transform, transform_view


def asymmetric(height: int = 5, width: int = 5, channels: int | None = None) -> np.ndarray:
    shape = (height, width) if channels is None else (height, width, channels)
    return np.arange(np.prod(shape)).reshape(shape)


def test_the_eight_transforms_are_the_squares_symmetries():
    image = asymmetric()
    views = [transform_view(image, t) for t in range(8)]
    assert np.array_equal(views[0], image)
    assert len({view.tobytes() for view in views}) == 8  # all different
    expected = {np.rot90(base, k).tobytes() for base in (image, image.T) for k in range(4)}
    assert {view.tobytes() for view in views} == expected  # and exactly the turns and mirrors
    assert np.array_equal(views[4], image[:, ::-1])  # index 4: mirrored left to right
    assert np.array_equal(views[1], np.rot90(image))
    assert all(view.flags["C_CONTIGUOUS"] for view in views)


def test_images_and_masks_move_together_whatever_their_shape():
    image = asymmetric(4, 6, channels=3)
    mask = image[..., 0] % 7 == 0
    for t in range(8):
        view = transform_view(image, t)
        assert view.shape == ((6, 4, 3) if t % 2 else (4, 6, 3))  # odd quarter turns swap height and width
        assert np.array_equal(view[..., 0] % 7 == 0, transform_view(mask, t))
        assert np.array_equal(view[..., 2], transform_view(image[..., 2], t))
    with pytest.raises(ValueError, match="transform index 8"):
        transform_view(image, 8)


def test_each_setting_draws_from_its_own_set_reproducibly():
    assert {draw_transform("none") for _ in range(20)} == {0}
    torch.manual_seed(0)
    flips = {draw_transform("flip") for _ in range(40)}
    torch.manual_seed(0)
    first = [draw_transform("dihedral") for _ in range(200)]
    torch.manual_seed(0)
    assert [draw_transform("dihedral") for _ in range(200)] == first  # the run's seed decides the draws
    assert flips == set(AUGMENTATIONS["flip"]) == {0, 4}
    assert set(first) == set(range(8))
    with pytest.raises(ValueError, match="'rotate'"):
        draw_transform("rotate")
