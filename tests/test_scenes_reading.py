"""Reading two dates on T1's grid: T2 warped when its CRS or resolution differ, bands mapped to RGB, 16-bit data
stretched alike in every tile, and bad inputs refused with the file named."""
import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from reasoncd.scenes.reading import SceneInputError, apply_stretch, open_scene, parse_bands
from scene_helpers import ORIGIN, UTM, rgb_pair, write_geotiff


@pytest.fixture
def pair(tmp_path):
    t1, t2 = rgb_pair(200, 240)
    return write_geotiff(tmp_path / "t1.tif", t1), write_geotiff(tmp_path / "t2.tif", t2), t1, t2


def test_same_grid_is_read_as_it_is(pair):
    path_t1, path_t2, t1, t2 = pair
    with open_scene(path_t1, path_t2) as scene:
        image_t1, image_t2, valid = scene.read(Window(10, 20, 64, 32))
    assert (image_t1 == np.moveaxis(t1, 0, -1)[20:52, 10:74]).all()
    assert (image_t2 == np.moveaxis(t2, 0, -1)[20:52, 10:74]).all()
    assert valid.all() and valid.shape == (32, 64)


def test_t2_at_another_resolution_is_resampled_onto_t1s_grid(tmp_path, pair):
    path_t1, _, t1, _ = pair
    coarse = t1.reshape(3, 100, 2, 120, 2).mean(axis=(2, 4)).round().astype(np.uint8)  # 1 m pixels
    path_t2 = write_geotiff(tmp_path / "coarse.tif", coarse, pixel=1.0)
    with open_scene(path_t1, path_t2) as scene:
        assert any("warped onto T1's grid" in note for note in scene.notes)
        assert (scene.height, scene.width) == (200, 240)
        _, image_t2, valid = scene.read(Window(0, 0, 240, 200))
    assert valid[2:-2, 2:-2].all()
    # Bilinear upsampling of the 2x2 means: close to T1 away from the colour blocks' edges.
    difference = np.abs(image_t2.astype(int) - np.moveaxis(t1, 0, -1).astype(int))
    assert np.median(difference) <= 12
    assert (image_t2[::2, ::2].astype(int) - np.moveaxis(coarse, 0, -1).astype(int)).__abs__().mean() < 15


def test_t2_in_another_crs_is_reprojected_onto_t1s_grid(tmp_path, pair):
    path_t1, _, t1, _ = pair
    with rasterio.open(path_t1) as source:
        transform, width, height = calculate_default_transform(UTM, "EPSG:4326", source.width, source.height,
                                                               *source.bounds)
        warped = np.zeros((3, height, width), np.uint8)
        reproject(t1, warped, src_transform=source.transform, src_crs=UTM, dst_transform=transform,
                  dst_crs="EPSG:4326", resampling=Resampling.nearest)
    path_t2 = write_geotiff(tmp_path / "wgs84.tif", warped, crs="EPSG:4326", transform=transform)
    with open_scene(path_t1, path_t2, resampling="nearest") as scene:
        assert any("EPSG:4326 -> EPSG:32650" in note for note in scene.notes)
        _, image_t2, valid = scene.read(Window(0, 0, 240, 200))
    inner = (slice(8, -8), slice(8, -8))
    assert valid[inner].mean() > 0.99
    expected = np.moveaxis(t1, 0, -1).astype(int)
    error = np.abs(image_t2.astype(int) - expected)[inner].mean()
    # There and back by nearest neighbour: most pixels land on themselves, the rest on a neighbour; one colour
    # block (16 px) off would be an order of magnitude worse.
    misplaced = np.abs(image_t2[:, 16:].astype(int) - expected[:, :-16])[inner].mean()
    assert error < 6 and misplaced > 5 * error


def test_pixels_outside_t2_are_invalid(tmp_path, pair):
    path_t1, _, t1, t2 = pair
    shifted = from_origin(ORIGIN[0] + 60.0, ORIGIN[1], 0.5, 0.5)  # 120 pixels to the east
    path_t2 = write_geotiff(tmp_path / "east.tif", t2, transform=shifted)
    with open_scene(path_t1, path_t2) as scene:
        _, image_t2, valid = scene.read(Window(0, 0, 240, 200))
    assert not valid[:, :118].any() and valid[:, 122:].all()
    assert (image_t2[~valid] == 0).all()


def test_t2_that_does_not_overlap_is_refused_by_name(tmp_path, pair):
    path_t1, _, _, t2 = pair
    far = write_geotiff(tmp_path / "far.tif", t2, transform=from_origin(ORIGIN[0] + 5000, ORIGIN[1], 0.5, 0.5))
    with pytest.raises(SceneInputError, match=f"--t2 {far} does not overlap --t1 {path_t1}"):
        open_scene(path_t1, far)


