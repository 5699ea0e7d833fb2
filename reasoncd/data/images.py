"""Reading images and change labels as the model expects them, with errors that name the file and the problem.

Images become (H, W, 3) uint8 RGB. Anything else is converted and the conversion is reported as a short note:

* grayscale is replicated to three channels, an alpha channel is dropped, of more than three bands the first three
  are kept (multispectral TIFF: usually R, G, B first);
* 16-bit and float images are stretched linearly between their own 2nd and 98th percentiles (over all bands at
  once, so colour balance is kept) and clipped: the default of GIS viewers, and the choice that keeps 11- or 12-bit
  sensor data visible, where dividing by 257 would leave it nearly black. The stretch is per image, so the two dates
  of a pair are stretched independently.
* Pillow reduces 16-bit RGB PNG to 8 bit itself (keeping the high byte); that is reported, not stretched.

TIFF is read with tifffile (any bit depth, band count and planar layout); what tifffile cannot read (palette, CMYK,
YCbCr, or a compression that needs the optional imagecodecs package) goes through Pillow. PNG, JPEG and the rest go
through Pillow.

Change labels become (H, W) bool: single-channel 0/1 or 0/255 (any other values are an error unless a threshold is
given), or colour labels with black for "no change" and one colour for "change".

Large mosaics are read in row bands by :class:`Mosaic`, without loading the whole file where the format allows.

An image decoded whole may have at most REASONCD_MAX_IMAGE_PIXELS pixels (default DEFAULT_MAX_IMAGE_PIXELS), checked
from its header before any pixel is decoded: a small file can claim a huge size (a "decompression bomb") and would
otherwise fill the memory. Real scenes above the limit: raise it in the environment, or cut them into tiles.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
# Photometric interpretations whose samples tifffile returns as they are meant to be shown.
_TIFFFILE_PHOTOMETRICS = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)
_ALPHA_SAMPLES = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)


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


@contextlib.contextmanager
def _open_pillow(path):
    """Image.open with Pillow's own decompression-bomb check replaced by ours, so that the one limit above applies
    (and can be raised past Pillow's); the header is checked before the caller decodes anything."""
    with _PILLOW_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with image:
        check_pixel_limit(path, image.height, image.width)
        yield image


def _tiff_size(series) -> tuple[int, int]:
    return series.shape[series.axes.index("Y")], series.shape[series.axes.index("X")]


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    return path


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) in _TIFF_SIGNATURES


def _has_alpha(page: tifffile.TiffPage) -> bool:
    return bool(page.extrasamples) and page.extrasamples[-1] in _ALPHA_SAMPLES


