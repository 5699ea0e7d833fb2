"""The change mask as polygons in the scene's CRS, each with its area and mean change probability.

GDAL's polygonize (`rasterio.features.shapes` on the mask band, 4-connected: 8-connected regions could touch
themselves at a corner, which is not a valid polygon) reads the mask raster from disk. The polygons are collected
by GDAL before the first is returned, so the memory this takes grows with the number of polygon vertices, not
with the scene. Each polygon's statistics are read back from the rasters over its bounding box, in pieces.

GeoJSON is always written (in the scene's CRS, named by a `crs` member as GDAL does: RFC 7946 would want WGS 84);
GeoPackage too when `pyogrio` is installed.
"""
from __future__ import annotations

import json
import struct
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from reasoncd.io import atomic_path

PIECE = 1024  # rows and columns of a polygon's bounding box read at once for its statistics
GPKG_CHUNK = 2000  # features per GeoPackage write
FIELDS = ("id", "pixels", "area_m2", "mean_confidence")


def gpkg_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyogrio") is not None


def square_metres_per_pixel(grid) -> float | None:
    """Ground area of one pixel, where the CRS has linear units (a projected CRS); None for geographic or none."""
    if grid.crs is None or not grid.crs.is_projected:
        return None
    _, metres_per_unit = grid.crs.linear_units_factor
    transform = grid.transform
    return abs(transform.a * transform.e - transform.b * transform.d) * metres_per_unit ** 2


def _pixel_bounds(coordinates, transform, height: int, width: int) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of a polygon's outer ring on the raster grid."""
    ring = np.asarray(coordinates[0], dtype=np.float64)
    cols, rows = ~transform @ (ring[:, 0], ring[:, 1])
    row0, row1 = int(np.floor(rows.min() + 1e-6)), int(np.ceil(rows.max() - 1e-6))
    col0, col1 = int(np.floor(cols.min() + 1e-6)), int(np.ceil(cols.max() - 1e-6))
    return max(row0, 0), max(col0, 0), min(row1, height), min(col1, width)


def polygon_statistics(geometry: dict, mask_dataset, probability_dataset) -> tuple[int, float]:
    """(pixels, mean probability 0-1) of the changed pixels inside `geometry`."""
    from rasterio.features import geometry_mask
    from rasterio.windows import Window, transform as window_transform

    row0, col0, row1, col1 = _pixel_bounds(geometry["coordinates"], mask_dataset.transform,
                                           mask_dataset.height, mask_dataset.width)
    pixels, total = 0, 0.0
    for top in range(row0, row1, PIECE):
        for left in range(col0, col1, PIECE):
            window = Window(left, top, min(PIECE, col1 - left), min(PIECE, row1 - top))
            inside = geometry_mask([geometry], out_shape=(int(window.height), int(window.width)),
                                   transform=window_transform(window, mask_dataset.transform), invert=True)
            inside &= mask_dataset.read(1, window=window) == 1
            pixels += int(inside.sum())
            total += float(probability_dataset.read(1, window=window)[inside].sum(dtype=np.float64))
    return pixels, total / 255.0 / max(pixels, 1)


def polygon_wkb(coordinates) -> bytes:
    """Well-known binary of a polygon (little-endian), for the GeoPackage writer."""
    parts = [struct.pack("<BII", 1, 3, len(coordinates))]
    for ring in coordinates:
        points = np.asarray(ring, dtype="<f8")
        parts += [struct.pack("<I", len(points)), points.tobytes()]
    return b"".join(parts)


def _geojson_crs(crs) -> dict | None:
    code = crs.to_epsg() if crs is not None else None
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{code}"}} if code else None


class _GeoPackage:
    """Features appended in chunks to one layer (pyogrio), so that they need not all be held."""

    def __init__(self, path: Path, layer: str, crs):
        self.path, self.layer, self.crs = path, layer, crs
        self.rows: list[tuple] = []
        self.written = False

    def add(self, wkb: bytes, values: tuple) -> None:
        self.rows.append((wkb, *values))
        if len(self.rows) >= GPKG_CHUNK:
            self.flush()

    def flush(self, final: bool = False) -> None:
        from pyogrio.raw import write

        if not self.rows and (self.written or not final):
            return
        columns = list(zip(*self.rows)) if self.rows else [[] for _ in range(len(FIELDS) + 1)]
        field_data = [np.asarray(columns[1], dtype=np.int64), np.asarray(columns[2], dtype=np.int64),
                      np.asarray(columns[3], dtype=np.float64), np.asarray(columns[4], dtype=np.float64)]
        write(str(self.path), geometry=np.asarray(columns[0], dtype=object), field_data=field_data,
              fields=list(FIELDS), layer=self.layer, driver="GPKG", geometry_type="Polygon",
              crs=self.crs.to_wkt() if self.crs is not None else None, append=self.written)
        self.rows, self.written = [], True


def write_polygons(mask_path: Path, probability_path: Path, geojson_path: Path, gpkg_path: Path | None,
                   layer: str) -> dict:
    """Polygons of the changed pixels of `mask_path` (value 1) to GeoJSON (and GeoPackage); returns their count,
    pixels and area."""
    import rasterio
    from rasterio.features import shapes

    count, pixels_total = 0, 0
    with rasterio.open(mask_path) as mask_dataset, rasterio.open(probability_path) as probability_dataset, \
            atomic_path(geojson_path) as geojson_temporary, \
            (atomic_path(gpkg_path) if gpkg_path else nullcontext()) as gpkg_temporary:
        crs = mask_dataset.crs
        pixel_area = square_metres_per_pixel(mask_dataset)
        gpkg = None
        if gpkg_temporary is not None:
            gpkg_temporary.unlink()  # GDAL creates the file itself
            gpkg = _GeoPackage(gpkg_temporary, layer, crs)
        band = rasterio.band(mask_dataset, 1)
        with open(geojson_temporary, "w", encoding="utf-8") as out:
            header = {"type": "FeatureCollection", "name": layer}
            if _geojson_crs(crs):
                header["crs"] = _geojson_crs(crs)
            out.write(json.dumps(header)[:-1] + ', "features": [\n')
            for geometry, value in shapes(band, mask=band, connectivity=4, transform=mask_dataset.transform):
                if value != 1:  # the nodata value's regions
                    continue
                pixels, confidence = polygon_statistics(geometry, mask_dataset, probability_dataset)
                count += 1
                pixels_total += pixels
                area = None if pixel_area is None else pixels * pixel_area
                properties = {"id": count, "pixels": pixels, "area_m2": area, "mean_confidence": round(confidence, 4)}
                feature = {"type": "Feature", "properties": properties, "geometry": geometry}
                out.write(("" if count == 1 else ",\n") + json.dumps(feature))
                if gpkg is not None:
                    gpkg.add(polygon_wkb(geometry["coordinates"]),
                             (count, pixels, np.nan if area is None else area, round(confidence, 4)))
            out.write("\n]}\n")
        if gpkg is not None:
            gpkg.flush(final=True)
    return {"polygons": count, "polygon_pixels": pixels_total}
