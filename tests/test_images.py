"""Image and label reading: conversions, their notes, and errors that name the file."""
import warnings

import numpy as np
import pytest
import rasterio
import rasterio.errors
import tifffile
from PIL import Image
from rasterio.transform import Affine

from reasoncd.data.images import (ImageReadError, Mosaic, bands_to_rgb8, image_size, read_mask, read_rgb,
                                  select_bands, to_rgb8)
from reasoncd.io import write_png_atomic

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_rgb_png_is_returned_unchanged(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    array, note = read_rgb(tmp_path / "rgb.png")
    assert note is None
    assert array.dtype == np.uint8 and np.array_equal(array, RGB)


def test_grayscale_is_replicated(tmp_path):
    Image.fromarray(RGB[..., 0]).save(tmp_path / "gray.png")
    array, note = read_rgb(tmp_path / "gray.png")
    assert array.shape == (40, 60, 3)
    assert all(np.array_equal(array[..., c], RGB[..., 0]) for c in range(3))
    assert note == "grayscale replicated to 3 channels"


def test_rgba_and_gray_alpha_drop_alpha(tmp_path):
    rgba = np.dstack([RGB, np.full((40, 60), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    array, note = read_rgb(tmp_path / "rgba.png")
    assert np.array_equal(array, RGB) and note == "alpha channel dropped"
    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(tmp_path / "la.png")
    array, note = read_rgb(tmp_path / "la.png")
    assert np.array_equal(array[..., 2], RGB[..., 0])
    assert note == "alpha channel dropped; grayscale replicated to 3 channels"


def percentile_stretch(values):
    low, high = np.percentile(values.astype(np.float64), [2, 98])
    return np.clip((values.astype(np.float32) - low) * (255.0 / (high - low)), 0, 255).round().astype(np.uint8)


def test_16bit_png_is_stretched(tmp_path):
    # 12-bit data in a 16-bit file, as sensors deliver it: dividing by 257 would leave it nearly black.
    values = RNG.integers(100, 4096, (40, 60), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    array, note = read_rgb(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I;16")
    assert note.startswith("uint16 scaled to 8 bit by a 2-98 percentile stretch")
    assert note.endswith("grayscale replicated to 3 channels")
    assert np.abs(array[..., 0].astype(int) - percentile_stretch(values)).max() <= 1
    assert array.min() == 0 and array.max() == 255


def test_16bit_multiband_tiff(tmp_path):
    bands = RNG.integers(0, 2048, (40, 60, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "contig.tif", bands, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(bands, 2, 0), photometric="minisblack", planarconfig="separate"
    )
    for name in ("contig.tif", "planar.tif"):
        array, note = read_rgb(tmp_path / name)
        assert array.shape == (40, 60, 3) and array.dtype == np.uint8
        assert note.startswith("first 3 of 5 bands kept; uint16 scaled to 8 bit")
        # One stretch over all bands keeps their relative brightness.
        assert np.abs(array.astype(int) - percentile_stretch(bands[..., :3])).max() <= 1
    assert image_size(tmp_path / "planar.tif") == (40, 60)


def test_float_tiff_is_clipped_and_nan_is_black(tmp_path):
    values = RNG.random((40, 60, 3)).astype(np.float32)
    values[0, 0] = np.nan
    values[0, 1] = 50.0  # an outlier beyond the 98th percentile is clipped, not allowed to darken the rest
    tifffile.imwrite(tmp_path / "float.tif", values, photometric="rgb")
    array, note = read_rgb(tmp_path / "float.tif")
    assert note.startswith("float32 scaled to 8 bit by a 2-98 percentile stretch")
    assert tuple(array[0, 0]) == (0, 0, 0) and tuple(array[0, 1]) == (255, 255, 255)
    assert np.median(array) == pytest.approx(127, abs=10)


def test_palette_png_is_expanded(tmp_path):
    image = Image.fromarray(RGB[..., 0] // 128, mode="L").convert("P")
    image.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    image.save(tmp_path / "palette.png")
    array, note = read_rgb(tmp_path / "palette.png")
    assert note == "palette colours expanded to RGB"
    assert {tuple(pixel) for pixel in array.reshape(-1, 3)} == {(0, 0, 0), (200, 10, 20)}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own complaint while trying the broken TIFF
def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.png: no such file"):
        read_rgb(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match=r"nope\.png: no such file"):
        image_size(tmp_path / "nope.png")
    (tmp_path / "noise.png").write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match=r"noise\.png: cannot read image"):
        read_rgb(tmp_path / "noise.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\xff" * 40)
    with pytest.raises(ImageReadError, match=r"broken\.tif: cannot read image \(rasterio: .*; Pillow: "):
        read_rgb(tmp_path / "broken.tif")
    with pytest.raises(ImageReadError, match=r"broken\.tif"):
        Mosaic(tmp_path / "broken.tif")


def test_truncated_png_has_a_size_but_no_pixels(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "cut.png") == (40, 60)  # header only
    with pytest.raises(ImageReadError, match=r"cut\.png: cannot read image"):
        read_rgb(tmp_path / "cut.png")


@pytest.mark.parametrize("high", [1, 255])
def test_binary_labels(tmp_path, high):
    label = (RGB[..., 0] > 128).astype(np.uint8) * high
    Image.fromarray(label).save(tmp_path / "label.png")
    assert np.array_equal(read_mask(tmp_path / "label.png"), label > 0)


def test_non_binary_label_lists_its_values(tmp_path):
    label = np.zeros((8, 8), np.uint8)
    label[0, :3] = (1, 7, 7)
    Image.fromarray(label).save(tmp_path / "classes.png")
    with pytest.raises(ImageReadError, match=r"classes\.png: label is not binary, values \{0, 1, 7\}"):
        read_mask(tmp_path / "classes.png")
    assert read_mask(tmp_path / "classes.png", threshold=3).sum() == 2

    # Anti-aliased 0/255 edges are reported too, and a threshold binarises them.
    label = np.array([[0, 0, 128, 255, 255]], np.uint8)
    Image.fromarray(label).save(tmp_path / "smooth.png")
    with pytest.raises(ImageReadError, match=r"values \{0, 128, 255\}"):
        read_mask(tmp_path / "smooth.png")
    assert read_mask(tmp_path / "smooth.png", threshold=127).tolist() == [[False, False, True, True, True]]


def test_threshold_does_not_touch_binary_labels(tmp_path):
    Image.fromarray(np.array([[0, 1]], np.uint8)).save(tmp_path / "ones.png")
    assert read_mask(tmp_path / "ones.png", threshold=127).tolist() == [[False, True]]


def test_rgb_labels(tmp_path):
    change = RGB[..., 0] > 100
    label = np.zeros((40, 60, 3), np.uint8)
    label[change] = (255, 0, 0)
    Image.fromarray(label).save(tmp_path / "red.png")
    assert np.array_equal(read_mask(tmp_path / "red.png"), change)

    label[:5] = (0, 255, 0)
    label[5:10] = (0, 0, 9)
    Image.fromarray(label).save(tmp_path / "three.png")
    with pytest.raises(ImageReadError, match=r"three\.png: colour label has 3 non-black colours \(\(0, 0, 9\), "):
        read_mask(tmp_path / "three.png")
    assert read_mask(tmp_path / "three.png", threshold=10)[5:10].sum() == 0


def test_label_tiff_and_one_bit_png(tmp_path):
    label = RGB[..., 1] > 50
    tifffile.imwrite(tmp_path / "label.tif", label.astype(np.uint16) * 65535)
    assert np.array_equal(read_mask(tmp_path / "label.tif"), label)
    Image.fromarray(label).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    assert np.array_equal(read_mask(tmp_path / "bits.png"), label)


def test_write_png_atomic_round_trips(tmp_path):
    mask = RGB[..., 0] > 128
    write_png_atomic(tmp_path / "sub" / "mask.png", mask)
    with Image.open(tmp_path / "sub" / "mask.png") as image:
        assert image.mode == "L"
        assert np.array_equal(np.asarray(image), mask.astype(np.uint8) * 255)
    write_png_atomic(tmp_path / "rgb.png", RGB)
    assert np.array_equal(read_rgb(tmp_path / "rgb.png")[0], RGB)
    with pytest.raises(ValueError, match=r"float64 array of shape \(2, 2\)"):
        write_png_atomic(tmp_path / "bad.png", np.zeros((2, 2)))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["mask.png", "rgb.png"]  # no temp files


IMAGE = RNG.integers(0, 256, (300, 200, 3), dtype=np.uint8)
IMAGE16 = IMAGE.astype(np.uint16) * 100
TIFF_LAYOUTS = {
    "one uncompressed strip": (IMAGE, dict(photometric="rgb")),
    "uncompressed strips": (IMAGE, dict(photometric="rgb", rowsperstrip=7)),
    "deflate strips": (IMAGE, dict(photometric="rgb", rowsperstrip=13, compression="zlib")),
    "one deflate strip": (IMAGE, dict(photometric="rgb", rowsperstrip=300, compression="zlib")),
    "deflate tiles": (IMAGE, dict(photometric="rgb", tile=(64, 48), compression="zlib")),
    "uncompressed tiles": (IMAGE, dict(photometric="rgb", tile=(64, 48))),
    "planar tiles": (IMAGE, dict(photometric="rgb", planarconfig="separate", tile=(32, 32), compression="zlib")),
    "planar strips": (IMAGE, dict(photometric="rgb", planarconfig="separate", rowsperstrip=10)),
    "big-endian 16-bit": (IMAGE16, dict(photometric="rgb", byteorder=">", rowsperstrip=10)),
    "16-bit with predictor": (IMAGE16, dict(photometric="rgb", compression="zlib", predictor=True, rowsperstrip=16)),
    "grayscale tiles": (IMAGE[..., :1], dict(photometric="minisblack", tile=(48, 64), compression="zlib")),
}


@pytest.mark.parametrize("layout", TIFF_LAYOUTS)
def test_mosaic_bands_equal_the_image(tmp_path, layout):
    expected, options = TIFF_LAYOUTS[layout]
    data = np.moveaxis(expected, 2, 0) if options.get("planarconfig") == "separate" else expected
    tifffile.imwrite(tmp_path / "mosaic.tif", data.squeeze(), **options)
    with Mosaic(tmp_path / "mosaic.tif") as mosaic:
        assert mosaic.windowed and (mosaic.height, mosaic.width, mosaic.bands) == (300, 200, expected.shape[2])
        bands = [mosaic.read_rows(top, min(top + 64, 300)) for top in range(0, 300, 64)]
    assert np.array_equal(np.concatenate(bands), expected)


def test_mosaic_formats_pillow_writes(tmp_path):
    Image.fromarray(IMAGE).save(tmp_path / "packbits.tif", compression="packbits")
    Image.fromarray(IMAGE).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    Image.fromarray(IMAGE).save(tmp_path / "jpeg.tif", compression="jpeg")  # YCbCr: GDAL gives RGB
    Image.fromarray(IMAGE).save(tmp_path / "mosaic.png")
    for name in ("packbits.tif", "lzw.tif", "jpeg.tif", "mosaic.png"):
        with Mosaic(tmp_path / name) as mosaic:
            expected = read_rgb(tmp_path / name)[0] if name == "jpeg.tif" else IMAGE  # lossy: as read whole
            assert np.array_equal(mosaic.read_rows(100, 164), expected[100:164])
            assert mosaic.windowed == name.endswith(".tif")
            with pytest.raises(ValueError, match=r"rows 290\.\.310 outside 0\.\.300"):
                mosaic.read_rows(290, 310)


def _png_claiming(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims `width` x `height` RGB pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    _png_claiming(tmp_path / "bomb.png", 200_000, 100_000)
    message = r"bomb\.png: the header claims 200,000 x 100,000 = 20,000,000,000 pixels, more than the limit of " \
              r"268,435,456 .* set REASONCD_MAX_IMAGE_PIXELS=20000000000 or more"
    for reader in (read_rgb, read_mask, image_size, Mosaic):
        with pytest.raises(ImageReadError, match=message):
            reader(tmp_path / "bomb.png")


def test_the_pixel_limit_is_the_users_to_set(tmp_path, monkeypatch):
    Image.fromarray(RGB).save(tmp_path / "scene.png")
    tifffile.imwrite(tmp_path / "scene.tif", RGB)
    monkeypatch.setenv("REASONCD_MAX_IMAGE_PIXELS", "2000")  # below the 40 x 60 = 2,400 pixels of the scene
    for name in ("scene.png", "scene.tif"):
        for reader in (read_rgb, read_mask, image_size):
            with pytest.raises(ImageReadError, match=rf"{name}: the header claims 60 x 40 = 2,400 pixels, more than "
                                                     r"the limit of 2,000"):
                reader(tmp_path / name)
    with Mosaic(tmp_path / "scene.tif") as mosaic:  # read in windows: never whole, so no limit
        assert mosaic.windowed and np.array_equal(mosaic.read_rows(0, 40), RGB)
    # Raised past Pillow's own limit (about 179 million pixels), Pillow does not refuse either.
    monkeypatch.setenv("REASONCD_MAX_IMAGE_PIXELS", "200_000_000")
    _png_claiming(tmp_path / "wide.png", 190_000, 1_000)
    assert image_size(tmp_path / "wide.png") == (1_000, 190_000)
    monkeypatch.setenv("REASONCD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ImageReadError, match="REASONCD_MAX_IMAGE_PIXELS='lots': expected a positive whole number"):
        read_rgb(tmp_path / "scene.png")


def _write_raster(path, bands: np.ndarray, **profile) -> None:
    """(bands, H, W) written with rasterio; without crs/transform the file is a plain, not georeferenced raster."""
    profile = {"driver": "GTiff", "count": bands.shape[0], "height": bands.shape[1], "width": bands.shape[2],
               "dtype": bands.dtype, **profile}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dataset:
            dataset.write(bands)


def test_a_georeferenced_geotiff_reads_like_a_plain_tiff(tmp_path):
    bands = np.moveaxis(IMAGE16, 2, 0)
    _write_raster(tmp_path / "geo.tif", bands, crs="EPSG:32650", tiled=True, blockxsize=64, blockysize=64,
                  compress="deflate", transform=Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000))
    tifffile.imwrite(tmp_path / "plain.tif", IMAGE16, photometric="rgb")
    with rasterio.open(tmp_path / "geo.tif") as dataset:
        assert dataset.crs.to_epsg() == 32650  # the fixture really is georeferenced
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NotGeoreferencedWarning for the plain file, nothing else either
        geo, geo_note = read_rgb(tmp_path / "geo.tif")
        plain, plain_note = read_rgb(tmp_path / "plain.tif")
    assert np.array_equal(geo, plain) and geo_note == plain_note
    assert plain_note.startswith("uint16 scaled to 8 bit by a 2-98 percentile stretch")
    assert np.abs(plain.astype(int) - percentile_stretch(IMAGE16)).max() <= 1


def test_mosaic_reads_any_row_range_in_any_order(tmp_path):
    # Bands that do not line up with the 32-row blocks, reads that go back, overlap, or end inside the rows kept
    # from the last read: each equals the slice of the whole image.
    _write_raster(tmp_path / "tiled.tif", np.moveaxis(IMAGE, 2, 0), tiled=True, blockxsize=32, blockysize=32,
                  compress="deflate")
    whole = read_rgb(tmp_path / "tiled.tif")[0]
    assert np.array_equal(whole, IMAGE)
    with Mosaic(tmp_path / "tiled.tif") as mosaic:
        for top, bottom in [(0, 50), (50, 60), (60, 61), (61, 140), (100, 120), (5, 300), (299, 300), (0, 300)]:
            assert np.array_equal(mosaic.read_rows(top, bottom), whole[top:bottom]), (top, bottom)


def test_palette_cmyk_and_one_bit_tiffs_read_like_pillow_reads_them(tmp_path):
    palette = Image.fromarray(RGB[..., 0] // 128, mode="L").convert("P")
    palette.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    palette.save(tmp_path / "palette.tif")
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "cmyk.tif")
    bits = RGB[..., 1] > 50
    Image.fromarray(bits).save(tmp_path / "bits.tif")
    tifffile.imwrite(tmp_path / "miniswhite.tif", bits, photometric="miniswhite")  # 1 is black here
    for name, note in [("palette.tif", "palette colours expanded to RGB"), ("cmyk.tif", "CMYK converted to RGB"),
                       ("bits.tif", "1-bit image scaled to 0/255; grayscale replicated to 3 channels"),
                       ("miniswhite.tif", "1-bit image scaled to 0/255; grayscale replicated to 3 channels")]:
        array, read_note = read_rgb(tmp_path / name)
        with Image.open(tmp_path / name) as image:
            assert np.array_equal(array, np.asarray(image.convert("RGB"))), name
        assert read_note == note, name
    assert np.array_equal(read_mask(tmp_path / "bits.tif"), bits)
    assert np.array_equal(read_mask(tmp_path / "miniswhite.tif"), ~bits)  # white (0 in the file) is True


def test_band_helpers_for_band_first_arrays():
    assert select_bands(3) == ([1, 2, 3], [])
    assert select_bands(4, alpha=True) == ([1, 2, 3], ["alpha channel dropped"])
    assert select_bands(13) == ([1, 2, 3], ["first 3 of 13 bands kept"])
    assert select_bands(2) == ([1], ["first of 2 bands kept"])
    assert select_bands(2, alpha=True) == ([1], ["alpha channel dropped"])
    bands = RNG.integers(0, 4096, (5, 40, 60), dtype=np.uint16)
    rgb, note = bands_to_rgb8(bands)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, to_rgb8(np.moveaxis(bands, 0, -1))[0])
    assert np.abs(rgb.astype(int) - percentile_stretch(np.moveaxis(bands[:3], 0, -1))).max() <= 1
    assert note.startswith("first 3 of 5 bands kept; uint16 scaled to 8 bit")
    gray_alpha = np.stack([RGB[..., 0], np.full((40, 60), 255, np.uint8)])
    rgb, note = bands_to_rgb8(gray_alpha, alpha=True)
    assert np.array_equal(rgb[..., 2], RGB[..., 0])
    assert note == "alpha channel dropped; grayscale replicated to 3 channels"


def test_other_gdal_formats_and_damaged_tiffs(tmp_path):
    # ERDAS Imagine: neither TIFF nor a Pillow format, read by GDAL, by window too.
    _write_raster(tmp_path / "scene.img", np.moveaxis(IMAGE, 2, 0), driver="HFA")
    assert np.array_equal(read_rgb(tmp_path / "scene.img")[0], IMAGE)
    assert image_size(tmp_path / "scene.img") == (300, 200)
    with Mosaic(tmp_path / "scene.img") as mosaic:
        assert mosaic.windowed and np.array_equal(mosaic.read_rows(10, 90), IMAGE[10:90])

    tifffile.imwrite(tmp_path / "full.tif", IMAGE, photometric="rgb", compression="zlib", rowsperstrip=16)
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    assert image_size(tmp_path / "cut.tif") == (300, 200)  # the header survives
    with pytest.raises(ImageReadError, match=r"cut\.tif: cannot read image \(RasterioIOError: .*TIFFReadEncodedStrip"):
        read_rgb(tmp_path / "cut.tif")
    with Mosaic(tmp_path / "cut.tif") as mosaic:
        assert np.array_equal(mosaic.read_rows(0, 16), IMAGE[:16])  # the first strips are intact
        with pytest.raises(ImageReadError, match=r"cut\.tif: cannot read image"):
            mosaic.read_rows(200, 300)
