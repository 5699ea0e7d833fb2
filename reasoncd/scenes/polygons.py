"""The change mask as polygons in the scene's CRS, each with its area and mean change probability.

GDAL's polygonize (`rasterio.features.shapes` on the mask band, 4-connected: 8-connected regions could touch
themselves at a corner, which is not a valid polygon) reads the mask raster from disk. The polygons are collected
by GDAL before the first is returned, so the memory this takes grows with the number of polygon vertices, not
with the scene. Each polygon's pixels are found from its edges (`pixel_runs`), and their probabilities read from
the probability raster a band of rows at a time.

Each polygon's area is its ground area on the CRS's ellipsoid (`areas`), whatever the CRS. The features go to one
GeoPackage layer in the scene's CRS, which every polygon format is copied from (`formats`).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from reasoncd.scenes.rasters import PROBABILITY_SCALE

BAND_ROWS = 256  # rows of the probability raster read at once for the polygons' statistics
GPKG_CHUNK = 2000  # features per GeoPackage write
FIELDS = ("id", "pixels", "area_m2", "mean_confidence")
TARGET_FIELD = "target"  # the words naming a target, on the polygons of one target of a question about several


def pixel_runs(coordinates, transform) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    The pixels inside a polygon traced along pixel edges (what polygonize returns), as runs: (rows, first columns,
    ends), sorted by row. Each vertical edge of any ring crosses the rows it spans at its column; sorted along a
    row, the crossings pair up into inside runs (even-odd, so holes fall out). Exact, and it costs the polygon's
    edge length, not its area (GDAL's rasterizer slows down by minutes on a large polygon under a small block cache).
    """
    inverse = ~transform
    columns, tops, bottoms = [], [], []
    for ring in coordinates:
        ring = np.asarray(ring, dtype=np.float64)
        cols, rows = inverse @ (ring[:, 0], ring[:, 1])
        cols, rows = np.rint(cols).astype(np.int64), np.rint(rows).astype(np.int64)
        vertical = (cols[:-1] == cols[1:]) & (rows[:-1] != rows[1:])
        columns.append(cols[:-1][vertical])
        tops.append(np.minimum(rows[:-1], rows[1:])[vertical])
        bottoms.append(np.maximum(rows[:-1], rows[1:])[vertical])
    columns, tops, bottoms = np.concatenate(columns), np.concatenate(tops), np.concatenate(bottoms)
    spans = bottoms - tops
    offsets = np.arange(spans.sum()) - np.repeat(np.cumsum(spans) - spans, spans)
    rows, cols = np.repeat(tops, spans) + offsets, np.repeat(columns, spans)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    return rows[0::2], cols[0::2], cols[1::2]


class _RowBand:
    """Rows of the probability raster, full width, kept for the polygons that fall within them: GDAL hands out
    polygons roughly in row order, and a read per small polygon would cost more than the rest."""

    def __init__(self, probability_dataset):
        self.dataset, self.top, self.rows = probability_dataset, 0, None

    def get(self, first: int, end: int) -> np.ndarray:
        """Rows first..end-1 (at most BAND_ROWS of them)."""
        from rasterio.windows import Window

        if self.rows is None or first < self.top or end > self.top + len(self.rows):
            self.top = max(0, min(first, self.dataset.height - BAND_ROWS))
            height = min(BAND_ROWS, self.dataset.height - self.top)
            self.rows = self.dataset.read(1, window=Window(0, self.top, self.dataset.width, height))
        return self.rows[first - self.top:end - self.top]