def _tiff_to_hwc(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Reorder a tifffile series to (H, W) or (H, W, bands), whatever its planar layout."""
    keep = [i for i, axis in enumerate(axes) if axis in "YX" or array.shape[i] > 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if len(axes) == 2:
        return array
    if len(axes) == 3 and "Y" in axes and "X" in axes:
        return np.moveaxis(array, [axes.index("Y"), axes.index("X")], [0, 1])
    raise ImageReadError(f"{path}: unsupported TIFF layout, axes {axes!r} with shape {array.shape}")


def _pillow_to_array(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, bool]:
    """Decode a freshly opened Pillow image to a numpy array; also whether its last channel is alpha."""
    # The raw mode of the file is only visible before decoding.
    if any(";16" in str(tile.args) for tile in image.tile) and image.mode in ("RGB", "RGBA"):
        notes.append("16-bit colour reduced to 8 bit by Pillow (high byte kept)")
    image.load()
    if image.mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        notes.append("palette colours expanded to RGB")
    elif image.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F") and not image.mode.startswith("I;16"):
        notes.append(f"{image.mode} converted to RGB")
        image = image.convert("RGB")
    return np.asarray(image), image.mode in ("LA", "RGBA")


def _decode(path) -> tuple[np.ndarray, bool, list[str]]:
    """All pixels of an image file, its alpha flag and the conversion notes so far; errors name the file."""
    path = _existing(path)
    notes: list[str] = []
    tiff_error = None
    if _is_tiff(path):
        try:
            with tifffile.TiffFile(path) as tiff:
                page, series = tiff.pages.first, tiff.series[0]
                if page.photometric in _TIFFFILE_PHOTOMETRICS:
                    check_pixel_limit(path, *_tiff_size(series))
                    return _tiff_to_hwc(series.asarray(), series.axes, path), _has_alpha(page), notes
        except ImageReadError:
            raise
        except Exception as error:  # tifffile raises many types for unsupported or broken files
            tiff_error = error
    try:
        with _open_pillow(path) as image:
            array, alpha = _pillow_to_array(image, notes)
            return array, alpha, notes
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        detail = _describe(error)
        if tiff_error:
            detail = f"tifffile: {_describe(tiff_error)}; Pillow: {detail}"
        raise ImageReadError(f"{path}: cannot read image ({detail})") from error


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


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
    if array.ndim == 3 and alpha:
        array = array[..., :-1]
        notes.append("alpha channel dropped")
    if array.ndim == 3 and array.shape[2] > 3:
        notes.append(f"first 3 of {array.shape[2]} bands kept")
        array = array[..., :3]
    elif array.ndim == 3 and array.shape[2] == 2:
        notes.append("first of 2 bands kept")
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
        notes.append("1-bit image scaled to 0/255")
    elif array.dtype != np.uint8:
        array = _stretch_to_uint8(array, notes)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
        notes.append("grayscale replicated to 3 channels")
    return np.ascontiguousarray(array), "; ".join(notes) or None


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
    path = _existing(path)
    try:
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tiff:
                height, width = _tiff_size(tiff.series[0])
            check_pixel_limit(path, height, width)
            return height, width
        with _open_pillow(path) as image:
            return image.height, image.width
    except ImageReadError:
        raise
    except Exception as error:  # tifffile and Pillow raise many types for broken headers
        raise ImageReadError(f"{path}: cannot read image header ({_describe(error)})") from error


class _TiffMosaic:
    """Row bands of the first page of a TIFF, read segment by segment.

    Uncompressed strips are read row by row straight from the file (a whole uncompressed mosaic is often one strip),
    compressed strips and tiles are decoded one at a time with tifffile's own decoders; decoded segments that reach
    below the band just read are kept for the next band, so each is decoded once. Memory therefore stays at about
    one band plus one row of segments. A mosaic stored as one compressed strip is the exception: that strip is
    decoded whole.
    """

    def __init__(self, path: Path):
        self._tiff = tifffile.TiffFile(path)
        page = self._page = self._tiff.pages.first
        planes, depth, self.height, self.width, self._samples = page.shaped
        if page.photometric not in _TIFFFILE_PHOTOMETRICS or depth != 1 or page.dtype is None:
            self._tiff.close()
            raise ImageReadError(
                f"{path}: unsupported TIFF for windowed reading (photometric {page.photometric.name}, depth {depth},"
                f" {page.bitspersample}-bit); convert it to grayscale/RGB"
            )
        self.path = path
        self.bands = planes * self._samples
        self.dtype = np.dtype(page.dtype)
        self.alpha = _has_alpha(page)
        self._planes = planes
        if page.is_tiled:
            self._segment_height, self._segment_width = page.tilelength, page.tilewidth
        else:
            self._segment_height, self._segment_width = min(page.rowsperstrip or self.height, self.height), self.width
        self._across = -(-self.width // self._segment_width)
        self._down = -(-self.height // self._segment_height)
        self._row_readable = (
            page.compression == tifffile.COMPRESSION.NONE and not page.is_tiled and page.bitspersample % 8 == 0
        )
        self._file_dtype = self.dtype.newbyteorder(self._tiff.byteorder)
        self._decoded: dict[int, np.ndarray] = {}
        if not self._row_readable:
            try:  # fail now, not halfway through a mosaic, when the compression has no decoder here
                self._segment(0)
            except ImageReadError:
                self._tiff.close()
                raise

    def close(self) -> None:
        self._tiff.close()

    def _read_raw_rows(self, index: int, first: int, destination: np.ndarray) -> None:
        """Read rows first.. of uncompressed strip `index` into `destination` (rows, width, samples)."""
        handle = self._tiff.filehandle
        handle.seek(self._page.dataoffsets[index] + first * self.width * self._samples * self._file_dtype.itemsize)
        # Read straight into the output where its layout and byte order allow, so no second copy is made.
        direct = destination.flags.c_contiguous and destination.dtype == self._file_dtype
        buffer = destination if direct else np.empty(destination.shape, self._file_dtype)
        if handle.readinto(buffer) != buffer.nbytes:
            raise ImageReadError(f"{self.path}: file is truncated")
        if not direct:
            destination[...] = buffer

    def _segment(self, index: int) -> np.ndarray:
        """One decoded strip or tile as (rows, columns, samples), padded to the full segment size."""
        if index not in self._decoded:
            offset, size = self._page.dataoffsets[index], self._page.databytecounts[index]
            shape = (self._segment_height, self._segment_width, self._samples)
            if size == 0:  # sparse TIFFs leave empty segments out
                self._decoded[index] = np.zeros(shape, self.dtype)
            else:
                self._tiff.filehandle.seek(offset)
                try:
                    data = self._page.decode(self._tiff.filehandle.read(size), index)[0]
                except Exception as error:  # unknown compression, corrupt data, ...
                    raise ImageReadError(
                        f"{self.path}: cannot decode TIFF segment {index} ({_describe(error)}); "
                        "installing the imagecodecs package adds tifffile decoders for JPEG, WebP and others"
                    ) from error
                segment = np.zeros(shape, self.dtype)
                segment[: data.shape[1], : data.shape[2]] = data[0]
                self._decoded[index] = segment
        return self._decoded[index]

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows top..bottom-1 as (rows, width, bands) in the file's dtype."""
        out = np.empty((bottom - top, self.width, self.bands), self.dtype)
        used: set[int] = set()
        for plane in range(self._planes):
            bands = slice(plane * self._samples, (plane + 1) * self._samples)
            for segment_row in range(top // self._segment_height, -(-bottom // self._segment_height)):
                segment_top = segment_row * self._segment_height
                first, last = max(top, segment_top), min(bottom, segment_top + self._segment_height)
                for segment_column in range(self._across):
                    index = (plane * self._down + segment_row) * self._across + segment_column
                    left = segment_column * self._segment_width
                    width = min(self._segment_width, self.width - left)
                    destination = out[first - top : last - top, left : left + width, bands]
                    if self._row_readable:
                        self._read_raw_rows(index, first - segment_top, destination)
                    else:
                        destination[...] = self._segment(index)[first - segment_top : last - segment_top, :width]
                        used.add(index)
        # Keep only segments that continue below this band: the next band starts there.
        self._decoded = {
            index: self._decoded[index]
            for index in used
            if (index // self._across % self._down + 1) * self._segment_height > bottom
        }
        return out


class _PillowMosaic:
    """A PNG/JPEG/... mosaic. These formats cannot be read by window cheaply, so the file is decoded once, whole."""

    def __init__(self, path: Path):
        try:
            with _open_pillow(path) as image:  # decoded whole: the pixel limit applies
                pixels, self.alpha = _pillow_to_array(image, [])
        except ImageReadError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise ImageReadError(f"{path}: cannot read image ({_describe(error)})") from error
        self.path = path
        self._pixels = pixels if pixels.ndim == 3 else pixels[..., None]
        self.height, self.width, self.bands = self._pixels.shape
        self.dtype = self._pixels.dtype

    def close(self) -> None:
        self._pixels = None

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        return self._pixels[top:bottom]


class Mosaic:
    """A large image read in row bands: ``height``, ``width``, ``bands``, ``dtype``, ``alpha`` and
    ``read_rows(top, bottom) -> (rows, width, bands)`` in the file's own dtype. Use as a context manager.

    TIFF (GeoTIFF included) is read band by band from the file (see `_TiffMosaic`) when tifffile can decode its
    compression: uncompressed, Deflate and PackBits always, LZW, JPEG, WebP, ... only with the imagecodecs package.
    Otherwise, and for PNG, JPEG and other formats, the file is decoded whole by Pillow; ``windowed`` tells which.
    """

    def __init__(self, path):
        path = _existing(path)
        self.windowed = _is_tiff(path)
        try:
            self._reader = _TiffMosaic(path) if self.windowed else _PillowMosaic(path)
        except Exception as error:  # a broken header, an unsupported photometric, a compression without decoder
            if not self.windowed:
                raise
            self.windowed = False
            try:
                self._reader = _PillowMosaic(path)
            except ImageReadError:
                if isinstance(error, ImageReadError):
                    raise error from None
                raise ImageReadError(f"{path}: cannot read image ({_describe(error)})") from error
        self.path = path
        self.height, self.width, self.bands = self._reader.height, self._reader.width, self._reader.bands
        self.dtype, self.alpha = self._reader.dtype, self._reader.alpha

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        if not 0 <= top < bottom <= self.height:
            raise ValueError(f"{self.path}: rows {top}..{bottom} outside 0..{self.height}")
        return self._reader.read_rows(top, bottom)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Mosaic:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
