"""The labelling page in a real headless Chromium: box -> proposal -> accept -> brush -> undo/redo
-> save -> reload; the saved files then pass `pixelwise check` and a two-step `pixelwise train`.

Chromium comes from Debian (`apt-get install chromium`); Playwright drives it through
``executable_path`` so no browser is downloaded. Screenshots go to runs/test-artifacts/
(docs/images/annotate_*.png are copies).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from annotate_helpers import CLASSES, chromium, make_folder, objects, running
from pixelwise.annotate import create_app, open_project
from pixelwise.data import read_mask

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"
SIZE = 96


@pytest.fixture()
def project(tmp_path):
    truth = make_folder(tmp_path / "data", count=3, size=SIZE, seed=5)
    store, slot, sam = open_project(tmp_path / "data", classes=",".join(CLASSES))
    with running(create_app(store, slot=slot, sam=sam)) as base:
        yield base, tmp_path / "data", truth


def _drag(page, start, end, steps=8):
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=steps)
    page.mouse.up()


def _labels(page) -> np.ndarray:
    return np.asarray(page.evaluate("window.pixelwiseAnnotate.labels()"), np.uint8).reshape(SIZE, SIZE)


def _client(page, x, y):
    return page.evaluate(f"window.pixelwiseAnnotate.toClient({x}, {y})")


def _wait_saved(page):
    page.wait_for_function("document.body.dataset.saved === 'true' && "
                           "window.pixelwiseAnnotate.state().edits === window.pixelwiseAnnotate.state().savedEdits",
                           timeout=15_000)


def test_box_accept_brush_save_reload(project):
    from playwright.sync_api import sync_playwright

    base, data, truth = project
    cls, (x0, y0, x1, y1), obj = objects(truth["img0"])[0]
    expected_proposal = httpx.post(f"{base}/v1/annotate/images/img0/proposal",
                                   json={"method": "grabcut", "class_id": cls, "box": [x0, y0, x1, y1]}).json()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(base + "/#img0")
            page.wait_for_selector("body[data-ready='true']")
            assert page.locator("#progress-text").inner_text() == "0 / 3 labelled"
            assert page.locator("#classes li .name").all_inner_texts() == CLASSES
            page.keyboard.press(str(cls))
            page.select_option("#method", "grabcut")
            # A box exactly [x0, x1) x [y0, y1): the page floors the start and ceils the end.
            _drag(page, _client(page, x0 + 0.05, y0 + 0.05), _client(page, x1 - 0.05, y1 - 0.05))
            page.wait_for_selector("body[data-proposal='ready']")
            info = page.locator("#proposal-info").inner_text()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "annotate_proposal.png"))
            page.keyboard.press("Enter")
            _wait_saved(page)
            accepted = _labels(page)

            # Correct it: a brush stroke of class `cls` along row 88 from x=4 to x=30.
            page.keyboard.press("b")
            page.evaluate("window.pixelwiseAnnotate.setBrush(5)")
            _drag(page, _client(page, 4.5, 88.5), _client(page, 30.5, 88.5), steps=20)
            _wait_saved(page)
            brushed = _labels(page)
            on_disk = read_mask(data / "masks" / "img0.png")
            page.screenshot(path=str(ARTIFACTS / "annotate_page.png"))

            page.keyboard.press("Control+z")  # undo the stroke: saved too
            _wait_saved(page)
            undone = read_mask(data / "masks" / "img0.png")
            page.keyboard.press("Control+Shift+z")
            _wait_saved(page)
            redone = read_mask(data / "masks" / "img0.png")

            page.reload()
            page.wait_for_selector("body[data-ready='true']")
            reloaded = _labels(page)
            status = page.locator("#status").inner_text()
            progress = page.locator("#progress-text").inner_text()
            page.fill("#opacity", "100")
            page.dispatch_event("#opacity", "input")
            # The pixel colour on the canvas at the centre of the stroke is the class colour.
            x, y = _client(page, 15.5, 88.5)
            canvas_rgb = page.evaluate(f"""() => {{ const c = document.getElementById('canvas');
                const r = c.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
                return Array.from(c.getContext('2d').getImageData(Math.round(({x} - r.left) * dpr),
                    Math.round(({y} - r.top) * dpr), 1, 1).data.slice(0, 3)); }}""")
            colour = httpx.get(f"{base}/v1/annotate/project").json()["classes"][cls]["color"]
        finally:
            browser.close()

    assert not errors, errors
    # The page shows exactly the server's GrabCut proposal for that box, and accepting it paints it.
    assert info.startswith("grabcut:")
    proposal = np.zeros((SIZE, SIZE), bool)
    bx, by, bw, bh = expected_proposal["bbox"]
    import base64

    crop = np.frombuffer(base64.b64decode(expected_proposal["data"]), np.uint8).reshape(bh, bw)
    proposal[by:by + bh, bx:bx + bw] = crop.astype(bool)
    assert ((accepted == cls) == proposal).all() and ((accepted != cls) == (accepted == 0)).all()
    assert proposal.sum() > 0.8 * obj.sum()
    # The stroke: every changed pixel is the class, the centre line is covered, nothing far from it moved.
    changed = brushed != accepted
    assert (brushed[changed] == cls).all()
    assert (brushed[88, 5:31] == cls).all()
    ys, xs = np.nonzero(changed)
    assert len(ys) > 26 and (np.abs(ys - 88) <= 3).all() and xs.min() >= 1 and xs.max() <= 34
    # Saved after every change, undo and redo included; the reload shows what is on disk.
    assert (on_disk == brushed).all()
    assert (undone == accepted).all() and (redone == brushed).all()
    assert (reloaded == brushed).all()
    assert status == "saved mask loaded" and progress == "1 / 3 labelled"
    assert max(abs(a - int(colour[1 + 2 * i:3 + 2 * i], 16)) for i, a in enumerate(canvas_rgb)) <= 2

    # The saved files are a dataset pixelwise reads: `pixelwise check` and a two-step `pixelwise train`.
    export = httpx.post(f"{base}/v1/annotate/export", json={"format": "folder"}).json()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = data.parent / "run"
    check = subprocess.run([sys.executable, "-m", "pixelwise", "check", export["config"], "--json",
                            str(out / "check.json")], capture_output=True, text=True, env=env, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    train = subprocess.run([sys.executable, "-m", "pixelwise", "train", export["config"], "--quiet",
                            "--set", "train.max_steps=2", "--set", "data.batch_size=1", "--set",
                            f"train.out_dir={out}", "--set", "model.args={base_channels: 4, depth: 2}"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "done: 2 steps" in train.stdout and (out / "best" / "model.safetensors").is_file()


def test_page_retrains_predicts_the_rest_and_accepts_a_prediction(tmp_path):
    from playwright.sync_api import sync_playwright

    truth = make_folder(tmp_path / "data", count=4, size=SIZE, seed=6)
    store, slot, sam = open_project(tmp_path / "data", classes=",".join(CLASSES))
    for name in ("img0", "img1"):
        store.save_mask(name, truth[name])
    with running(create_app(store, slot=slot, sam=sam)) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='true']")
            opened = page.evaluate("window.pixelwiseAnnotate.state().name")  # the first unlabelled image
            assert page.is_disabled("#predict")
            page.fill("#steps", "60")
            page.click("#retrain")
            page.wait_for_selector("body[data-retrain='done']", timeout=240_000)
            retrained = page.locator("#job-status").inner_text()
            page.wait_for_function("!document.getElementById('predict').disabled")
            model_name = page.locator("#model-name").inner_text()
            page.click("#predict")
            page.wait_for_selector("body[data-predict='done']", timeout=120_000)
            page.wait_for_function("document.querySelectorAll('#images li.proposal').length === 2")
            page.click("#useful")
            page.wait_for_function("document.body.dataset.ready === 'true' "
                                   "&& document.body.dataset.proposal === 'ready'")
            useful = page.evaluate("window.pixelwiseAnnotate.state().name")
            page.screenshot(path=str(ARTIFACTS / "annotate_loop.png"))
            page.keyboard.press("Enter")
            _wait_saved(page)
            accepted = _labels(page)
        finally:
            browser.close()
    assert not errors, errors
    assert opened == "img2"
    assert retrained.startswith("held-out mIoU: old none, new ") and "the new model proposes now" in retrained
    assert model_name == f"model: {slot.get().source}"
    scores = store.read_state("uncertainty.json", {})
    assert useful == max(("img2", "img3"), key=lambda n: scores[n]["entropy"])
    assert (accepted == read_mask(store.proposal_path(useful))).all()
    assert (read_mask(tmp_path / "data" / "masks" / f"{useful}.png") == accepted).all()
