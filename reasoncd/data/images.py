"""Reading images and change labels as the model expects them, with errors that name the file and the problem.

Images become (H, W, 3) uint8 RGB. Anything else is converted and the conversion is reported as a short note:

* grayscale is replicated to three channels, an alpha channel is dropped, of more than three bands the first three
  are kept (multispectral TIFF: usually R, G, B first), of two bands the first (`select_bands`);
* palette colours are expanded to RGB, 1-bit images become 0/255;
* 16-bit and float images are stretched linearly between their own 2nd and 98th percentiles (over all bands at
  once, so colour balance is kept) and clipped: the default of GIS viewers, and the choice that keeps 11- or 12-bit
  sensor data visible, where dividing by 257 would leave it nearly black. The stretch is per image, so the two dates
  of a pair are stretched independently.
* Pillow reduces 16-bit RGB PNG to 8 bit itself (keeping the high byte); that is reported, not stretched.

PNG and JPEG are read with Pillow. Everything else (TIFF and GeoTIFF of any bit depth, band count, planar layout
and compression, and the other raster formats GDAL reads) is read with GDAL through rasterio (`RasterPicture`),
with Pillow as the fallback for files GDAL cannot open.

Change labels become (H, W) bool: single-channel 0/1 or 0/255 (any other values are an error unless a threshold is
given), or colour labels with black for "no change" and one colour for "change".

Large mosaics are read in row bands by :class:`Mosaic`, through rasterio windows where the format allows.

An image decoded whole may have at most REASONCD_MAX_IMAGE_PIXELS pixels (default DEFAULT_MAX_IMAGE_PIXELS), checked
from its header before any pixel is decoded: a small file can claim a huge size (a "decompression bomb") and would
otherwise fill the memory. Real scenes above the limit: raise it in the environment, or cut them into tiles.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, UnidentifiedImageError
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

_PILLOW_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG
# GDAL's block cache otherwise grows to 5% of the memory while a mosaic is read; reads here decode each block once.
_MIN_GDAL_CACHE_BYTES = 4 << 20

DEFAULT_MAX_IMAGE_PIXELS = 2**28  # 268 million pixels, e.g. 16,384 x 16,384: 805 MB as 8-bit RGB
MAX_IMAGE_PIXELS_VARIABLE = "REASONCD_MAX_IMAGE_PIXELS"
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageReadError(ValueError):
    """An image or label that cannot be read or used; the message starts with the file's path."""


def max_image_pixels() -> int:
    """The pixel limit for images decoded whole: $REASONCD_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS."""
    value = os.environ.get(MAX_IMAGE_PIXELS_VARIABLE, "").strip().replace("_", "")
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise ImageReadError(f"{MAX_IMAGE_PIXELS_VARIABLE}={value!r}: expected a positive whole number of pixels, "
                             "e.g. 1000000000")
    return int(value)


def check_pixel_limit(path, height: int, width: int) -> None:
    """Refuse an image whose header claims more pixels than `max_image_pixels()`, before decoding it."""
    limit = max_image_pixels()
    if height * width > limit:
        raise ImageReadError(
            f"{path}: the header claims {width:,} x {height:,} = {width * height:,} pixels, more than the limit of "
            f"{limit:,} (which stops damaged or malicious files from filling the memory). For a real scene this "
            f"large, set {MAX_IMAGE_PIXELS_VARIABLE}={width * height} or more, or cut it into tiles")


def _describe(error: BaseException) -> str:
    # rasterio's read errors say "see previous exception": the GDAL message is their cause.
    cause = f" ({error.__cause__})" if isinstance(error, RasterioError) and error.__cause__ else ""
    return f"{type(error).__name__}: {error}{cause}"


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    return path


