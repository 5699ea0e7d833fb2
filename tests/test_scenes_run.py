"""predict_scene.py on GeoTIFFs written here: outputs on T1's grid and CRS, a one-tile scene gives predict's mask,
an interrupted run resumes to the same outputs, T2 off T1's grid is aligned and nodata tiles are skipped, nodata in
one date is nodata in both for the model, unreferenced images give outputs in pixel space, and bad inputs are
refused with nothing written."""
import json
import os
import stat

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import predict_scene
from helpers import seg_forcing_checkpoint
from reasoncd.scenes import rasters
from reasoncd.scenes import run as scene_run
from scene_helpers import ORIGIN, rgb_pair, write_geotiff

QUESTIONS = ["new buildings", "river"]
TILING = ["--tile_size", "128", "--overlap", "32", "--batch_size", "2", "--max_new_tokens", "4", "--no_progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return seg_forcing_checkpoint(tmp_path_factory)  # answers [SEG] to everything: every tile has a mask


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    t1, t2 = rgb_pair(200, 280)
    return write_geotiff(folder / "t1.tif", t1), write_geotiff(folder / "t2.tif", t2)


def arguments(model, t1, t2, output, questions=QUESTIONS, *extra):
    args = ["--model", str(model), "--t1", str(t1), "--t2", str(t2), "--output_dir", str(output), *TILING, *extra]
    for question in questions:
        args += ["--question", question]
    return args


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model, scene):
    """An uninterrupted run: 200 x 280 pixels in 6 tiles of 128 (3 batches of 2), two questions."""
    output = tmp_path_factory.mktemp("reference") / "out"
    previous = os.umask(0o022)  # the usual umask: outputs must be readable by all, as other tools' are
    try:
        assert predict_scene.main(arguments(model, *scene, output)) == 0
    finally:
        os.umask(previous)
    return output


def read_layer(path):
    """[(shapely polygon, {field: value})] of a file's only layer."""
    import pyogrio.raw
    import shapely

    meta, _, geometry, fields = pyogrio.raw.read(path)
    return [(shapely.from_wkb(g), {n: v.item() if hasattr(v, "item") else v for n, v in zip(meta["fields"], values)})
            for g, values in zip(geometry, zip(*fields))]


def read_band(path):
    with rasterio.open(path) as dataset:
        return dataset.read(1), dataset.dataset_mask()


def test_outputs_carry_t1s_georeferencing_and_are_cloud_optimized(reference, scene):
    summary = json.loads((reference / "summary.json").read_text())
    with rasterio.open(scene[0]) as t1:
        grid = (t1.crs, t1.transform, t1.width, t1.height)
    assert summary["tiles"] == {"size": 128, "overlap": 32, "total": 6, "with_data": 6, "skipped_nodata": 0}
    for answered in summary["questions"]:
        files = answered["files"]
        for kind in ("probability", "mask"):
            with rasterio.open(reference / files[kind]) as dataset:
                assert (dataset.crs, dataset.transform, dataset.width, dataset.height) == grid
                assert dataset.dtypes == ("uint8",)
                assert dataset.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        mask, _ = read_band(reference / files["mask"])
        with rasterio.open(reference / files["mask"]) as dataset:
            assert dataset.nodata == 255
        assert set(np.unique(mask)) <= {0, 1}
        assert answered["changed_pixels"] == int((mask == 1).sum()) > 0
        # 0.5 m pixels, 0.25 m² on the map; on the ground 0.08 % more (UTM's scale on its central meridian)
        assert answered["changed_area_m2"] == pytest.approx(0.25 * answered["changed_pixels"] / 0.9996 ** 2, rel=1e-5)
        assert answered["tiles_with_change"] == 6 and answered["tiles_without_change"] == 0
        collection = json.loads((reference / files["geojson"]).read_text())
        assert len(collection["features"]) == answered["polygons"] > 0
        assert sum(f["properties"]["pixels"] for f in collection["features"]) == answered["changed_pixels"]
        assert answered["answer"]
    scene_record = summary["scene"]
    assert scene_record["valid_pixels"] == 200 * 280
    assert scene_record["valid_area_m2"] == pytest.approx(200 * 280 * 0.25 / 0.9996 ** 2, rel=1e-5)
    assert scene_record["bounds"] == [ORIGIN[0], ORIGIN[1] - 100, ORIGIN[0] + 140, ORIGIN[1]]
    west, south, east, north = scene_record["bounds_wgs84"]
    assert 116.9 < west < east < 117.1 and 36.1 < south < north < 36.2  # UTM 50N at 500 km E, 4000 km N
    probability, _ = read_band(reference / summary["questions"][-1]["files"]["probability"])
    # The mask is the probability above one half; stored 127 (0.498-0.502) can fall on either side.
    assert (probability[mask == 1] >= 127).all() and (probability[mask == 0] <= 127).all()


