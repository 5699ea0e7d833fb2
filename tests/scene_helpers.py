"""GeoTIFFs for the scene tests: synthetic dates written with a CRS and a transform."""
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from helpers import random_image

UTM = "EPSG:32650"  # WGS 84 / UTM zone 50N: metres
ORIGIN = (500000.0, 4000000.0)


def write_geotiff(path: Path, bands_first: np.ndarray, crs=UTM, transform=None, pixel: float = 0.5, nodata=None,
                  colorinterp=None) -> Path:
    """(bands, H, W) array to a GeoTIFF; default transform: 0.5 m pixels from ORIGIN."""
    count, height, width = bands_first.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": bands_first.dtype.name}
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or from_origin(*ORIGIN, pixel, pixel)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(bands_first)
        if colorinterp is not None:
            dataset.colorinterp = colorinterp
    return path


def rgb_pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two (3, H, W) uint8 dates: smooth random colour blocks, the second with a changed rectangle."""
    t1 = random_image(height, width, seed)
    t2 = t1.copy()
    t2[height // 4: height // 2, width // 3: 2 * width // 3] = random_image(height // 2 - height // 4,
                                                                         2 * width // 3 - width // 3, seed + 1)
    return np.moveaxis(t1, -1, 0).copy(), np.moveaxis(t2, -1, 0).copy()
