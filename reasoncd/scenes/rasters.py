"""The scene's output rasters: written block by block as tiled GeoTIFFs on T1's grid, then copied to
Cloud-Optimized GeoTIFFs (GDAL's COG driver is create-copy only, so it cannot be written as it goes).

probability: uint8, 0-254 for change probability 0-1 (the band's scale is 1/254, so GDAL and QGIS show the
probability), NODATA where either date has no data. A reserved nodata value, not a mask band: a plain `gdalwarp`
keeps a nodata value but turns an internal mask into probability 0.
mask: uint8, 1 change, 0 no change, NODATA where either date has no data, with a colour table.
Both carry a band description and the question and model as tags, and are DEFLATE-compressed with a horizontal
predictor (a quarter smaller than without). A scene without georeferencing gives rasters without a geotransform
(GIS tools then place them as they place the inputs), not an identity one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from reasoncd.io import atomic_path

NODATA = 255
PROBABILITY_SCALE = 254  # stored value for probability 1
DESCRIPTIONS = {"probability": "change probability (stored 0-254, scale 1/254)",
                "mask": "change mask (1 change, 0 no change)"}
# Mask colours: change red, no change black; a TIFF palette has no alpha (nodata is shown transparent by its value).
MASK_COLOURS = {0: (0, 0, 0, 255), 1: (230, 30, 30, 255), NODATA: (255, 255, 255, 255)}
BLOCK = 256  # GeoTIFF block side while writing
# COG overviews: probabilities are averaged, a mask keeps its classes.
OVERVIEW_RESAMPLING = {"probability": "average", "mask": "nearest"}
# GDAL settings for the whole run: a bounded block cache (it otherwise grows with what was read, up to 5 % of RAM)
# and masks kept inside the GeoTIFF rather than in a .msk file beside it.
GDAL_OPTIONS = {"GDAL_CACHEMAX": 64, "GDAL_TIFF_INTERNAL_MASK": True}


def _open(path: Path, grid, kind: str, tags: dict | None):
    import rasterio
    from affine import Affine

    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1, "dtype": "uint8",
               "nodata": NODATA, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
               "BIGTIFF": "IF_SAFER"}  # uncompressed: scratch, compressed once as COG
    if grid.crs is not None:
        profile["crs"] = grid.crs
    if grid.transform != Affine.identity():
        profile["transform"] = grid.transform
    dataset = rasterio.open(path, "w", **profile)
    dataset.set_band_description(1, DESCRIPTIONS[kind])
    if kind == "probability":
        dataset.scales, dataset.offsets = (1 / PROBABILITY_SCALE,), (0.0,)
    else:
        dataset.write_colormap(1, MASK_COLOURS)
    dataset.update_tags(**{key.upper(): str(value) for key, value in (tags or {}).items()})
    return dataset


def open_probability(path: Path, grid, tags: dict | None = None):
    return _open(path, grid, "probability", tags)


def open_mask(path: Path, grid, tags: dict | None = None):
    return _open(path, grid, "mask", tags)


def write_probability(dataset, box, probability: np.ndarray, valid: np.ndarray) -> None:
    values = np.where(valid, np.round(probability * PROBABILITY_SCALE), NODATA).astype(np.uint8)
    dataset.write(values, 1, window=box.window())


def write_mask(dataset, box, changed: np.ndarray, valid: np.ndarray) -> None:
    values = np.where(valid, changed.astype(np.uint8), np.uint8(NODATA))
    dataset.write(values, 1, window=box.window())


def to_cog(source: Path, target: Path, kind: str) -> None:
    """Copy a written GeoTIFF to a Cloud-Optimized one at `target`, atomically."""
    from rasterio.shutil import copy

    with atomic_path(target) as temporary:
        temporary.unlink()  # GDAL creates the file itself
        copy(source, temporary, driver="COG", compress="deflate", predictor=2,
             resampling=OVERVIEW_RESAMPLING[kind], num_threads="ALL_CPUS")
