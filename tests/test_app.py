"""app.py: which model it shows, and the page itself, driven in headless Chromium like a user would."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import export
from reasoncd.build import save_checkpoint
from helpers import seg_tiny

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
LEVIR = "LEVIR-CD/ChangeFormer"
SCREENSHOT = REPO / "test-artifacts" / "app.png"


def test_default_model_is_built_when_absent(tmp_path, monkeypatch):
    import app

    default = tmp_path / "runs" / "quickstart" / "model"
    untrained = tmp_path / "runs" / "untrained-tiny"
    monkeypatch.setattr(app, "DEFAULT_MODEL", default)
    monkeypatch.setattr(app, "UNTRAINED_MODEL", untrained)
    location, note = app.resolve_model(str(default))
    assert location == str(untrained) and "untrained tiny model" in note
    assert (untrained / "config.json").is_file()
    assert not (tmp_path / "runs" / "quickstart").exists()  # train.py's run folder is left to train.py
    weights = (untrained / "model.safetensors").stat().st_mtime_ns
    assert app.resolve_model(str(default))[0] == str(untrained)  # built once
    assert (untrained / "model.safetensors").stat().st_mtime_ns == weights
    save_checkpoint(*seg_tiny(0), default)  # once trained, the default is used
    assert app.resolve_model(str(default)) == (str(default), None)
    assert app.resolve_model("someone/reasoncd") == ("someone/reasoncd", None)
    with pytest.raises(SystemExit, match="no such folder"):
        app.resolve_model(str(tmp_path / "elsewhere"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: run .ci/install-browser.sh (apt-get install chromium)")
    pytest.importorskip("playwright", reason="the playwright package is not installed (pip install playwright)")
    root = tmp_path_factory.mktemp("app")
    save_checkpoint(*seg_tiny(0), root / "checkpoint")
    assert export.main(["--run", str(root / "checkpoint"), "--output_dir", str(root / "model"),
                        "--max_new_tokens", "4"]) == 0
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(root / "app.log", "w")
    server = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", str(root / "model"), "--host",
                               "127.0.0.1", "--port", str(port)], cwd=root, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"app.py did not start: {(root / 'app.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_the_page_answers_with_text_mask_and_overlay(app_url, realcd):
    from playwright.sync_api import expect, sync_playwright

    name = sorted((realcd / LEVIR / "A").glob("*.png"))[0].name
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(app_url)

        # Asking before uploading shows a message in the page.
        page.locator("#question textarea").fill("new buildings")
        page.locator("#submit").click()
        expect(page.locator("#status")).to_contain_text("upload both images", timeout=30_000)

        page.locator("#image_t1 input[type=file]").set_input_files(str(realcd / LEVIR / "A" / name))
        page.locator("#image_t2 input[type=file]").set_input_files(str(realcd / LEVIR / "B" / name))
        expect(page.locator("#preview_t1 img")).to_be_visible(timeout=30_000)
        expect(page.locator("#preview_t2 img")).to_be_visible(timeout=30_000)
        page.locator("#submit").click()
        # The answer box shows the answer, not the [SEG] token that points at the mask.
        expect(page.locator("#answer textarea")).to_have_value("The change is marked in the mask.", timeout=60_000)
        expect(page.locator("#mask img")).to_be_visible()
        expect(page.locator("#overlay img")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("images encoded in")
        expect(page.locator("#status")).to_contain_text(re.compile(r"confidence of the map (0\.\d\d|1\.00)"))
        expect(page.locator("#status")).to_contain_text("probability that the answer points at a change 1.00")
        expect(page.locator("#status")).not_to_contain_text("[SEG]")
        # Four [SEG] (the export's max_new_tokens): four targets, each named beside its colour on the overlay.
        expect(page.locator("#status")).to_contain_text("🟥 red: change 1")
        expect(page.locator("#status")).to_contain_text("🟦 blue: change 2")
        expect(page.locator("#mask_file")).to_contain_text(".png")

        # A second question about the same pair, picked from the examples, reuses the encoded images.
        page.get_by_text("implicit: changes that provide more living areas for people").click()
        expect(page.locator("#question textarea")).to_have_value("changes that provide more living areas for people")
        page.locator("#submit").click()
        expect(page.locator("#status")).to_contain_text("reused the encoded images", timeout=60_000)

        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()


def test_the_untrained_model_never_goes_over_a_users_files(tmp_path, monkeypatch, capsys):
    import app
    from helpers import precious_places, tree

    monkeypatch.setattr(app, "DEFAULT_MODEL", tmp_path / "runs" / "quickstart" / "model")
    monkeypatch.delenv("REASONCD_MODEL", raising=False)
    for what, place in precious_places(tmp_path / "places").items():
        monkeypatch.setattr(app, "UNTRAINED_MODEL", place)
        before = tree(place)
        assert app.main([]) == 2, what
        error = capsys.readouterr().err
        assert error.startswith("error: ") and str(place) in error, (what, error)
        assert tree(place) == before, what


def write_geotiff_16bit_4band(path: Path, height: int, width: int, seed: int) -> Path:
    import rasterio

    rng = np.random.default_rng(seed)
    bands = (np.kron(rng.integers(200, 4000, size=(4, height // 16 + 1, width // 16 + 1)),
                     np.ones((1, 16, 16)))[:, :height, :width]).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=4, dtype="uint16") as dataset:
        dataset.write(bands)
    return path


def test_the_page_reads_what_predict_reads_and_refuses_in_words_that_stay(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    t1 = write_geotiff_16bit_4band(tmp_path / "t1-16bit.tif", 96, 128, seed=1)  # predict.py reads these
    t2 = write_geotiff_16bit_4band(tmp_path / "t2-16bit.tif", 96, 128, seed=2)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(app_url)
        # The model is named with its size, and a tiny one is called a demonstration model.
        expect(page.get_by_text("M parameters")).to_be_visible(timeout=30_000)
        expect(page.locator("#model_warning")).to_contain_text("tiny demonstration model")
        # Screen readers hear which image each upload is.
        expect(page.locator("#image_t1 input[type=file]")).to_have_attribute("aria-label", "Upload T1, the earlier image")
        expect(page.locator("#image_t2 input[type=file]")).to_have_attribute("aria-label", "Upload T2, the later image")

        # 16-bit, 4-band GeoTIFFs are read and converted, as predict.py does.
        page.locator("#image_t1 input[type=file]").set_input_files(str(t1))
        page.locator("#image_t2 input[type=file]").set_input_files(str(t2))
        expect(page.locator("#preview_t1 img")).to_be_visible(timeout=30_000)
        expect(page.locator("#preview_t2 img")).to_be_visible(timeout=30_000)
        page.locator("#question textarea").fill("new buildings")
        page.locator("#submit").click()
        expect(page.locator("#answer textarea")).to_have_value("The change is marked in the mask.", timeout=60_000)
        expect(page.locator("#status")).to_contain_text("T1 converted")
        expect(page.locator("#mask img")).to_have_attribute("alt", re.compile("Change mask"))

        # A text file named .png: refused by its name (no server path, no internal words), in the page.
        page.locator("#image_t2").get_by_role("button", name="Clear").click()  # a new upload replaces T2
        page.locator("#image_t2 input[type=file]").set_input_files(str(text_file))
        expect(page.locator("#upload_message")).to_contain_text("Cannot read T2", timeout=30_000)
        expect(page.locator("#upload_message")).to_contain_text("notes.png")
        expect(page.locator("#answer textarea")).to_have_value("")  # the last result is cleared
        page.locator("#submit").click()
        expect(page.locator("#status")).to_contain_text("Cannot answer", timeout=30_000)
        status = page.locator("#status").inner_text()
        assert "notes.png" in status and "/tmp" not in status and "preprocess" not in status, status
        expect(page.locator("#mask img")).to_have_count(0)
        page.wait_for_timeout(11_000)  # longer than a toast lasts: the message stays until the next action
        expect(page.locator("#status")).to_contain_text("Cannot answer")

        # An example pair fills both images and the question.
        page.get_by_text(re.compile("^synthetic pair 3")).click()
        expect(page.locator("#preview_t2 img")).to_be_visible(timeout=30_000)
        expect(page.locator("#upload_message")).not_to_contain_text("Cannot read")
        page.locator("#submit").click()
        expect(page.locator("#answer textarea")).to_have_value("The change is marked in the mask.", timeout=60_000)
        browser.close()
