"""The page at `/` in a real browser: headless Chromium (Debian's package) driven by Playwright uploads
an image and sees the overlay, the people table and the 3D view (<model-viewer> from npm) appear."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from sathmr.serve.service import InferenceService, ModelSpec, ServeConfig
from sathmr.serve.viewer import find_viewer

from serve_helpers import LiveServer, sample_images

sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs playwright (pip install playwright)")
CHROMIUM = os.environ.get("SATHMR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# the probe's flags for a closed network; WebGL on the CPU through SwiftShader (no GPU here)
VIEWER = find_viewer()     # resolved now: the `embedded` fixture moves the cache the default lies in
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium; .ci/run installs it)"),
    pytest.mark.skipif(VIEWER is None, reason="the 3D viewer is not installed (sathmr serve --install-viewer, "
                       "or SATHMR_VIEWER_DIR=<node_modules with @google/model-viewer>; .ci/run installs it)"),
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_the_page_shows_overlay_people_and_3d_view(embedded, real_images, browser, tmp_path):
    name, data = next(iter(sample_images(real_images).items()))
    photo = tmp_path / name
    photo.write_bytes(data)
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    service = InferenceService.load(ModelSpec(), ServeConfig(threshold=0.05, viewer_dir=str(VIEWER.parents[3])))
    with LiveServer(service) as srv:
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(srv.url + "/")
        page.wait_for_function("document.getElementById('threshold').value !== '' && !!customElements.get('model-viewer')",
                               timeout=60_000)
        page.set_input_files("#file", str(photo))
        page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=300_000)
        assert page.get_attribute("body", "data-state") == "done", page.inner_text("#status")
        shown = page.evaluate("JSON.parse(document.getElementById('json').textContent)")
        assert shown["image"] == name and shown["num_people"] > 0
        assert page.evaluate("document.getElementById('overlay').naturalWidth") == 2 * shown["resized_hw"][1]
        assert page.locator("#people tbody tr").count() == shown["num_people"]
        assert f"{shown['tokens']['level1']} level 1" in page.inner_text("#tokens")
        assert page.evaluate("document.querySelector('model-viewer').loaded") is True
        shot = cv2.imdecode(np.frombuffer(page.locator("model-viewer").screenshot(), np.uint8), cv2.IMREAD_COLOR)
        coloured = (shot.max(-1).astype(int) - shot.min(-1)) > 40        # the people; the backdrop is grey
        assert coloured.mean() > 0.002, coloured.mean()

        page.set_input_files("#file", str(tmp_path / "notes.png"))           # a bad file: a one-line error shown
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=60_000)
        assert "error 400: cannot decode image" in page.inner_text("#status")
