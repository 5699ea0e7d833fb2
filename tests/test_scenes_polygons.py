"""The mask as polygons: valid, inside the scene, in its CRS, with exact pixel counts, ground areas and mean
probabilities; an empty mask gives an empty layer; a scene without georeferencing gives polygons in pixel space, north
up, where a GIS shows the rasters."""
import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from reasoncd.scenes import rasters
from reasoncd.scenes.polygons import pixel_runs, polygon_wkb, write_polygons
from reasoncd.scenes.tiling import Box
from scene_helpers import ORIGIN, UTM

shapely = pytest.importorskip("shapely", reason="polygon validity is checked with shapely (pip install shapely)")
pyogrio = pytest.importorskip("pyogrio", reason="polygons are written with pyogrio (pip install pyogrio)")
from shapely.geometry import box as shapely_box, shape  # noqa: E402


class Grid:
    def __init__(self, height, width, crs=UTM, pixel=2.0):
        self.height, self.width = height, width
        self.crs = rasterio.crs.CRS.from_user_input(crs) if crs else None
        self.transform = from_origin(*ORIGIN, pixel, pixel)


def write_outputs(folder, changed, probability, valid, grid):
    whole = Box(0, 0, grid.height, grid.width)
    with rasters.open_probability(folder / "p.tif", grid) as dataset:
        rasters.write_probability(dataset, whole, probability, valid)
    with rasters.open_mask(folder / "m.tif", grid) as dataset:
        rasters.write_mask(dataset, whole, changed, valid)
    return folder / "m.tif", folder / "p.tif"


def geotiff_georeferencing_tags(path) -> set[int]:
    """The GeoTIFF tags present that place a raster: pixel scale, tie points, transformation matrix."""
    from PIL import Image

    with Image.open(path) as image:
        return set(image.tag_v2) & {33550, 33922, 34264}


def read_layer(path, layer="changes"):
    """[(shapely polygon, {field: value})] of a layer."""
    import pyogrio.raw

    meta, _, geometry, fields = pyogrio.raw.read(path, layer=layer)
    names = list(meta["fields"])
    return [(shapely.from_wkb(g), {n: v.item() for n, v in zip(names, values)})
            for g, values in zip(geometry, zip(*fields))]


@pytest.mark.parametrize("band_rows", [256, 16])  # 16: a polygon spans several bands of rows
def test_polygons_are_valid_inside_the_scene_with_exact_area_and_confidence(tmp_path, monkeypatch, band_rows):
    from reasoncd.scenes import polygons

    monkeypatch.setattr(polygons, "BAND_ROWS", band_rows)
    grid = Grid(120, 150)
    changed = np.zeros((120, 150), bool)
    changed[10:40, 20:60] = True
    changed[20:30, 30:40] = False  # a hole
    changed[80:120, 130:150] = True  # touching the scene's corner
    changed[60, 5] = True  # a single pixel
    valid = np.ones_like(changed)
    valid[0:5, 0:5] = False  # nodata: never a polygon
    probability = np.where(changed, 0.8, 0.1)
    probability[80:120, 130:150] = 0.6
    mask_path, probability_path = write_outputs(tmp_path, changed, probability, valid, grid)
    found = write_polygons(mask_path, probability_path, tmp_path / "c.gpkg", layer="changes")

    assert pyogrio.read_info(tmp_path / "c.gpkg", layer="changes")["crs"] == "EPSG:32650"
    features = read_layer(tmp_path / "c.gpkg")
    assert found["polygons"] == len(features) == 3
    scene = shapely_box(ORIGIN[0], ORIGIN[1] - 120 * 2.0, ORIGIN[0] + 150 * 2.0, ORIGIN[1])
    by_pixels = {}
    for polygon, properties in features:
        assert polygon.is_valid and scene.covers(polygon)
        assert polygon.area == properties["pixels"] * 4.0  # 4 m² pixels
        # The ground area: UTM's scale at 500 km easting is 0.9996, so ground areas are 0.08 % larger than map areas.
        assert properties["area_m2"] == pytest.approx(polygon.area / 0.9996 ** 2, rel=1e-4)
        by_pixels[properties["pixels"]] = properties
    assert set(by_pixels) == {30 * 40 - 100, 40 * 20, 1}
    assert found["area_m2"] == pytest.approx(sum(p["area_m2"] for _, p in features), abs=1e-3)
    assert by_pixels[1100]["mean_confidence"] == pytest.approx(round(0.8 * 254) / 254, abs=1e-3)
    assert by_pixels[800]["mean_confidence"] == pytest.approx(round(0.6 * 254) / 254, abs=1e-3)
    holed = next(polygon for polygon, properties in features if properties["pixels"] == 1100)
    assert len(holed.interiors) == 1


def test_an_empty_mask_gives_an_empty_layer(tmp_path):
    grid = Grid(40, 40)
    nothing = np.zeros((40, 40), bool)
    mask_path, probability_path = write_outputs(tmp_path, nothing, nothing * 0.0, np.ones_like(nothing), grid)
    assert write_polygons(mask_path, probability_path, tmp_path / "c.gpkg", layer="changes")["polygons"] == 0
    assert pyogrio.read_info(tmp_path / "c.gpkg", layer="changes")["features"] == 0


def test_without_georeferencing_polygons_are_in_pixel_space_north_up_and_have_no_area(tmp_path):
    grid = Grid(30, 50, crs=None)
    grid.transform = rasterio.Affine.identity()  # what an image without georeferencing reads as
    changed = np.zeros((30, 50), bool)
    changed[2:5, 10:20] = True  # rows 2-4, columns 10-19
    mask_path, probability_path = write_outputs(tmp_path, changed, changed * 0.9, np.ones_like(changed), grid)
    assert not geotiff_georeferencing_tags(mask_path)  # no identity (south-up) geotransform written
    found = write_polygons(mask_path, probability_path, tmp_path / "c.gpkg", layer="changes")
    (polygon, properties), = read_layer(tmp_path / "c.gpkg")
    assert polygon.bounds == (10.0, -5.0, 20.0, -2.0)  # x = column, y = -row: as QGIS places such a raster
    assert properties["pixels"] == 30 and np.isnan(properties["area_m2"]) and found["area_m2"] is None


def test_wkb_encodes_a_polygon_with_a_hole():
    rings = [[(0, 0), (4, 0), (4, 4), (0, 4), (0, 0)], [(1, 1), (2, 1), (2, 2), (1, 2), (1, 1)]]
    polygon = shapely.from_wkb(polygon_wkb(rings))
    assert polygon.area == 15 and len(polygon.interiors) == 1


def test_pixel_runs_are_exactly_the_pixels_of_a_traced_region():
    from rasterio.features import shapes

    rng = np.random.default_rng(1)
    changed = rng.random((60, 70)) < 0.6  # percolates: one large region with many holes, and small ones
    transform = from_origin(*ORIGIN, 2.0, 2.0)
    labelled = np.zeros(changed.shape, int)
    for number, (geometry, _) in enumerate(shapes(changed.astype(np.uint8), mask=changed, connectivity=4,
                                                  transform=transform), 1):
        rows, starts, ends = pixel_runs(geometry["coordinates"], transform)
        for row, start, end in zip(rows, starts, ends):
            assert (labelled[row, start:end] == 0).all()
            labelled[row, start:end] = number
    assert ((labelled > 0) == changed).all()  # every changed pixel in exactly one polygon, nothing else
