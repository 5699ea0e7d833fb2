"""The mask as polygons: valid, inside the scene, in its CRS, with exact areas and mean probabilities; GeoJSON
and GeoPackage agree; an empty mask gives empty layers."""
import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from reasoncd.scenes import rasters
from reasoncd.scenes.polygons import gpkg_available, pixel_runs, polygon_wkb, square_metres_per_pixel, write_polygons
from reasoncd.scenes.tiling import Box
from scene_helpers import ORIGIN, UTM

shapely = pytest.importorskip("shapely", reason="polygon validity is checked with shapely (pip install shapely)")
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
    found = write_polygons(mask_path, probability_path, tmp_path / "c.geojson", None, layer="changes")

    collection = json.loads((tmp_path / "c.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32650"
    features = collection["features"]
    assert found["polygons"] == len(features) == 3
    scene = shapely_box(ORIGIN[0], ORIGIN[1] - 120 * 2.0, ORIGIN[0] + 150 * 2.0, ORIGIN[1])
    by_pixels = {}
    for feature in features:
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and scene.covers(polygon)
        properties = feature["properties"]
        assert properties["area_m2"] == pytest.approx(polygon.area)  # 4 m² pixels, metres
        assert properties["area_m2"] == properties["pixels"] * 4.0
        by_pixels[properties["pixels"]] = properties
    assert set(by_pixels) == {30 * 40 - 100, 40 * 20, 1}
    assert by_pixels[1100]["mean_confidence"] == pytest.approx(round(0.8 * 255) / 255, abs=1e-3)
    assert by_pixels[800]["mean_confidence"] == pytest.approx(round(0.6 * 255) / 255, abs=1e-3)
    holed = next(shape(f["geometry"]) for f in features if f["properties"]["pixels"] == 1100)
    assert len(holed.interiors) == 1


@pytest.mark.skipif(not gpkg_available(), reason="GeoPackage output needs pyogrio")
def test_geopackage_holds_the_same_features_in_the_scenes_crs(tmp_path):
    import pyogrio

    grid = Grid(60, 60)
    changed = np.zeros((60, 60), bool)
    changed[5:15, 5:25] = True
    changed[40:50, 40:45] = True
    mask_path, probability_path = write_outputs(tmp_path, changed, changed * 0.9, np.ones_like(changed), grid)
    write_polygons(mask_path, probability_path, tmp_path / "c.geojson", tmp_path / "c.gpkg", layer="changes")
    info = pyogrio.read_info(tmp_path / "c.gpkg", layer="changes")
    assert info["crs"] == "EPSG:32650" and info["features"] == 2 and info["geometry_type"] == "Polygon"
    _, _, geometry, fields = pyogrio.raw.read(tmp_path / "c.gpkg", layer="changes")
    from_gpkg = sorted(shapely.from_wkb(g).area for g in geometry)
    features = json.loads((tmp_path / "c.geojson").read_text())["features"]
    assert from_gpkg == sorted(shape(f["geometry"]).area for f in features) == [50 * 4.0, 200 * 4.0]
    assert sorted(fields[2].tolist()) == [200.0, 800.0]  # area_m2


def test_an_empty_mask_gives_empty_layers(tmp_path):
    grid = Grid(40, 40)
    nothing = np.zeros((40, 40), bool)
    mask_path, probability_path = write_outputs(tmp_path, nothing, nothing * 0.0, np.ones_like(nothing), grid)
    gpkg = tmp_path / "c.gpkg" if gpkg_available() else None
    assert write_polygons(mask_path, probability_path, tmp_path / "c.geojson", gpkg, layer="changes")["polygons"] == 0
    assert json.loads((tmp_path / "c.geojson").read_text())["features"] == []
    if gpkg:
        import pyogrio

        assert pyogrio.read_info(gpkg, layer="changes")["features"] == 0


def test_area_is_given_in_square_metres_only_where_the_crs_is_metric():
    assert square_metres_per_pixel(Grid(10, 10, pixel=0.5)) == 0.25
    assert square_metres_per_pixel(Grid(10, 10, crs=rasterio.crs.CRS.from_epsg(2263))) == pytest.approx(
        4.0 * 0.3048006096 ** 2)  # US survey feet
    assert square_metres_per_pixel(Grid(10, 10, crs=rasterio.crs.CRS.from_epsg(4326))) is None
    assert square_metres_per_pixel(Grid(10, 10, crs=None)) is None


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
