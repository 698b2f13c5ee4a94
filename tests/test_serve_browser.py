"""The browser page in a real headless Chromium: upload, overlay, legend, download link, for a
semantic and for an instance model.

Chromium comes from Debian (`apt-get install chromium`, done by `make test`); Playwright
drives it through ``executable_path`` so no browser is downloaded.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from pixelwise import create_model, save
from pixelwise.data import write_image
from pixelwise.data.instances import SyntheticInstances
from pixelwise.hub import save_model
from pixelwise.infer.segmenter import Segmenter
from pixelwise.models.maskrcnn import create_instance_model
from pixelwise.serve import create_app, load_segmenter
from test_serve_instance import NAMES as SHAPES
from test_serve_instance import TINY as TINY_MASKRCNN

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"
NAMES = ["background", "road", "car", "tree"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium found: install it with `apt-get install chromium` (make test does this)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quadrants() -> tuple[np.ndarray, np.ndarray]:
    """A 72x96 photo of four coloured quadrants and its labels (one class per quadrant)."""
    rgb = np.zeros((72, 96, 3), np.uint8)
    labels = np.zeros((72, 96), np.int64)
    for i, (ys, xs, colour) in enumerate([(slice(0, 36), slice(0, 48), (230, 30, 30)),
                                          (slice(0, 36), slice(48, 96), (30, 30, 230)),
                                          (slice(36, 72), slice(0, 48), (30, 230, 30)),
                                          (slice(36, 72), slice(48, 96), (240, 240, 240))]):
        rgb[ys, xs], labels[ys, xs] = colour, i
    rgb = np.clip(rgb + np.random.default_rng(0).normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    return rgb, labels


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A tiny U-Net fitted to the quadrant photo, so the page has several classes to show.
    torch.manual_seed(1)
    model = create_model("unet", num_classes=len(NAMES), base_channels=4, depth=2)
    rgb, labels = _quadrants()
    x = ((torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.25)[None]
    y = torch.from_numpy(labels)[None]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    folder = tmp_path_factory.mktemp("browser") / "model"
    save(model, folder, {"data": {"num_classes": len(NAMES), "class_names": NAMES, "ignore_index": 255,
                                  "mean": [0.5] * 3, "std": [0.25] * 3}})
    with _running(create_app(Segmenter.from_pretrained(folder))) as base:
        yield base


@pytest.fixture(scope="module")
def instance_server(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("browser_instance") / "model"
    save_model(create_instance_model("maskrcnn", **TINY_MASKRCNN), folder,
               {"task": "instance", "data": {"num_classes": 5, "class_names": SHAPES, "mean": [0.5] * 3,
                                             "std": [0.25] * 3}})
    with _running(create_app(load_segmenter(str(folder)))) as base:
        yield base


@contextlib.contextmanager
def _running(app):
    """``app`` served by uvicorn on a free local port in a thread; yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        yield base
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def _launch(pw):
    return pw.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox", "--disable-gpu"])


def test_page_uploads_and_shows_overlay_and_legend(server, tmp_path):
    from playwright.sync_api import sync_playwright

    rgb, _ = _quadrants()
    path = tmp_path / "photo.png"
    write_image(path, rgb)
    api = httpx.post(f"{server}/v1/segment", files={"image": ("photo.png", path.read_bytes(), "image/png")}).json()
    expected = [c["name"] for c in api["classes"] if c["pixels"] > 0]

    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model-name').textContent.includes('classes')")
            page.set_input_files("#file", str(path))
            page.wait_for_selector("body[data-ready='true']", timeout=30_000)
            legend = page.locator("#legend li .name").all_inner_texts()
            canvas = page.evaluate("""() => { const c = document.getElementById('canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let nonzero = 0; for (let i = 0; i < d.length; i += 4) nonzero += d[i] + d[i+1] + d[i+2] > 0;
                return [c.width, c.height, nonzero]; }""")
            download = page.get_attribute("#download", "href")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page.png"))
            page.fill("#opacity", "0")  # slider at 0: the canvas shows the photo alone
            photo_only = page.evaluate("""() => { const c = document.getElementById('canvas');
                return Array.from(c.getContext('2d').getImageData(0, 0, 4, 1).data); }""")
        finally:
            browser.close()

    assert not errors, errors
    assert legend == expected and len(expected) >= 3
    assert canvas[:2] == [96, 72] and canvas[2] > 0.5 * 96 * 72
    assert download.startswith("data:image/png;base64,") and download.endswith(api["mask"]["data"][-16:])
    first4 = [v for px in rgb[0, :4] for v in (*px, 255)]
    assert photo_only == first4
    assert (ARTIFACTS / "serve_page.png").stat().st_size > 1000


