"""Ground areas: polygons written from a mask in Web Mercator and in longitude/latitude measure what the same
ground measures on the WGS 84 ellipsoid (a closed formula for areas bounded by meridians and parallels), not their
map area; UTM areas agree with the map's up to UTM's scale."""
import math

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from reasoncd.scenes import rasters
from reasoncd.scenes.areas import GroundArea
from reasoncd.scenes.polygons import write_polygons
from reasoncd.scenes.tiling import Box

pyogrio = pytest.importorskip("pyogrio", reason="polygons are written with pyogrio (pip install pyogrio)")
pytest.importorskip("pyproj", reason="ground areas need pyproj (pip install pyproj)")

A, F = 6378137.0, 1 / 298.257223563  # WGS 84
E2 = F * (2 - F)


def zone_area(lat1: float, lat2: float, lon1: float, lon2: float) -> float:
    """m² of the ellipsoid between two parallels and two meridians (degrees): a²/2 · Δλ · (q(φ2) - q(φ1))."""
    e = math.sqrt(E2)

    def q(lat):
        s = math.sin(math.radians(lat))
        return (1 - E2) * (s / (1 - E2 * s * s) - math.log((1 - e * s) / (1 + e * s)) / (2 * e))

    return A * A / 2 * math.radians(lon2 - lon1) * abs(q(lat2) - q(lat1))


class Grid:
    def __init__(self, crs, transform, height=80, width=100):
        self.crs, self.transform = rasterio.crs.CRS.from_user_input(crs), transform
        self.height, self.width = height, width


def polygon_area(tmp_path, grid, rows, cols):
    """Area of the one polygon written from a mask that is 1 on rows x cols."""
    changed = np.zeros((grid.height, grid.width), bool)
    changed[rows, cols] = True
    whole = Box(0, 0, grid.height, grid.width)
    with rasters.open_probability(tmp_path / "p.tif", grid) as dataset:
        rasters.write_probability(dataset, whole, changed * 0.9, np.ones_like(changed))
    with rasters.open_mask(tmp_path / "m.tif", grid) as dataset:
        rasters.write_mask(dataset, whole, changed, np.ones_like(changed))
    found = write_polygons(tmp_path / "m.tif", tmp_path / "p.tif", tmp_path / "c.gpkg", layer="c")
    meta, _, _, fields = pyogrio.raw.read(tmp_path / "c.gpkg", layer="c")
    area = fields[list(meta["fields"]).index("area_m2")][0]
    assert found["polygons"] == 1 and found["area_m2"] == pytest.approx(area, abs=1e-3)
    return float(area)


def test_web_mercator_areas_are_ground_areas_not_map_areas(tmp_path):
    # 2 m map pixels whose top-left corner is at 30.7 degrees north, 114 east.
    x0, y0 = A * math.radians(114.0), A * math.log(math.tan(math.pi / 4 + math.radians(30.7) / 2))
    grid = Grid("EPSG:3857", from_origin(x0, y0, 2.0, 2.0))
    area = polygon_area(tmp_path, grid, slice(10, 70), slice(20, 90))

    def latitude(y):
        return math.degrees(math.atan(math.sinh(y / A)))

    def longitude(x):
        return math.degrees(x / A)

    expected = zone_area(latitude(y0 - 10 * 2.0), latitude(y0 - 70 * 2.0), longitude(x0 + 40.0), longitude(x0 + 180.0))
    assert area == pytest.approx(expected, rel=1e-5)
    map_area = 60 * 70 * 4.0
    assert map_area / area == pytest.approx(1.36, abs=0.01)  # what a pixel count times the map's pixel gives


def test_longitude_latitude_areas_are_in_square_metres(tmp_path):
    grid = Grid("EPSG:4326", from_origin(7.0, 50.0, 1e-4, 1e-4))
    area = polygon_area(tmp_path, grid, slice(5, 75), slice(0, 100))
    assert area == pytest.approx(zone_area(50.0 - 5e-4, 50.0 - 75e-4, 7.0, 7.0 + 100e-4), rel=1e-5)


def test_utm_areas_are_the_map_areas_up_to_utms_scale(tmp_path):
    grid = Grid("EPSG:32650", from_origin(500000.0, 4000000.0, 0.5, 0.5))
    area = polygon_area(tmp_path, grid, slice(0, 40), slice(0, 40))
    assert area == pytest.approx(40 * 40 * 0.25 / 0.9996 ** 2, rel=1e-5)  # scale 0.9996 on the central meridian


def test_a_pixel_and_no_crs():
    ground = GroundArea(rasterio.crs.CRS.from_epsg(4326), 1e-4)
    at_equator = ground.pixel(from_origin(0.0, 1e-4, 1e-4, 1e-4), 0, 0)
    assert at_equator == pytest.approx(zone_area(0.0, 1e-4, 0.0, 1e-4), rel=1e-6)
    assert not GroundArea(None, 1.0).known and GroundArea(None, 1.0).polygon([[(0, 0), (1, 0), (1, 1), (0, 0)]]) is None
