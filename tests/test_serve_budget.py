"""Per-request memory budget (issue 18, item 4): the tensor meter against known allocations, the
estimate against measured peaks, and tiny files that declare huge images refused (413) before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from pixelwise import create_model
from pixelwise.infer.segmenter import Segmenter
from pixelwise.serve import ServeLimits, create_app
from pixelwise.serve.budget import DECODE_BYTES_PER_PIXEL, MemoryBudget, PeakTensorBytes, fit_growth
from serve_live import NAMES

MiB = 2**20


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, base_channels=4, depth=2)
    return Segmenter(model, mean=[0.5] * 3, std=[0.25] * 3, class_names=NAMES)


@pytest.fixture(scope="module")
def budget(segmenter):
    return MemoryBudget(segmenter, 256)


def test_meter_counts_live_tensors_exactly():
    def work():
        a = torch.empty(1000, dtype=torch.float32)  # 4000 B
        b = torch.empty(500, dtype=torch.float64)  # 4000 B -> 8000 live
        del a
        c = torch.empty(250, dtype=torch.int8)  # 250 B -> 4250 live
        view = b[:10]  # a view: no new storage
        b.add_(1)  # in place: no new storage
        return c, view

    with PeakTensorBytes() as meter:
        kept = work()
    assert meter.peak == 8000
    assert meter.current == 4250 and len(kept) == 2


def test_fit_is_an_upper_bound_through_the_largest_probes():
    p = [4096.0, 16384.0, 65536.0]
    assert fit_growth(p, [10 + 3 * x for x in p]) == pytest.approx((10, 3, 0), abs=1e-6)
    a, b, c = fit_growth(p, [5 + 2 * x + 1e-4 * x * x for x in p])
    assert (a, b, c) == pytest.approx((5, 2, 1e-4), rel=1e-6)
    a, b, c = fit_growth(p, [1000.0, 1500.0, 2000.0])  # concave: the quadratic would bend down
    assert c == 0 and min(a, b) >= 0 and all(a + b * x >= m - 1e-6 for x, m in zip(p, [1000, 1500, 2000]))


@pytest.mark.parametrize("size, options", [
    ((300, 200), {}), ((384, 320), {"tta": "flip"}), ((320, 256), {"tta": "flip+scales"}),
    ((520, 400), {"tile": 128}), ((200, 150), {"tile": 256}), ((160, 128), {"crf": True}),
])
def test_estimate_bounds_the_measured_peak(segmenter, budget, size, options):
    """The estimate covers what a real call allocates (measured with the meter, at sizes the probes never
    saw, through the whole Segmenter call) and is not wildly above it."""
    h, w = size
    rgb = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    call = dict(options)
    with torch.no_grad(), PeakTensorBytes() as meter:
        segmenter(rgb, **call)
    tensors = budget.estimate(h, w, **options) - DECODE_BYTES_PER_PIXEL * h * w  # the meter sees tensors only
    assert meter.peak <= tensors <= 2.5 * meter.peak + 2 * MiB, (meter.peak / MiB, tensors / MiB)


def tiny_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG: 590 bytes for 2048 x 2048, the file of the issue."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_a_tiny_png_of_2048_squared_is_refused_before_decoding(segmenter, monkeypatch):
    data = tiny_png(2048, 2048)
    assert len(data) == 590 and Image.open(io.BytesIO(data)).size == (2048, 2048)
    app = create_app(segmenter, ServeLimits(max_memory_mb=320))
    import pixelwise.serve.app as app_module

    def no_decode(*args, **kwargs):
        raise AssertionError("the image was decoded although its budget is over the limit")

    monkeypatch.setattr(app_module, "decode_upload", no_decode)
    client = TestClient(app)
    resp = client.post("/v1/segment", content=data)
    assert resp.status_code == 413, resp.text
    error = resp.json()["error"]
    assert error["code"] == "over_memory_budget"
    assert "2048×2048" in error["message"] and "320 MiB" in error["message"] and "--max-memory-mb" in error["message"]
    assert "tile=" in error["message"]  # a tile that fits is suggested ...
    tile = int(error["message"].split("tile=")[1].split(" ")[0])
    assert app.state.budget.estimate(2048, 2048, tile=tile) <= 320 * MiB  # ... and really fits
    card = client.get("/v1/model").json()
    assert card["limits"]["max_memory_mb"] == 320 and card["memory"]["bytes_per_pixel"] > 0


def test_a_5_kb_png_of_6300_squared_is_a_json_413_at_the_default_limits(segmenter, monkeypatch):
    """The issue's second file: under the default 40 Mpx limit, it got a plain-text 500 at a 6 GB cap."""
    data = tiny_png(6300, 6300)
    assert len(data) < 6000 and 6300 * 6300 < ServeLimits().max_pixels
    import pixelwise.serve.app as app_module

    monkeypatch.setattr(app_module, "decode_upload", lambda *a, **k: pytest.fail("decoded"))
    resp = TestClient(create_app(segmenter)).post("/v1/segment", content=data)
    assert resp.status_code == 413 and resp.headers["content-type"] == "application/json"
    assert resp.json()["error"]["code"] == "over_memory_budget" and "6300×6300" in resp.json()["error"]["message"]