def test_a_scene_in_one_tile_gives_the_same_mask_as_predict(tmp_path, model):
    from reasoncd.loading import load_model, predict

    t1, t2 = rgb_pair(150, 190, seed=3)
    path_t1, path_t2 = write_geotiff(tmp_path / "a.tif", t1), write_geotiff(tmp_path / "b.tif", t2)
    assert predict_scene.main(["--model", str(model), "--t1", str(path_t1), "--t2", str(path_t2), "--question",
                               "new buildings", "--output_dir", str(tmp_path / "out"), "--tile_size", "256",
                               "--max_new_tokens", "4", "--no_progress"]) == 0
    mask, valid = read_band(tmp_path / "out" / "q1_new-buildings_mask.tif")
    loaded, processor = load_model(model)
    expected = predict(loaded, processor, np.moveaxis(t1, 0, -1), np.moveaxis(t2, 0, -1), ["new buildings"],
                       max_new_tokens=4)[0]
    assert expected["mask"].any() and not expected["mask"].all()
    assert (valid == 255).all()
    assert ((mask == 1) == expected["mask"]).all()
    # Every [SEG] of the answer (four) is a target with its own mask: the same as predict's, target by target.
    targets = json.loads((tmp_path / "out" / "summary.json").read_text())["questions"][0]["targets"]
    assert [target["label"] for target in targets] == [t["label"] for t in expected["targets"]] == \
        [f"change {k}" for k in range(1, 5)]
    for k, (target, predicted) in enumerate(zip(targets, expected["targets"]), 1):
        assert target["files"]["mask"] == f"q1_new-buildings_target{k}_mask.tif"
        target_mask, _ = read_band(tmp_path / "out" / target["files"]["mask"])
        assert ((target_mask == 1) == predicted["mask"]).all()


