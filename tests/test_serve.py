"""HTTP API: every endpoint, every bad input, the bounded queue and the OpenAPI schema."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from pixelwise import create_model, save
from pixelwise.infer.segmenter import Segmenter
from pixelwise.serve import RequestError, ServeLimits, create_app
from pixelwise.serve.app import Gate

NAMES = ["background", "cat", "dog"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, base_channels=4, depth=2)
    folder = tmp_path_factory.mktemp("serve") / "model"
    save(model, folder, {"data": {"num_classes": 3, "class_names": NAMES, "ignore_index": 255,
                                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                         "scores": {"miou": 0.5}})
    return folder


@pytest.fixture(scope="module")
def segmenter(model_dir):
    return Segmenter.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def client(segmenter):
    return TestClient(create_app(segmenter, ServeLimits(max_bytes=200_000, max_pixels=500_000)))


def _image(h=40, w=56, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header (IHDR, with a correct CRC) claims ``width`` x ``height``."""
    data = bytearray(_encode(np.zeros((8, 8, 3), np.uint8)))
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[8:33] = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


def test_health_and_model_card(client):
    assert client.get("/healthz").json() == {"status": "ok", "model": "unet", "workers": 1, "busy": 0, "queued": 0,
                                             "pending": 0, "capacity": 9}
    card = client.get("/v1/model").json()
    assert [c["name"] for c in card["classes"]] == NAMES
    assert card["classes"][1]["color"] == "#800000"  # VOC colour map, class 1
    assert card["input"]["normalisation"]["mean"] == [0.5, 0.5, 0.5]
    assert card["metrics"] == {"miou": 0.5}
    assert card["architecture"]["name"] == "unet" and card["task"] == "semantic"


def test_segment_multipart_matches_python_api(client, segmenter):
    rgb = _image()
    resp = client.post("/v1/segment?output=both", files={"image": ("x.png", _encode(rgb), "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected = segmenter(rgb).labels
    assert (body["width"], body["height"]) == (56, 40)
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"]))))
    np.testing.assert_array_equal(png, expected)
    counts = np.bincount(expected.ravel(), minlength=3)
    assert [c["pixels"] for c in body["classes"]] == counts.tolist()
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)

    from pycocotools import mask as mask_utils
    for item in body["rle"]:
        decoded = mask_utils.decode({"size": item["size"], "counts": item["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), expected == item["id"])
    assert {item["id"] for item in body["rle"]} == set(np.unique(expected).tolist())


def test_segment_raw_jpeg_body_and_options(client):
    data = _encode(_image(64, 64, seed=1), "JPEG")
    resp = client.post("/v1/segment?tta=flip&tile=32&overlap=0.5&output=rle", content=data,
                       headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["options"] == {"tile": 32, "overlap": 0.5, "tta": "flip", "crf": False, "output": "rle"}
    assert body["mask"] is None and sum(item["size"] == [64, 64] for item in body["rle"]) == len(body["rle"])


@pytest.mark.parametrize("case, status, code", [
    ("not_an_image", 415, "not_an_image"),
    ("truncated_png", 400, "corrupt_image"),
    ("zero_size", 400, None),
    ("bomb", 413, "too_many_pixels"),
    ("over_limit", 413, "too_many_pixels"),
    ("too_many_bytes", 413, "too_large"),
    ("gif", 415, "unsupported_type"),
    ("empty", 400, "empty_body"),
])
def test_bad_inputs_get_clean_json_errors(client, case, status, code):
    png = _encode(_image())
    noisy = np.random.default_rng(5).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    data = {
        "not_an_image": b"import os; os.system('rm -rf /')\n" * 10,
        "truncated_png": png[: len(png) // 2],
        "zero_size": _png_claiming(0, 10),
        "bomb": _png_claiming(100_000, 100_000),
        "over_limit": _png_claiming(1000, 1000),  # 1 MP: under PIL's own guard, over this server's
        "too_many_bytes": _encode(noisy),
        "gif": _encode(_image(), "GIF"),
        "empty": b"",
    }[case]
    resp = client.post("/v1/segment", files={"image": ("x.png", data, "image/png")})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code


def test_request_shape_errors(client):
    resp = client.post("/v1/segment", files={"file": ("x.png", _encode(_image()), "image/png")})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "missing_image"
    resp = client.post("/v1/segment?tile=5&tta=rotate", content=_encode(_image()))
    assert resp.status_code == 422
    message = resp.json()["error"]["message"]
    assert "tile" in message and "tta" in message


def test_instance_only_option_is_refused(client):
    resp = client.post("/v1/segment?score_threshold=0.3", content=_encode(_image()))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "inapplicable_option" and error["message"].startswith("score_threshold:")
    card = client.get("/v1/model").json()
    assert card["options"] == ["tile", "overlap", "tta", "crf", "output"]


def test_gate_refuses_beyond_capacity_and_times_out():
    async def scenario():
        gate = Gate(workers=1, max_queue=1)
        slow = lambda: time.sleep(0.3) or "done"  # noqa: E731
        results = await asyncio.gather(*(gate.run(slow, 5.0) for _ in range(3)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, RequestError)]
        assert results.count("done") == 2 and len(refused) == 1 and refused[0].status == 503
        with pytest.raises(RequestError) as info:
            await gate.run(lambda: time.sleep(0.5), 0.1)
        assert info.value.status == 504
        # The timed-out job still runs in its thread: it stays counted (busy, and holding its place).
        assert gate.busy == 1 and gate.held == 1
        await asyncio.sleep(0.6)
        assert gate.busy == 0 and gate.held == 0 and gate.pending == 0

    asyncio.run(scenario())


def test_openapi_schema_describes_the_endpoint(client):
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/segment"]["post"]
    assert {p["name"] for p in op["parameters"]} == {"tile", "overlap", "tta", "crf", "score_threshold", "output"}
    assert "image" in op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"200", "400", "413", "415", "503"} <= set(op["responses"])
    fields = set(schema["components"]["schemas"]["SegmentResponse"]["properties"])
    body = client.post("/v1/segment", content=_encode(_image())).json()
    assert set(body) == fields
    assert {"/healthz", "/v1/model"} <= set(schema["paths"])


def test_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="legend"' in page.text and "v1/segment" in page.text
