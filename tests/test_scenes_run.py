"""predict_scene.py on GeoTIFFs written here: outputs on T1's grid and CRS, a one-tile scene gives predict's mask,
an interrupted run resumes to the same outputs, T2 off T1's grid is aligned and nodata tiles are skipped, and bad
inputs are refused with nothing written."""
import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import predict_scene
from helpers import seg_forcing_checkpoint
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
    assert predict_scene.main(arguments(model, *scene, output)) == 0
    return output


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
        assert answered["changed_area_m2"] == pytest.approx(0.25 * answered["changed_pixels"])  # 0.5 m pixels
        assert answered["tiles_with_change"] == 6 and answered["tiles_without_change"] == 0
        collection = json.loads((reference / files["geojson"]).read_text())
        assert len(collection["features"]) == answered["polygons"] > 0
        assert sum(f["properties"]["pixels"] for f in collection["features"]) == answered["changed_pixels"]
        assert answered["answer"]
    probability, _ = read_band(reference / summary["questions"][0]["files"]["probability"])
    assert ((probability > 127) == (mask == 1)).mean() > 0.99  # the mask is the probability above one half


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
    for feature in json.loads((output / "q1_new-buildings_polygons.geojson").read_text())["features"]:
        xs = [x for ring in feature["geometry"]["coordinates"] for x, _ in ring]
        assert min(xs) >= ORIGIN[0] + 74  # no polygon where T2 has no data


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