def test_every_target_gets_its_rasters_and_polygons_named_by_a_target_field(reference):
    summary = json.loads((reference / "summary.json").read_text())
    for number, answered in enumerate(summary["questions"], 1):
        mask, _ = read_band(reference / answered["files"]["mask"])
        assert [target["label"] for target in answered["targets"]] == [f"change {k}" for k in range(1, 5)]
        union = np.zeros_like(mask, dtype=bool)
        for k, target in enumerate(answered["targets"], 1):
            assert target["files"]["geojson"].startswith(f"q{number}_") and f"_target{k}_" in target["files"]["mask"]
            assert target["tiles_with_target"] == 6
            target_mask, _ = read_band(reference / target["files"]["mask"])
            with rasterio.open(reference / target["files"]["mask"]) as dataset:
                assert dataset.tags()["TARGET"] == target["label"]  # tags are written in capitals
            # A target's blended probability never exceeds the answer's (the highest of its targets'), so each
            # target's mask lies within the question's.
            assert not ((target_mask == 1) & (mask != 1)).any()
            assert target["changed_pixels"] == int((target_mask == 1).sum()) > 0
            union |= target_mask == 1
            features = read_layer(reference / target["files"]["gpkg"])
            assert len(features) == target["polygons"] > 0
            assert {fields["target"] for _, fields in features} == {target["label"]}
            assert sum(fields["pixels"] for _, fields in features) == target["changed_pixels"]
        assert union.any()
        # The question's own polygons carry no target: they are the union's.
        assert "target" not in read_layer(reference / answered["files"]["gpkg"])[0][1]


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_outputs(tmp_path, monkeypatch, model, scene, reference):
    real = scene_run.answer_tiles
    calls = []

    def stop_after_two_batches(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 3:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(scene_run, "answer_tiles", stop_after_two_batches)
    output = tmp_path / "out"
    with pytest.raises(Interrupted):
        predict_scene.main(arguments(model, *scene, output))
    assert not output.exists()  # nothing appears before the run is done
    assert sorted(p.name for p in (tmp_path / ".out.resume" / "work" / "tiles").glob("*.json")) == \
        ["batch-000000.json", "batch-000001.json"]

    calls.clear()
    monkeypatch.setattr(scene_run, "answer_tiles", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    assert predict_scene.main(arguments(model, *scene, output)) == 0
    assert calls == [2]  # only the third batch went through the model again
    assert not (tmp_path / ".out.resume").exists()
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in output.iterdir()) == names
    for name in names:
        if name.endswith(".tif"):
            for resumed, uninterrupted in zip(read_band(output / name), read_band(reference / name)):
                assert (resumed == uninterrupted).all(), name
        elif name.endswith((".json", ".geojson")) and name != ".reasoncd-output.json":
            resumed, uninterrupted = (json.loads((f / name).read_text()) for f in (output, reference))
            if name == "summary.json":
                assert resumed.pop("model") == uninterrupted.pop("model")
            assert resumed == uninterrupted, name


def test_t2_off_t1s_grid_is_aligned_and_tiles_without_data_are_skipped(tmp_path, model, scene):
    # T2 at 1 m pixels and starting 75 m (150 T1 pixels) east: T1's western tiles have no T2 data.
    _, t2 = rgb_pair(200, 280)
    coarse = t2[:, ::2, ::2].copy()
    path_t2 = write_geotiff(tmp_path / "t2-east.tif", coarse, transform=from_origin(ORIGIN[0] + 75, ORIGIN[1], 1, 1))
    output = tmp_path / "out"
    assert predict_scene.main(arguments(model, scene[0], path_t2, output, ["new buildings"])) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["tiles"]["skipped_nodata"] == 2 and summary["tiles"]["with_data"] == 4
    with rasterio.open(scene[0]) as t1, rasterio.open(output / "q1_new-buildings_probability.tif") as probability:
        assert (probability.crs, probability.transform, probability.shape) == (t1.crs, t1.transform, t1.shape)
        valid = probability.dataset_mask() > 0
    mask, _ = read_band(output / "q1_new-buildings_mask.tif")
    assert not valid[:, :148].any() and valid[:, 152:].all()
    assert (mask[:, :148] == 255).all() and set(np.unique(mask[:, 152:])) <= {0, 1}
    for polygon, _ in read_layer(output / "q1_new-buildings_polygons.gpkg"):
        assert polygon.bounds[0] >= ORIGIN[0] + 74  # no polygon where T2 has no data


@pytest.mark.parametrize("problem", ["no overlap", "band mismatch", "damaged file", "no georeferencing"])
def test_bad_inputs_are_refused_by_name_and_nothing_is_written(tmp_path, capsys, model, scene, problem):
    t1, t2 = rgb_pair(200, 280)
    if problem == "no overlap":
        bad = write_geotiff(tmp_path / "bad.tif", t2, transform=from_origin(ORIGIN[0] + 9000, ORIGIN[1], 0.5, 0.5))
        expected = "does not overlap"
    elif problem == "band mismatch":
        bad = write_geotiff(tmp_path / "bad.tif", np.concatenate([t2, t2[:1]]),
                            colorinterp=[rasterio.enums.ColorInterp.undefined] * 4)
        expected = "4 bands"
    elif problem == "damaged file":
        bad = tmp_path / "bad.tif"
        bad.write_bytes(scene[1].read_bytes()[:1500])
        expected = "cannot read"
    else:
        bad = write_geotiff(tmp_path / "bad.tif", t2[:, :100], crs=None)
        expected = "no georeferencing"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert predict_scene.main(arguments(model, scene[0], bad, tmp_path / "out")) == 2
    message = capsys.readouterr().err
    assert str(bad) in message and expected in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output folder, no work folder


def test_outputs_follow_gis_conventions_and_are_readable_by_all(reference):
    import sqlite3

    summary = json.loads((reference / "summary.json").read_text())
    files = summary["questions"][0]["files"]
    with rasterio.open(reference / files["probability"]) as probability:
        assert probability.nodata == rasters.NODATA and probability.scales == (1 / 254,) and probability.offsets == (0,)
        assert probability.descriptions == (rasters.DESCRIPTIONS["probability"],)
        assert probability.tags()["QUESTION"] == "new buildings" and probability.tags()["MODEL"] == summary["model"]
        assert probability.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert probability.read(1).max() <= 254  # 255 is nodata only
    with rasterio.open(reference / files["mask"]) as mask:
        assert mask.colormap(1)[1] == rasters.MASK_COLOURS[1] != mask.colormap(1)[0]
        assert mask.descriptions == (rasters.DESCRIPTIONS["mask"],)
    # RFC 7946: WGS 84 longitude/latitude and no crs member; the same polygons as the GeoPackage in the scene's CRS
    collection = json.loads((reference / files["geojson"]).read_text())
    assert "crs" not in collection
    lon, lat = collection["features"][0]["geometry"]["coordinates"][0][0]
    assert 116.9 < lon < 117.1 and 36.1 < lat < 36.2
    native = read_layer(reference / files["gpkg"])
    assert [p["area_m2"] for _, p in native] == [f["properties"]["area_m2"] for f in collection["features"]]
    with sqlite3.connect(reference / files["gpkg"]) as database:
        assert database.execute("PRAGMA user_version").fetchone() == (10200,)  # GeoPackage 1.2
        (layer,), = database.execute("SELECT table_name FROM gpkg_contents").fetchall()
    assert layer == "q1_new_buildings"  # no quoting needed in SQL
    for path in reference.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def gdal_tool(name):
    import shutil

    if shutil.which(name) is None:
        pytest.skip(f"{name} (GDAL's command-line tools, apt-get install gdal-bin) is not installed")
    return name


def test_gdal_tools_read_the_outputs_and_a_plain_warp_keeps_nodata(tmp_path, reference):
    import subprocess

    summary = json.loads((reference / "summary.json").read_text())
    files = summary["questions"][0]["files"]
    warped = tmp_path / "warped.tif"
    subprocess.run([gdal_tool("gdalwarp"), "-q", "-t_srs", "EPSG:32649", str(reference / files["probability"]),
                    str(warped)], check=True)
    with rasterio.open(warped) as dataset:
        values = dataset.read(1)
        assert dataset.nodata == rasters.NODATA
        assert (values == rasters.NODATA).any() and (values != rasters.NODATA).any()  # the rotated border: nodata
    for name in ("gpkg", "geojson"):
        result = subprocess.run([gdal_tool("ogrinfo"), "-ro", "-so", "-al", str(reference / files[name])],
                                capture_output=True, text=True, check=True)
        assert "Warning" not in result.stderr and "ERROR" not in result.stderr, result.stderr
        assert f"Feature Count: {summary['questions'][0]['polygons']}" in result.stdout
    result = subprocess.run([gdal_tool("ogrinfo"), "-ro", "-sql", "SELECT COUNT(*) AS n FROM q1_new_buildings",
                             str(reference / files["gpkg"])], capture_output=True, text=True, check=True)
    assert f"n (Integer) = {summary['questions'][0]['polygons']}" in result.stdout


def test_nodata_in_one_date_is_nodata_in_both_for_the_model(tmp_path, monkeypatch, model):
    # T2 has no data (value 0, its nodata) in a strip; the same scene with the strip in both dates must give the
    # same probabilities: where one date lacks data, the model sees black in both, not black against imagery.
    t1, t2 = (np.maximum(image, 1) for image in rgb_pair(160, 220, seed=5))  # 0 only where there is no data
    strip_t1, strip_t2 = t1.copy(), t2.copy()
    strip_t2[:, :, :60] = 0
    strip_t1[:, :, :60] = 0
    one = [write_geotiff(tmp_path / "t1.tif", t1, nodata=0), write_geotiff(tmp_path / "t2s.tif", strip_t2, nodata=0)]
    both = [write_geotiff(tmp_path / "t1s.tif", strip_t1, nodata=0), one[1]]
    probabilities, seen = [], {"one": [], "both": []}
    real = scene_run.answer_tiles
    for name, (path_t1, path_t2) in (("one", one), ("both", both)):
        monkeypatch.setattr(scene_run, "answer_tiles", lambda model, processor, t1s, t2s, *rest, name=name: (
            seen[name].append((np.stack(t1s), np.stack(t2s))) or real(model, processor, t1s, t2s, *rest)))
        assert predict_scene.main(arguments(model, path_t1, path_t2, tmp_path / name, ["new buildings"],
                                            "--formats", "geojson,gpkg,fgb", "--no_gpkg")) == 0
        probabilities.append(read_band(tmp_path / name / "q1_new-buildings_probability.tif")[0])
        names = {p.name for p in (tmp_path / name).iterdir()}
        assert "q1_new-buildings_polygons.fgb" in names and "q1_new-buildings_polygons.gpkg" not in names
    assert len(seen["one"]) == len(seen["both"]) > 0
    for (t1s_one, t2s_one), (t1s_both, t2s_both) in zip(seen["one"], seen["both"]):
        assert (t1s_one == t1s_both).all() and (t2s_one == t2s_both).all()  # the model saw the same tiles
    assert (probabilities[0][:, :60] == rasters.NODATA).all()
    assert (probabilities[0][:, 60:] <= 254).all()
    assert (probabilities[0] == probabilities[1]).all()
    flatgeobuf = read_layer(tmp_path / "one" / "q1_new-buildings_polygons.fgb")
    assert flatgeobuf and all(polygon.bounds[0] >= ORIGIN[0] + 30 for polygon, _ in flatgeobuf)


def test_images_without_georeferencing_give_outputs_in_pixel_space_with_a_note(tmp_path, model, capsys):
    from PIL import Image

    t1, t2 = rgb_pair(150, 170, seed=2)
    paths = []
    for name, image in (("t1.png", t1), ("t2.png", t2)):
        Image.fromarray(np.moveaxis(image, 0, -1)).save(tmp_path / name)
        paths.append(tmp_path / name)
    assert predict_scene.main(arguments(model, *paths, tmp_path / "out", ["new buildings"])) == 0
    assert "the scene has no CRS" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["scene"]["crs"] is None and any("no CRS" in note for note in summary["scene"]["notes"])
    assert summary["scene"]["bounds"] == [0, -150, 170, 0] and summary["scene"]["valid_area_m2"] is None
    assert summary["questions"][0]["changed_area_m2"] is None
    mask, _ = read_band(tmp_path / "out" / "q1_new-buildings_mask.tif")
    from PIL import Image as PILImage

    with PILImage.open(tmp_path / "out" / "q1_new-buildings_mask.tif") as tiff:
        assert not set(tiff.tag_v2) & {33550, 33922, 34264}  # no geotransform: not the identity, south up
    polygons = read_layer(tmp_path / "out" / "q1_new-buildings_polygons.gpkg")
    assert polygons
    import rasterio.features
    import shapely

    drawn = rasterio.features.rasterize([(shapely.affinity.scale(polygon, 1, -1, origin=(0, 0)), 1)
                                         for polygon, _ in polygons], out_shape=mask.shape)
    assert (drawn == (mask == 1)).all()  # y = -row: flipped back, the polygons cover the mask's pixels
