"""Two dates of a scene read window by window on T1's pixel grid, as the model's (H, W, 3) uint8 RGB.

T2 is warped onto T1's grid (`WarpedVRT`) when its CRS, transform or size differ; pixels outside either date, or
nodata in either, are invalid, and black in both dates. Nothing is read whole: every access is a window.

Bands: `bands` (1-based, as GDAL counts) picks one band (replicated to grey RGB) or three; without it, bands whose
colour interpretation is red, green and blue are used, else a single band, else exactly three non-alpha bands.
Anything else is refused: a 4-band or 8-band multispectral file has no one right RGB.

Data that is not 8-bit is stretched to 8 bit like single images (`stretch_to_uint8`, 2-98 percentiles); the limits
come from a reduced read of the whole date, so that every tile of the scene is stretched alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The largest side of the reduced read that decides a date's stretch limits.
STRETCH_SAMPLE_SIDE = 1024
RESAMPLING_CHOICES = ("nearest", "bilinear", "cubic", "average")
NO_CRS_NOTE = ("the scene has no CRS (--t1 is not georeferenced): the output rasters have no geotransform and the "
               "polygons are in pixel space (x = column, y = -row), where GIS tools place an image without one "
               "(a GeoJSON reader takes them for longitude/latitude: use the GeoPackage); areas are not known in m²")


class SceneInputError(ValueError):
    """A scene input that cannot be used; the message names the file (or the option) and the reason."""


def _open(path: Path, option: str):
    import rasterio
    from rasterio.errors import RasterioIOError

    if not path.is_file():
        raise SceneInputError(f"{option} {path}: no such file")
    try:
        return rasterio.open(path)
    except RasterioIOError as error:
        raise SceneInputError(f"{option} {path}: cannot read it as a raster ({error}); the file is damaged or not "
                              "an image GDAL can read") from None


def _is_georeferenced(dataset) -> bool:
    from affine import Affine

    return dataset.crs is not None and dataset.transform != Affine.identity()


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """'4,3,2' -> (4, 3, 2); one or three 1-based band numbers."""
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise SceneInputError(f"--bands {text!r}: give band numbers separated by commas, e.g. 4,3,2") from None
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise SceneInputError(f"--bands {text!r}: give one band (shown as grey) or three (red, green, blue), "
                              "numbered from 1 as in GDAL, e.g. 4,3,2")
    return bands


def choose_bands(dataset, path: Path, option: str, requested: tuple[int, ...] | None) -> tuple[tuple[int, ...], str]:
    """The 1-based bands read as RGB (one band: grey) and how they were chosen."""
    from rasterio.enums import ColorInterp

    count = dataset.count
    if requested is not None:
        beyond = [band for band in requested if band > count]
        if beyond:
            raise SceneInputError(f"{option} {path}: has {count} band(s), --bands asks for band {beyond[0]}")
        return requested, f"bands {','.join(map(str, requested))} (--bands)"
    interpretation = list(dataset.colorinterp)
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(colour in interpretation for colour in rgb):
        bands = tuple(interpretation.index(colour) + 1 for colour in rgb)
        return bands, f"bands {','.join(map(str, bands))} (red, green, blue)"
    data_bands = tuple(i + 1 for i, colour in enumerate(interpretation) if colour != ColorInterp.alpha)
    if len(data_bands) == 1:
        return data_bands, f"band {data_bands[0]} as grey"
    if len(data_bands) == 3:
        return data_bands, f"bands {','.join(map(str, data_bands))}"
    raise SceneInputError(f"{option} {path}: {count} bands and no red, green and blue among their colour "
                          "interpretations, so they cannot be mapped to RGB; pick them with --bands (1-based, e.g. "
                          "--bands 3,2,1 for the first three in reverse, --bands 4 for one band as grey)")


def apply_stretch(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """The linear map of `stretch_to_uint8` with limits fixed for the whole scene (so tiles agree)."""
    scaled = (array.astype(np.float32) - low) * (255.0 / (high - low))
    return np.nan_to_num(np.clip(scaled, 0, 255), nan=0.0).round().astype(np.uint8)


def _stretch_limits(dataset, bands) -> tuple[float, float]:
    """2-98 percentile limits of the valid pixels of a reduced read of the whole date."""
    from processing_reasoncd import stretch_to_uint8

    scale = max(dataset.height, dataset.width) / STRETCH_SAMPLE_SIDE
    shape = (len(bands), max(1, int(dataset.height / max(scale, 1))), max(1, int(dataset.width / max(scale, 1))))
    sample = dataset.read(list(bands), out_shape=shape, masked=True).astype(np.float64).filled(np.nan)
    _, low, high = stretch_to_uint8(np.moveaxis(sample, 0, -1))
    return low, high


@dataclass
class _Date:
    path: Path
    option: str
    dataset: object  # an open rasterio dataset, or a WarpedVRT over one
    bands: tuple[int, ...]
    note: str
    limits: tuple[float, float] | None = None

    def read_rgb(self, window) -> tuple[np.ndarray, np.ndarray]:
        pixels = self.dataset.read(list(self.bands), window=window)
        valid = self.dataset.dataset_mask(window=window) > 0
        pixels = np.moveaxis(pixels, 0, -1)
        if self.limits is not None:
            pixels = apply_stretch(pixels, *self.limits)
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        pixels[~valid] = 0  # nodata shows black, whatever value the file keeps there
        return np.ascontiguousarray(pixels), valid


@dataclass
class Scene:
    """The two dates, open; `read(window)` gives both as RGB and the pixels valid in both. Use as a context
    manager. `notes` says how bands were chosen, what was stretched and whether T2 was warped."""

    t1: _Date
    t2: _Date
    notes: list[str] = field(default_factory=list)
    _to_close: list = field(default_factory=list)

    @property
    def grid(self):
        return self.t1.dataset

    @property
    def height(self) -> int:
        return self.grid.height

    @property
    def width(self) -> int:
        return self.grid.width

    def read(self, window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both dates and where both have data. Where either lacks data, both show black: the model compares
        black with black there, not black with imagery, which it would take for change bleeding into the valid
        pixels beside."""
        image_t1, valid_t1 = self.t1.read_rgb(window)
        image_t2, valid_t2 = self.t2.read_rgb(window)
        valid = valid_t1 & valid_t2
        image_t1[~valid] = 0
        image_t2[~valid] = 0
        return image_t1, image_t2, valid

    def valid(self, window) -> np.ndarray:
        """Pixels of `window` valid in both dates."""
        return (self.t1.dataset.dataset_mask(window=window) > 0) & (self.t2.dataset.dataset_mask(window=window) > 0)

    def close(self) -> None:
        for dataset in reversed(self._to_close):
            dataset.close()
        self._to_close.clear()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _same_grid(a, b) -> bool:
    return a.crs == b.crs and a.transform == b.transform and (a.width, a.height) == (b.width, b.height)