def test_page_shows_instances_of_an_instance_model(instance_server, tmp_path):
    from playwright.sync_api import sync_playwright

    rgb = SyntheticInstances(1, image_size=64, seed=3).generate(0)[0]
    path = tmp_path / "shapes.png"
    write_image(path, rgb)
    threshold = 0.245  # this untrained detector scores near 0.25: keeps part of its 20 detections
    api = httpx.post(f"{instance_server}/v1/segment?score_threshold={threshold}",
                     files={"image": ("shapes.png", path.read_bytes(), "image/png")}).json()
    assert 0 < len(api["instances"]) < 20

    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(instance_server + "/")
            page.wait_for_function("document.getElementById('model-name').textContent.includes('instance')")
            controls = page.evaluate("""() => [document.getElementById('semantic-options').hidden,
                document.getElementById('instance-options').hidden,
                document.getElementById('legend-title').textContent]""")
            page.fill("#score", str(threshold))
            page.locator("#score").blur()  # its change event now, while no image is loaded yet
            page.set_input_files("#file", str(path))
            page.wait_for_selector("body[data-ready='true']", timeout=30_000)
            names = page.locator("#legend li .name").all_inner_texts()
            scores = page.locator("#legend li .area").all_inner_texts()
            swatches = page.evaluate("""() => Array.from(document.querySelectorAll('#legend .swatch'),
                (s) => getComputedStyle(s).backgroundColor)""")
            page.fill("#opacity", "100")
            page.dispatch_event("#opacity", "input")
            # With the overlay opaque, each pixel of the top instance shows exactly that instance's colour.
            pixels = page.evaluate("""() => { const c = document.getElementById('canvas');
                return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];
            }""")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve_page_instances.png"))
        finally:
            browser.close()

    assert not errors, errors
    assert controls == [True, False, "Instances"]
    assert names == [i["class_name"] for i in api["instances"]]
    assert scores == [f"{i['score']:.2f}" for i in api["instances"]]
    rgb_of = lambda h: tuple(int(h[k:k + 2], 16) for k in (1, 3, 5))  # noqa: E731
    assert swatches == [f"rgb({', '.join(map(str, rgb_of(i['color'])))})" for i in api["instances"]]
    width, height, data = pixels
    assert (width, height) == (64, 64)
    canvas = np.asarray(data, np.uint8).reshape(64, 64, 4)[:, :, :3]
    from pycocotools import mask as mask_utils

    top = api["instances"][0]  # the highest score is painted last: only box outlines are drawn over it
    mask = mask_utils.decode({"size": top["rle"]["size"], "counts": top["rle"]["counts"].encode()}).astype(bool)
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    outline = np.zeros((64, 64), bool)
    for inst in api["instances"]:  # pixels an (antialiased) box outline may touch
        x1, y1, x2, y2 = inst["box"]
        inside = (xs > x1 - 2) & (xs < x2 + 2) & (ys > y1 - 2) & (ys < y2 + 2)
        near = (np.abs(xs - x1) < 2) | (np.abs(xs - x2) < 2) | (np.abs(ys - y1) < 2) | (np.abs(ys - y2) < 2)
        outline |= inside & near
    clear = mask & ~outline
    assert clear.sum() > 10
    # (Chromium's canvas may round a channel by one.)
    assert (np.abs(canvas[clear].astype(int) - rgb_of(top["color"])) <= 2).all()


def test_page_sends_the_token_from_its_address(tmp_path):
    """A server started with a token: the page given ``#token=...`` loads the card and segments; without
    it, it says why the card is unavailable."""
    from playwright.sync_api import sync_playwright

    torch.manual_seed(0)
    folder = tmp_path / "model"
    save(create_model("unet", num_classes=len(NAMES), base_channels=4, depth=2), folder,
         {"data": {"num_classes": len(NAMES), "class_names": NAMES, "mean": [0.5] * 3, "std": [0.25] * 3}})
    rgb, _ = _quadrants()
    path = tmp_path / "photo.png"
    write_image(path, rgb)
    with _running(create_app(Segmenter.from_pretrained(folder), host="127.0.0.1", token="tok-123")) as base:
        with sync_playwright() as pw:
            browser = _launch(pw)
            try:
                page = browser.new_page()
                page.goto(base + "/")
                page.wait_for_function("document.getElementById('model-name').textContent.includes('unavailable')")
                refused = page.text_content("#model-name")
                page.goto(base + "/#token=tok-123")
                page.reload()
                page.wait_for_function("document.getElementById('model-name').textContent.includes('classes')")
                page.set_input_files("#file", str(path))
                page.wait_for_selector("body[data-ready='true']", timeout=30_000)
                legend = page.locator("#legend li .name").all_inner_texts()
            finally:
                browser.close()
    assert "bearer token" in refused
    assert legend and set(legend) <= set(NAMES)