def test_missing_georeferencing_with_different_sizes_is_refused_by_name(tmp_path, pair):
    path_t1, _, _, t2 = pair
    plain = write_geotiff(tmp_path / "plain.tif", t2[:, :150], crs=None)
    with pytest.raises(SceneInputError, match=f"--t2 {plain}: no georeferencing"):
        open_scene(path_t1, plain)
    same_size = write_geotiff(tmp_path / "plain-same.tif", t2, crs=None)
    with open_scene(path_t1, same_size) as scene:  # same size: taken as the same grid, with a note
        assert any("no georeferencing" in note for note in scene.notes)


def test_a_damaged_file_is_refused_by_name(tmp_path, pair):
    path_t1, _, _, _ = pair
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(SceneInputError, match=f"--t2 {broken}: cannot read"):
        open_scene(path_t1, broken)
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(path_t1.read_bytes()[:2000])
    with pytest.raises(SceneInputError, match=f"--t1 {truncated}"):
        open_scene(truncated, path_t1)
    with pytest.raises(SceneInputError, match="no such file"):
        open_scene(path_t1, tmp_path / "absent.tif")


def test_bands_that_cannot_be_mapped_to_rgb_are_refused_by_name(tmp_path, pair):
    path_t1, _, _, t2 = pair
    five = write_geotiff(tmp_path / "five.tif", np.concatenate([t2, t2[:2]]),
                         colorinterp=[ColorInterp.undefined] * 5)
    with pytest.raises(SceneInputError, match=f"--t2 {five}: 5 bands .* --bands"):
        open_scene(path_t1, five)
    with pytest.raises(SceneInputError, match=f"--t1 {path_t1}: has 3 band\\(s\\), --bands asks for band 5"):
        open_scene(path_t1, five, bands=(5, 4, 3))
    for text in ("4,3", "0", "a,b,c"):
        with pytest.raises(SceneInputError, match="--bands"):
            parse_bands(text)


def test_bands_picks_multispectral_bands(tmp_path, pair):
    path_t1, _, t1, _ = pair
    four = write_geotiff(tmp_path / "four.tif", np.concatenate([t1[2:3], t1]),  # NIR-like band first, then R,G,B
                         colorinterp=[ColorInterp.undefined] * 4)
    with open_scene(four, four, bands=parse_bands("2,3,4")) as scene:
        image, _, _ = scene.read(Window(0, 0, 240, 200))
    assert (image == np.moveaxis(t1, 0, -1)).all()
    with open_scene(four, four, bands=parse_bands("1")) as scene:  # one band: grey
        image, _, _ = scene.read(Window(0, 0, 240, 200))
    assert (image == t1[2][..., None]).all()


def test_16_bit_dates_are_stretched_alike_in_every_tile(tmp_path):
    rng = np.random.default_rng(0)
    t1 = rng.integers(200, 3000, size=(3, 200, 240)).astype(np.uint16)
    path = write_geotiff(tmp_path / "sixteen.tif", t1)
    from processing_reasoncd import stretch_to_uint8

    _, low, high = stretch_to_uint8(np.moveaxis(t1, 0, -1))
    with open_scene(path, path) as scene:
        left, _, _ = scene.read(Window(0, 0, 120, 200))
        right, _, _ = scene.read(Window(120, 0, 120, 200))
        assert any("stretched to 8 bit" in note for note in scene.notes)
    whole = np.concatenate([left, right], axis=1)
    assert (whole == apply_stretch(np.moveaxis(t1, 0, -1), low, high)).all()


def test_where_one_date_has_no_data_both_are_black(tmp_path):
    t1, t2 = (np.maximum(image, 1) for image in rgb_pair(64, 80))
    t2[:, 10:30, :] = 0  # T2's nodata rows
    path_t1 = write_geotiff(tmp_path / "t1.tif", t1, nodata=0)
    path_t2 = write_geotiff(tmp_path / "t2.tif", t2, nodata=0)
    with open_scene(path_t1, path_t2) as scene:
        image_t1, image_t2, valid = scene.read(Window(0, 0, 80, 64))
    assert not valid[10:30].any() and valid[:10].all() and valid[30:].all()
    assert (image_t1[10:30] == 0).all() and (image_t2[10:30] == 0).all()  # T1's imagery hidden there too
    assert (image_t1[30:] == np.moveaxis(t1, 0, -1)[30:]).all()
