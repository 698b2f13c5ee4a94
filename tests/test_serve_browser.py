"""The browser page in a real headless Chromium: upload, overlay, legend, download link.

Chromium comes from Debian (`apt-get install chromium`, done by `make test`); Playwright
drives it through ``executable_path`` so no browser is downloaded.
"""

from __future__ import annotations

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
from pixelwise.segmenter import Segmenter
from pixelwise.serve import create_app

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
    port = _free_port()
    config = uvicorn.Config(create_app(Segmenter.from_pretrained(folder)), host="127.0.0.1", port=port,
                            log_level="warning")
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
    yield base
    srv.should_exit = True
    thread.join(timeout=10)


def test_page_uploads_and_shows_overlay_and_legend(server, tmp_path):
    from playwright.sync_api import sync_playwright

    rgb, _ = _quadrants()
    path = tmp_path / "photo.png"
    write_image(path, rgb)
    api = httpx.post(f"{server}/v1/segment", files={"image": ("photo.png", path.read_bytes(), "image/png")}).json()
    expected = [c["name"] for c in api["classes"] if c["pixels"] > 0]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
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