def _aligned_t2(t1, t2, path_t1: Path, path_t2: Path, resampling: str):
    """T2 as a dataset on T1's grid: itself, or a WarpedVRT onto T1's CRS, transform and size."""
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    geo_t1, geo_t2 = _is_georeferenced(t1), _is_georeferenced(t2)
    if not (geo_t1 and geo_t2):
        if (t1.width, t1.height) == (t2.width, t2.height):
            note = None if not (geo_t1 or geo_t2) else \
                f"{path_t2 if geo_t1 else path_t1} has no georeferencing; the two dates are taken as the same grid"
            return t2, note
        missing = [f"--t{i} {p}" for i, (p, geo) in enumerate(((path_t1, geo_t1), (path_t2, geo_t2)), 1) if not geo]
        raise SceneInputError(
            f"{' and '.join(missing)}: no georeferencing (CRS and transform), and the dates differ in size "
            f"(--t1 {t1.width}x{t1.height}, --t2 {t2.width}x{t2.height} pixels), so T2 cannot be placed on T1's "
            "grid; georeference the file(s) or give co-registered images of the same size")
    if _same_grid(t1, t2):
        return t2, None
    left, bottom, right, top = transform_bounds(t2.crs, t1.crs, *t2.bounds)
    t1_left, t1_bottom, t1_right, t1_top = t1.bounds
    if min(right, t1_right) <= max(left, t1_left) or min(top, t1_top) <= max(bottom, t1_bottom):
        raise SceneInputError(f"--t2 {path_t2} does not overlap --t1 {path_t1}: T2 covers {left:.6g}, {bottom:.6g} "
                              f"to {right:.6g}, {top:.6g} and T1 {t1_left:.6g}, {t1_bottom:.6g} to {t1_right:.6g}, "
                              f"{t1_top:.6g} (in T1's CRS, {t1.crs.to_string()})")
    has_alpha = ColorInterp.alpha in t2.colorinterp
    vrt = WarpedVRT(t2, crs=t1.crs, transform=t1.transform, width=t1.width, height=t1.height,
                    resampling=Resampling[resampling], add_alpha=t2.nodata is None and not has_alpha)
    return vrt, f"--t2 warped onto T1's grid ({t2.crs.to_string()} -> {t1.crs.to_string()}, {resampling})"


def open_scene(path_t1, path_t2, bands: tuple[int, ...] | None = None, resampling: str = "bilinear") -> Scene:
    """Open and check both dates (raises SceneInputError naming the file); T2 aligned onto T1's grid."""
    from rasterio.windows import Window

    path_t1, path_t2 = Path(path_t1), Path(path_t2)
    if resampling not in RESAMPLING_CHOICES:
        raise SceneInputError(f"--resampling {resampling!r}: choose one of {', '.join(RESAMPLING_CHOICES)}")
    opened = []
    try:
        t1 = _open(path_t1, "--t1")
        opened.append(t1)
        t2 = _open(path_t2, "--t2")
        opened.append(t2)
        aligned, warp_note = _aligned_t2(t1, t2, path_t1, path_t2, resampling)
        if aligned is not t2:
            opened.append(aligned)
        dates = []
        for path, option, source, dataset in ((path_t1, "--t1", t1, t1), (path_t2, "--t2", t2, aligned)):
            chosen, note = choose_bands(source, path, option, bands)
            date = _Date(path, option, dataset, chosen, f"{option} {path.name}: {note}")
            try:  # a damaged file often opens: decode its first block now, not halfway through the scene
                source.read(list(chosen), window=Window(0, 0, min(source.width, 256), min(source.height, 256)))
                if any(source.dtypes[band - 1] != "uint8" for band in chosen):
                    date.limits = _stretch_limits(source, chosen)
            except Exception as error:  # GDAL raises several types for undecodable data
                raise SceneInputError(f"{option} {path}: cannot read its pixels ({error}); the file is damaged "
                                      "or incomplete") from None
            if date.limits is not None:
                date.note += (f"; {source.dtypes[chosen[0] - 1]} stretched to 8 bit between {date.limits[0]:g} and "
                              f"{date.limits[1]:g} (2-98 percentiles of the scene)")
            dates.append(date)
        notes = [d.note for d in dates] + ([warp_note] if warp_note else []) + ([] if t1.crs else [NO_CRS_NOTE])
        scene = Scene(dates[0], dates[1], notes, opened)
        return scene
    except BaseException:
        for dataset in reversed(opened):
            dataset.close()
        raise
