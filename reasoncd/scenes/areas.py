"""Ground areas in m² of shapes given in a scene's CRS, whatever the CRS.

A pixel count times the pixel's map area is a ground area only in a CRS that keeps distances (UTM, roughly): in Web
Mercator it overstates by 1/cos²(latitude), in a geographic CRS it is in square degrees. So every area is measured on
the CRS's own ellipsoid: the shape is taken to longitude/latitude and its geodesic area computed (pyproj's
GeographicLib). Edges are first cut into pieces of at most DENSIFY_PIXELS pixels, so that a long straight edge in the
map (a parallel in Mercator or in lon/lat) is followed closely by the geodesics between its points.
"""
from __future__ import annotations

import numpy as np

DENSIFY_PIXELS = 8  # longest edge, in pixels, between points whose geodesic is measured


class GroundArea:
    """Areas on the ellipsoid of `crs` (a rasterio CRS) of polygons with vertices in that CRS; None without a CRS
    or with one that has no ellipsoid (then there is no ground to measure on)."""

    def __init__(self, crs, pixel_size: float):
        self.geod = self.to_lonlat = None
        if crs is None:
            return
        import pyproj

        native = pyproj.CRS.from_wkt(crs.to_wkt())
        if native.geodetic_crs is None or native.get_geod() is None:
            return
        self.geod = native.get_geod()
        self.to_lonlat = pyproj.Transformer.from_crs(native, native.geodetic_crs, always_xy=True)
        self.step = DENSIFY_PIXELS * pixel_size

    @property
    def known(self) -> bool:
        return self.geod is not None

    def ring(self, points) -> float:
        """Unsigned area of one closed ring, (n, 2) map coordinates."""
        import shapely

        points = shapely.get_coordinates(shapely.segmentize(shapely.linearrings(np.asarray(points, np.float64)),
                                                            self.step))
        lon, lat = self.to_lonlat.transform(points[:, 0], points[:, 1])
        area, _ = self.geod.polygon_area_perimeter(lon, lat)
        return abs(area)

    def polygon(self, rings) -> float | None:
        """Area of a polygon given as rings (the exterior, then holes)."""
        if not self.known:
            return None
        return self.ring(rings[0]) - sum(self.ring(hole) for hole in rings[1:])

    def pixel(self, transform, row: float, col: float) -> float | None:
        """Area of the pixel at (row, col) of a grid with `transform`."""
        corners = [transform @ (col + dc, row + dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1), (0, 0))]
        return self.polygon([corners])