def open_raster(path) -> rasterio.DatasetReader:
    """rasterio.open without the NotGeoreferencedWarning that plain (not geo-) TIFFs would raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _open_pillow(path: Path) -> Image.Image:
    """Image.open with Pillow's own decompression-bomb check replaced by ours, so that the one limit above applies
    (and can be raised past Pillow's); the header is checked before the caller decodes anything."""
    with _PILLOW_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        check_pixel_limit(path, image.height, image.width)
    except ImageReadError:
        image.close()
        raise
    return image


def _open(path, action: str = "read image") -> rasterio.DatasetReader | Image.Image:
    """`path` opened by the reader that suits it: Pillow for PNG and JPEG, rasterio for anything else, and Pillow
    for what GDAL cannot open. Only the header is read; the caller closes the result. `action` words the error."""
    path = _existing(path)
    with open(path, "rb") as file:
        pillow_format = file.read(8).startswith(_PILLOW_SIGNATURES)
    gdal_error = None
    if not pillow_format:
        try:
            return open_raster(path)
        except RasterioError as error:
            gdal_error = error
    try:
        return _open_pillow(path)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        detail = _describe(error)
        if gdal_error is not None:
            detail = f"rasterio: {_describe(gdal_error)}; Pillow: {detail}"
        raise ImageReadError(f"{path}: cannot {action} ({detail})") from error


def select_bands(count: int, alpha: bool = False) -> tuple[list[int], list[str]]:
    """Which of an image's `count` bands make its picture, as band numbers from 1 (rasterio's numbering), and notes
    saying what was left out. `alpha` says that the last band is an alpha channel: it is dropped; of more than three
    bands the first three are kept, of two the first (grayscale + an unmarked extra band)."""
    notes = []
    if alpha and count > 1:
        count -= 1
        notes.append("alpha channel dropped")
    if count > 3:
        notes.append(f"first 3 of {count} bands kept")
        count = 3
    elif count == 2:
        notes.append("first of 2 bands kept")
        count = 1
    return list(range(1, count + 1)), notes


class RasterPicture:
    """The picture of an open rasterio dataset: ``read(window=None)`` gives (rows, columns, bands) with only the
    bands of `select_bands` (alpha dropped), palette colours expanded to RGB and 1-bit data as bool (white is True,
    as Pillow gives it); ``dtype``, ``bands`` and ``notes`` (what was converted) describe it. GDAL itself delivers
    CMYK and YCbCr TIFF as RGB. Read errors name `path`."""

    def __init__(self, dataset: rasterio.DatasetReader, path=None):
        self.dataset, self.path = dataset, Path(path or dataset.name)
        if dataset.count == 0:
            raise ImageReadError(f"{self.path}: no raster bands (a container of subdatasets? open one of them)")
        self._table = None  # value -> colour or value -> bool, for palettes and 1-bit data
        interpretation = dataset.colorinterp
        bilevel = dataset.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "1"
        if dataset.tags(ns="IMAGE_STRUCTURE").get("SOURCE_COLOR_SPACE") == "CMYK":  # GDAL: RGB + an opaque alpha
            self._bands, self.notes = [1, 2, 3], ["CMYK converted to RGB"]
        elif interpretation[0] == ColorInterp.palette:
            self._bands, self.notes = [1], []
            colours = np.zeros((1 << (8 * np.dtype(dataset.dtypes[0]).itemsize), 3), np.uint8)  # every value
            for value, colour in dataset.colormap(1).items():
                colours[value] = colour[:3]
            if bilevel:
                self._table = colours.mean(axis=1) > 127
            else:
                self._table = colours
                self.notes.append("palette colours expanded to RGB")
        else:
            self._bands, self.notes = select_bands(dataset.count, alpha=interpretation[-1] == ColorInterp.alpha)
            if bilevel:
                self._table = np.array([False, True])
        self.dtype = np.dtype(dataset.dtypes[0]) if self._table is None else self._table.dtype
        self.bands = 3 if self._table is not None and self._table.ndim == 2 else len(self._bands)
        block_height = dataset.block_shapes[0][0]
        block_row_bytes = block_height * dataset.width * dataset.count * np.dtype(dataset.dtypes[0]).itemsize
        self._cache_bytes = max(_MIN_GDAL_CACHE_BYTES, 2 * block_row_bytes)

    def read(self, window: Window | None = None) -> np.ndarray:
        """The picture's pixels in `window` (whole-pixel offsets and sizes; default: all of it)."""
        window = window or Window(0, 0, self.dataset.width, self.dataset.height)
        # GDAL writes straight into the pixel-interleaved layout, so no second copy is made.
        pixels = np.empty((int(window.height), int(window.width), len(self._bands)), self.dataset.dtypes[0])
        try:
            with rasterio.Env(GDAL_CACHEMAX=self._cache_bytes):
                self.dataset.read(self._bands, window=window, out=np.moveaxis(pixels, -1, 0))
        except RasterioError as error:
            raise ImageReadError(f"{self.path}: cannot read image ({_describe(error)})") from error
        return pixels if self._table is None else self._table[pixels[..., 0]]


def _pillow_to_array(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, bool]:
    """Decode a freshly opened Pillow image to a numpy array; also whether its last channel is alpha."""
    # The raw mode of the file is only visible before decoding.
    if any(";16" in str(tile.args) for tile in image.tile) and image.mode in ("RGB", "RGBA"):
        notes.append("16-bit colour reduced to 8 bit by Pillow (high byte kept)")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{image.filename}: cannot read image ({_describe(error)})") from error
    if image.mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette colours expanded to RGB")
    elif image.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F") and not image.mode.startswith("I;16"):
        notes.append(f"{image.mode} converted to RGB")
        image = image.convert("RGB")
    return np.asarray(image), image.mode in ("LA", "RGBA")


def _decode(path) -> tuple[np.ndarray, bool, list[str]]:
    """All pixels of an image file, whether its last band is alpha, and the conversion notes so far."""
    with _open(path) as opened:
        if isinstance(opened, Image.Image):
            notes: list[str] = []
            return *_pillow_to_array(opened, notes), notes
        check_pixel_limit(path, opened.height, opened.width)
        picture = RasterPicture(opened, path)
        return picture.read(), False, list(picture.notes)


def _stretch_to_uint8(array: np.ndarray, notes: list[str]) -> np.ndarray:
    """The processor's 2-98 percentile stretch, so files and in-memory arrays give the same model inputs."""
    # Imported here: the processor pulls in torch and transformers, which 8-bit data tools never need.
    from processing_reasoncd import stretch_to_uint8

    stretched, low, high = stretch_to_uint8(array)
    notes.append(f"{array.dtype} scaled to 8 bit by a 2-98 percentile stretch ({low:g} to {high:g})")
    return stretched


def read_rgb(path) -> tuple[np.ndarray, str | None]:
    """Read an image as (H, W, 3) uint8 RGB.

    Returns the array and a note saying how it was converted ("grayscale replicated to 3 channels; ..."), or None
    when the file already was 8-bit RGB. Raises ImageReadError naming the path for a missing or unreadable file.
    """
    array, alpha, notes = _decode(path)
    rgb, note = to_rgb8(array, alpha=alpha)
    notes.extend([note] if note else [])
    return rgb, "; ".join(notes) or None


def to_rgb8(array: np.ndarray, alpha: bool = False) -> tuple[np.ndarray, str | None]:
    """Convert decoded pixels (H, W) or (H, W, bands) to (H, W, 3) uint8 as described in the module docstring.

    `alpha` says that the last band is an alpha channel. Returns the array and a note on the conversion (or None).
    """
    notes: list[str] = []
    if array.ndim == 3:
        kept, notes = select_bands(array.shape[2], alpha)
        array = array[..., : len(kept)] if len(kept) > 1 else array[..., 0]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
        notes.append("1-bit image scaled to 0/255")
    elif array.dtype != np.uint8:
        array = _stretch_to_uint8(array, notes)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
        notes.append("grayscale replicated to 3 channels")
    return np.ascontiguousarray(array), "; ".join(notes) or None


def bands_to_rgb8(bands: np.ndarray, alpha: bool = False) -> tuple[np.ndarray, str | None]:
    """`to_rgb8` for bands first, as rasterio reads them: (bands, H, W) or (H, W) of any dtype to (H, W, 3) uint8,
    with the note on the conversion (or None). `alpha` says that the last band is an alpha channel."""
    return to_rgb8(np.moveaxis(bands, 0, -1) if bands.ndim == 3 else bands, alpha=alpha)


def _distinct(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:  # marking a 256-entry table is faster than sorting and needs no copy
        present = np.zeros(256, bool)
        present[array] = True
        return np.flatnonzero(present)
    return np.unique(array)


def _distinct_packed(rgb: np.ndarray) -> np.ndarray:
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    return np.unique(packed)


def _is_binary(values: np.ndarray, dtype: np.dtype) -> bool:
    """Whether label values are a subset of {0, 1}, {0, 255} or {0, the dtype's maximum}."""
    ones = [1, 255] + ([np.iinfo(dtype).max] if np.issubdtype(dtype, np.integer) else [])
    return any(np.isin(values, (0, one)).all() for one in ones)


def binarize_label(array: np.ndarray, source, threshold: int | None = None) -> np.ndarray:
    """Turn label pixels (H, W) or (H, W, C) into a bool change mask; `source` names the file in errors.

    Single-channel labels must be binary (0/1, 0/255, or 0 and the dtype's maximum) and then mean `> 0`. Colour
    labels must use black and at most one other colour, which means change. Labels that break these rules raise
    ImageReadError listing the offending values, unless `threshold` is given: then `> threshold` (on any channel)
    decides instead. Alpha channels must have been removed by the caller.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == bool:
        return array
    if array.ndim == 2:
        values = _distinct(array)
        if _is_binary(values, array.dtype):
            return array > 0
        if threshold is not None:
            return array > threshold
        shown = ", ".join(f"{value:g}" for value in values[:12]) + (", ..." if values.size > 12 else "")
        raise ImageReadError(
            f"{source}: label is not binary, values {{{shown}}}; expected 0/1 or 0/255 "
            "(give a threshold to binarise it with `> threshold`)"
        )
    if array.ndim != 3 or array.shape[2] < 3:
        raise ImageReadError(f"{source}: unsupported label shape {array.shape}")
    rgb = array[..., :3]
    if rgb.dtype == np.uint8:  # sorting packed 24-bit colours is much faster than unique rows
        packed = _distinct_packed(rgb)
        colours = np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], axis=1)
    else:
        colours = np.unique(rgb.reshape(-1, 3), axis=0)
    change_colours = colours[colours.any(axis=1)]
    if len(change_colours) <= 1:
        return rgb.any(axis=2)
    if threshold is not None:
        return (rgb > threshold).any(axis=2)
    shown = ", ".join(str(tuple(int(c) for c in colour)) for colour in change_colours[:6])
    raise ImageReadError(
        f"{source}: colour label has {len(change_colours)} non-black colours ({shown}"
        f"{', ...' if len(change_colours) > 6 else ''}); expected black for no change and one colour for change "
        "(give a threshold to binarise it with `> threshold`)"
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def images_by_stem(folder) -> dict[str, Path]:
    """The image files of `folder` by name without extension (hidden files, the leftovers of editors, the OS or
    interrupted writes, are skipped); ValueError when two files share a name."""
    files: dict[str, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in files:
                raise ValueError(f"{folder}: {files[path.stem].name} and {path.name} share the name {path.stem}; "
                                 "keep one")
            files[path.stem] = path
    return files


def read_mask(path, threshold: int | None = None) -> np.ndarray:
    """Read a change label as an (H, W) bool mask (True = change); see :func:`binarize_label` for the rules."""
    array, alpha, _ = _decode(path)
    if array.ndim == 3 and alpha:
        array = array[..., :-1]
    return binarize_label(array, Path(path), threshold)


def image_size(path) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels. An image above the pixel limit is
    refused here already, so that a run stops before any work rather than when it reaches the file."""
    with _open(path, "read image header") as opened:
        check_pixel_limit(path, opened.height, opened.width)
        return opened.height, opened.width


class Mosaic:
    """A large image read in row bands: ``height``, ``width``, ``bands``, ``dtype``, ``alpha`` and
    ``read_rows(top, bottom) -> (rows, width, bands)`` in the picture's dtype. Use as a context manager.

    What GDAL opens (TIFF and GeoTIFF whatever their compression, tiling or planar layout) is read by rasterio
    windows as a `RasterPicture` (bands selected, so ``alpha`` is False): memory stays at about one band plus one
    row of the file's blocks, except for a file stored as one compressed strip, which GDAL decodes whole. PNG and
    JPEG cannot be read by window cheaply, so Pillow decodes them whole (the pixel limit applies); ``windowed`` tells
    which.
    """

    def __init__(self, path):
        self.path = _existing(path)
        opened = _open(self.path)
        self.windowed = not isinstance(opened, Image.Image)
        if self.windowed:
            try:
                self._picture = RasterPicture(opened, self.path)
            except ImageReadError:
                opened.close()
                raise
            self.bands, self.dtype, self.alpha = self._picture.bands, self._picture.dtype, False
            self._block_height = opened.block_shapes[0][0]
            self._ahead_top, self._ahead = 0, np.empty((0,))  # rows already decoded below the last band read
        else:
            with opened:
                pixels, self.alpha = _pillow_to_array(opened, [])
            self._pixels = pixels if pixels.ndim == 3 else pixels[..., None]
            self.bands, self.dtype = self._pixels.shape[2], self._pixels.dtype
        self.height, self.width = opened.height, opened.width

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        if not 0 <= top < bottom <= self.height:
            raise ValueError(f"{self.path}: rows {top}..{bottom} outside 0..{self.height}")
        if not self.windowed:
            return self._pixels[top:bottom]
        # GDAL decodes whole blocks: read on to the end of the last block row touched and keep the rows below
        # `bottom`, so that bands read in order decode every block once, whatever the size of GDAL's cache.
        parts, start = [], top
        if self._ahead_top <= top < self._ahead_top + len(self._ahead):
            parts.append(self._ahead[top - self._ahead_top : bottom - self._ahead_top])
            start = self._ahead_top + len(self._ahead)
        if start < bottom:
            end = min(self.height, -(-bottom // self._block_height) * self._block_height)
            self._ahead_top, self._ahead = start, self._picture.read(Window(0, start, self.width, end - start))
            parts.append(self._ahead[: bottom - start])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def close(self) -> None:
        if self.windowed:
            self._picture.dataset.close()
        self._ahead = self._pixels = None

    def __enter__(self) -> Mosaic:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
