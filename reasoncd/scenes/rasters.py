"""The scene's output rasters: written block by block as tiled GeoTIFFs on T1's grid, then copied to
Cloud-Optimized GeoTIFFs (GDAL's COG driver is create-copy only, so it cannot be written as it goes).

probability: uint8, 0-255 for change probability 0-1; pixels without data in T1 or T2 are masked out by an internal
mask band (GDAL's per-dataset mask; QGIS and rasterio's masked reads honour it), since every value 0-255 is taken.
mask: uint8, 1 change, 0 no change, MASK_NODATA where either date has no data (the file's nodata value).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from reasoncd.io import atomic_path

MASK_NODATA = 255
BLOCK = 256  # GeoTIFF block side while writing
# COG overviews: probabilities are averaged, a mask keeps its classes.
OVERVIEW_RESAMPLING = {"probability": "average", "mask": "nearest"}
# GDAL settings for the whole run: a bounded block cache (it otherwise grows with what was read, up to 5 % of RAM)
# and masks kept inside the GeoTIFF rather than in a .msk file beside it.
GDAL_OPTIONS = {"GDAL_CACHEMAX": 64, "GDAL_TIFF_INTERNAL_MASK": True}


def _profile(grid, nodata=None) -> dict:
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1, "dtype": "uint8",
               "crs": grid.crs, "transform": grid.transform, "tiled": True, "blockxsize": BLOCK,
               "blockysize": BLOCK, "BIGTIFF": "IF_SAFER"}  # uncompressed: scratch, compressed once as COG
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def open_probability(path: Path, grid):
    import rasterio

    return rasterio.open(path, "w", **_profile(grid))


def open_mask(path: Path, grid):
    import rasterio

    return rasterio.open(path, "w", **_profile(grid, nodata=MASK_NODATA))


def write_probability(dataset, box, probability: np.ndarray, valid: np.ndarray) -> None:
    dataset.write(np.round(probability * 255).astype(np.uint8), 1, window=box.window())
    dataset.write_mask(valid.astype(np.uint8) * 255, window=box.window())


def write_mask(dataset, box, changed: np.ndarray, valid: np.ndarray) -> None:
    values = np.where(valid, changed.astype(np.uint8), np.uint8(MASK_NODATA))
    dataset.write(values, 1, window=box.window())


def to_cog(source: Path, target: Path, kind: str) -> None:
    """Copy a written GeoTIFF to a Cloud-Optimized one at `target`, atomically."""
    from rasterio.shutil import copy

    with atomic_path(target) as temporary:
        temporary.unlink()  # GDAL creates the file itself
        copy(source, temporary, driver="COG", compress="deflate", resampling=OVERVIEW_RESAMPLING[kind],
             num_threads="ALL_CPUS")
