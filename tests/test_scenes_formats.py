"""The table of scene outputs: formats chosen by name, refused by name when unknown, files named from the table, and
every polygon format a copy of the same layer (RFC 7946 GeoJSON in WGS 84, the others in the scene's CRS)."""
import json

import numpy as np
import pytest

from reasoncd.scenes import formats

pyogrio = pytest.importorskip("pyogrio", reason="polygon formats are written with pyogrio (pip install pyogrio)")
shapely = pytest.importorskip("shapely", reason="geometries are compared with shapely (pip install shapely)")


def test_formats_are_chosen_by_name_and_unknown_ones_refused():
    assert formats.parse_formats("GeoJSON, fgb,geojson") == ("geojson", "fgb")
    with pytest.raises(ValueError, match="unknown format 'shp'.*geojson, gpkg, fgb"):
        formats.parse_formats("gpkg,shp")
    assert formats.question_files("q1_roads", ("fgb",)) == {"probability": "q1_roads_probability.tif",
                                                           "mask": "q1_roads_mask.tif", "fgb": "q1_roads_polygons.fgb"}
    assert formats.layer_name("q2_new-buildings") == "q2_new_buildings"


@pytest.mark.parametrize("crs", ["EPSG:32650", "EPSG:4326", None])
def test_every_polygon_format_is_a_copy_of_the_scratch_layer(tmp_path, crs):
    from pyogrio.raw import read, write

    origin = {"EPSG:32650": (500000.0, 4000000.0), "EPSG:4326": (117.0, 36.1), None: (0.0, 0.0)}[crs]
    size = 10.0 if crs != "EPSG:4326" else 1e-4
    polygons = [shapely.box(origin[0], origin[1], origin[0] + size, origin[1] + 2 * size),
                shapely.box(origin[0] + 3 * size, origin[1], origin[0] + 4 * size, origin[1] + size)]
    scratch = tmp_path / "scratch.gpkg"
    write(str(scratch), geometry=np.array(shapely.to_wkb(polygons), dtype=object),
          field_data=[np.array([1, 2]), np.array([200.5, 100.25])], fields=["id", "area_m2"], layer="q1_x",
          driver="GPKG", geometry_type="Polygon", crs=crs)
    for name, kind in formats.POLYGON_FORMATS.items():
        target = tmp_path / f"out.{name}"
        formats.copy_polygons(scratch, target, kind, "q1_x")
        meta, _, geometry, fields = read(target)
        order = np.argsort(fields[0])  # FlatGeobuf's spatial index orders features along a curve; ids stay
        assert list(fields[0][order]) == [1, 2] and list(fields[1][order]) == [200.5, 100.25], name
        copied = shapely.from_wkb(geometry[order])
        if name == "geojson" and crs is not None:
            collection = json.loads(target.read_text())
            assert "crs" not in collection and meta["crs"] == "EPSG:4326"  # as GDAL reads RFC 7946
            lon, lat = collection["features"][0]["geometry"]["coordinates"][0][0]
            if crs == "EPSG:4326":  # the same lon/lat, to GeoJSON's 8 decimals
                assert all(a.hausdorff_distance(b) < 1e-8 for a, b in zip(copied, polygons))
            assert 116 < lon < 118 and 36 < lat < 37.1  # longitude first
        else:
            # A GeoJSON file without a CRS is read as WGS 84 (the format's only CRS): its pixel coordinates stay
            assert meta["crs"] == (crs or ("EPSG:4326" if name == "geojson" else None))
            assert all(a.equals(b) for a, b in zip(copied, polygons)), name