def polygon_statistics(geometry: dict, transform, band: _RowBand) -> tuple[int, float]:
    """(pixels, mean probability 0-1) inside a polygon of the mask."""
    rows, starts, ends = pixel_runs(geometry["coordinates"], transform)
    left, right = int(starts.min()), int(ends.max())
    total = 0.0
    for first in range(int(rows[0]), int(rows[-1]) + 1, BAND_ROWS):
        chosen = slice(*np.searchsorted(rows, [first, first + BAND_ROWS]))
        block = band.get(first, min(first + BAND_ROWS, int(rows[-1]) + 1))[:, left:right].astype(np.float64)
        sums = np.zeros((block.shape[0], block.shape[1] + 1))
        np.cumsum(block, axis=1, out=sums[:, 1:])
        local = rows[chosen] - first
        total += float((sums[local, ends[chosen] - left] - sums[local, starts[chosen] - left]).sum())
    pixels = int((ends - starts).sum())
    return pixels, total / PROBABILITY_SCALE / max(pixels, 1)


def polygon_wkb(coordinates) -> bytes:
    """Well-known binary of a polygon (little-endian), for the GeoPackage writer."""
    parts = [struct.pack("<BII", 1, 3, len(coordinates))]
    for ring in coordinates:
        points = np.asarray(ring, dtype="<f8")
        parts += [struct.pack("<I", len(points)), points.tobytes()]
    return b"".join(parts)


def vector_transform(dataset):
    """Pixel -> polygon coordinates: the raster's transform; for a raster without one, pixel space placed as GIS
    tools place such a raster (x = column, y = -row, north up), so the polygons lie on it and are not mirrored."""
    from affine import Affine

    return Affine.scale(1, -1) if dataset.transform == Affine.identity() else dataset.transform


class _GeoPackage:
    """Features appended in chunks to one layer (pyogrio), so that they need not all be held."""

    def __init__(self, path: Path, layer: str, crs, target: str | None = None):
        self.path, self.layer, self.crs, self.target = path, layer, crs, target
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
        fields = list(FIELDS)
        if self.target is not None:
            field_data.append(np.full(len(columns[0]), self.target, dtype=object))
            fields.append(TARGET_FIELD)
        write(str(self.path), geometry=np.asarray(columns[0], dtype=object), field_data=field_data,
              fields=fields, layer=self.layer, driver="GPKG", geometry_type="Polygon",
              crs=self.crs.to_wkt() if self.crs is not None else None, append=self.written)
        self.rows, self.written = [], True


def write_polygons(mask_path: Path, probability_path: Path, gpkg_path: Path, layer: str,
                   target: str | None = None) -> dict:
    """Polygons of the changed pixels of `mask_path` (value 1) to a GeoPackage layer in the mask's CRS, each with
    its pixels, ground area (m², None without a CRS), mean probability and, for one target of a question about
    several changes, the `target` it belongs to; returns their count, pixels and area."""
    import rasterio
    from rasterio.features import shapes

    from reasoncd.scenes.areas import GroundArea

    count, pixels_total, area_total = 0, 0, 0.0
    with rasterio.open(mask_path) as mask_dataset, rasterio.open(probability_path) as probability_dataset:
        transform = vector_transform(mask_dataset)
        ground = GroundArea(mask_dataset.crs, float(np.hypot(transform.a, transform.d)))
        gpkg = _GeoPackage(gpkg_path, layer, mask_dataset.crs, target)
        rows = _RowBand(probability_dataset)
        band = rasterio.band(mask_dataset, 1)
        to_vector = transform @ ~mask_dataset.transform  # polygonize on a band works in the band's own transform
        for geometry, value in shapes(band, mask=band, connectivity=4):
            if value != 1:  # the nodata value's regions
                continue
            if not to_vector.is_identity:
                geometry = {"type": "Polygon", "coordinates": [[to_vector @ point for point in ring]
                                                               for ring in geometry["coordinates"]]}
            pixels, confidence = polygon_statistics(geometry, transform, rows)
            area = ground.polygon(geometry["coordinates"])
            count += 1
            pixels_total += pixels
            area_total += area or 0.0
            gpkg.add(polygon_wkb(geometry["coordinates"]),
                     (count, pixels, np.nan if area is None else round(area, 3), round(confidence, 4)))
        gpkg.flush(final=True)
    return {"polygons": count, "polygon_pixels": pixels_total,
            "area_m2": round(area_total, 3) if ground.known else None}