def test_the_budget_is_per_option(segmenter):
    """TTA and the CRF cost more, so the same image can pass plain and be refused with them."""
    client = TestClient(create_app(segmenter, ServeLimits(max_memory_mb=64)))
    rgb = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    assert client.post("/v1/segment", content=buf.getvalue()).status_code == 200
    refused = client.post("/v1/segment?crf=true", content=buf.getvalue())
    assert refused.status_code == 413 and "drop tta/crf" in refused.json()["error"]["message"]


def test_largest_side_is_the_edge_of_the_budget(segmenter):
    """The largest square image that fits: it passes the check, one pixel more does not."""
    for limit_mb in (16, 64):
        budget = MemoryBudget(segmenter, limit_mb)
        side = budget.largest_side()
        assert side > 32
        assert budget.estimate(side, side) <= limit_mb * MiB < budget.estimate(side + 1, side + 1)
    assert MemoryBudget(segmenter, 1).largest_side() < MemoryBudget(segmenter, 2).largest_side()
    card = TestClient(create_app(segmenter, ServeLimits(max_memory_mb=16))).get("/v1/model").json()
    assert card["memory"]["largest_square_side"] == MemoryBudget(segmenter, 16).largest_side()


def test_cli_passes_max_memory_mb(tmp_path, monkeypatch, capsys):
    import uvicorn

    from pixelwise.cli import main
    from serve_live import tiny_model_dir

    folder = tiny_model_dir(tmp_path / "model")
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    assert main(["serve", str(folder), "--max-memory-mb", "300", "--read-timeout", "4", "--max-connections", "99"]) == 0
    card = TestClient(started["app"], base_url="http://127.0.0.1").get("/v1/model").json()
    assert card["limits"]["max_memory_mb"] == 300 and card["limits"]["read_timeout_s"] == 4
    assert started["timeout_keep_alive"] == 5 and started["http"].__name__ == "GuardedH11Protocol"
    out = capsys.readouterr().out
    assert "memory budget 300 MiB" in out and "images up to about" in out and "raise --max-memory-mb" not in out
    assert main(["serve", str(folder), "--max-memory-mb", "4"]) == 0  # too small for a 512 x 512 image: said so
    assert "raise --max-memory-mb" in capsys.readouterr().out
    assert main(["serve", str(folder), "--max-memory-mb", "0"]) == 2


def test_instance_estimate_bounds_the_measured_peak():
    from pixelwise.models.maskrcnn import create_instance_model
    from pixelwise.serve.instance import InstanceSegmenter
    from test_serve_instance import TINY

    torch.manual_seed(0)
    seg = InstanceSegmenter(create_instance_model("maskrcnn", **TINY), class_names=["bg", "a", "b", "c", "d"])
    budget = MemoryBudget(seg, 512)
    rgb = np.random.default_rng(2).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    with torch.no_grad(), PeakTensorBytes() as meter:
        seg(rgb, score_threshold=0.0)
    assert meter.peak <= budget.estimate(96, 80) - DECODE_BYTES_PER_PIXEL * 96 * 80
