"""What a scene run writes per question: one entry per kind of output (its file-name suffix, what it holds, how it is
written, whether this installation can write it). Rasters are always written; polygon formats are chosen by name
(`--formats`). Adding a format is adding an entry here.

Rasters are written into the run's scratch folder as tiled GeoTIFFs, then copied to Cloud-Optimized GeoTIFFs.
Polygons are written once, into a scratch GeoPackage in the scene's CRS (with their ground areas), and every polygon
format is an OGR copy of that layer (streamed through Arrow, so no format holds all features in memory) with the
driver's own options: GeoJSON as RFC 7946 (WGS 84 longitude/latitude, what web maps expect), the others in the
scene's CRS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from reasoncd.io import atomic_path

SCRATCH_POLYGONS = "polygons-scratch.gpkg"  # per question, in the scratch folder: the layer every format copies
DEFAULT_FORMATS = ("geojson", "gpkg")


@dataclass(frozen=True)
class OutputKind:
    name: str
    suffix: str  # file name after the question's stem: q1_new-buildings_<suffix>
    what: str  # one line for --help and the README
    raster: bool = False
    driver: str | None = None  # OGR driver of a polygon format
    layer_options: dict = field(default_factory=dict)
    dataset_options: dict = field(default_factory=dict)
    georeferenced_options: dict = field(default_factory=dict)  # added when the scene has a CRS

    def available(self) -> bool:
        return self.raster or self.driver in _writable_drivers()


RASTERS = {
    "probability": OutputKind("probability", "probability.tif", "change probability, Cloud-Optimized GeoTIFF",
                              raster=True),
    "mask": OutputKind("mask", "mask.tif", "change mask, Cloud-Optimized GeoTIFF", raster=True),
}
POLYGON_FORMATS = {
    "geojson": OutputKind("geojson", "polygons.geojson", "polygons as RFC 7946 GeoJSON (WGS 84 lon/lat, for web maps)",
                          driver="GeoJSON", layer_options={"WRITE_NAME": "YES"},
                          georeferenced_options={"RFC7946": "YES", "COORDINATE_PRECISION": 8}),
    # GeoPackage 1.2: GDAL >= 3.11 writes 1.4 by default, which GDAL 3.6-era tools (QGIS 3.22-3.28) warn about.
    "gpkg": OutputKind("gpkg", "polygons.gpkg", "polygons as a GeoPackage layer in the scene's CRS", driver="GPKG",
                       dataset_options={"VERSION": "1.2"}),
    "fgb": OutputKind("fgb", "polygons.fgb", "polygons as FlatGeobuf in the scene's CRS (with a spatial index)",
                      driver="FlatGeobuf"),
}
KINDS = {**RASTERS, **POLYGON_FORMATS}


@lru_cache(maxsize=1)
def _writable_drivers() -> frozenset:
    try:
        import pyogrio
    except ImportError:
        return frozenset()
    return frozenset(pyogrio.list_drivers(write=True))


def parse_formats(text: str) -> tuple[str, ...]:
    """'geojson,gpkg' -> ('geojson', 'gpkg'), each a known polygon format this installation can write."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in POLYGON_FORMATS]
    if unknown:
        raise ValueError(f"--formats {text!r}: unknown format {unknown[0]!r}; choose from "
                         f"{', '.join(POLYGON_FORMATS)}")
    missing = [name for name in names if not POLYGON_FORMATS[name].available()]
    if missing:
        raise ValueError(f"--formats {text!r}: {missing[0]} cannot be written here (GDAL driver "
                         f"{POLYGON_FORMATS[missing[0]].driver} missing; pip install pyogrio)")
    return names


def layer_name(stem: str) -> str:
    """A layer name that SQL needs no quotes for (q1_new_buildings)."""
    return stem.replace("-", "_")


def question_files(stem: str, formats) -> dict[str, str]:
    """{kind: file name} of what the run writes for one question."""
    return {name: f"{stem}_{kind.suffix}" for name, kind in KINDS.items() if kind.raster or name in formats}


def scratch_path(work: Path, stem: str, kind: str) -> Path:
    """Where a kind's scratch file is built (rasters) or where the polygons' scratch layer lives."""
    return work / (f"{stem}_{SCRATCH_POLYGONS}" if kind == "polygons" else f"{stem}_{KINDS[kind].suffix}")


def copy_polygons(scratch: Path, target: Path, kind: OutputKind, layer: str) -> None:
    """The scratch layer to `target` in the kind's format, atomically."""
    from pyogrio.raw import open_arrow, write_arrow

    with open_arrow(scratch, layer=layer, use_pyarrow=False) as (meta, reader), atomic_path(target) as temporary:
        temporary.unlink()  # GDAL creates the file itself
        layer_options = {**kind.layer_options, **(kind.georeferenced_options if meta["crs"] else {})}
        write_arrow(reader, temporary, layer=layer, driver=kind.driver, geometry_name=meta["geometry_name"],
                    geometry_type="Polygon", crs=meta["crs"], layer_options=layer_options,
                    dataset_options=kind.dataset_options)
