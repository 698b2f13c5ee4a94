"""Serving an instance model (Mask R-CNN): the response agrees with the Python predictor, options of
semantic models are refused, the limits hold, and the page's RLE decoder agrees with pycocotools."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as mask_utils

from pixelwise.data.instances import SyntheticInstances
from pixelwise.errors import ConfigError
from pixelwise.hub import save_model
from pixelwise.models.maskrcnn import create_instance_model
from pixelwise.postprocess.instances import instances_to_semantic
from pixelwise.serve import ServeLimits, create_app, load_segmenter
from pixelwise.serve.instance import InstanceSegmenter
from pixelwise.tasks.instance import load_instance_model

NAMES = ["background", "circle", "rectangle", "triangle", "star"]
# A tiny randomly initialised detector that keeps every detection (box_score_thresh 0): its
# scores sit near 1/5, so a threshold between two of them splits the list.
TINY = {"encoder": "test_resnet", "num_classes": 5, "min_size": 64, "max_size": 64, "fpn_channels": 16,
        "anchor_scale": 4.0, "representation_size": 32, "mask_channels": 16, "mask_layers": 2,
        "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "box_score_thresh": 0.0,
        "box_detections_per_img": 20, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("serve_instance") / "model"
    save_model(create_instance_model("maskrcnn", **TINY), folder,
               {"task": "instance", "data": {"num_classes": 5, "class_names": NAMES, "mean": [0.5] * 3,
                                             "std": [0.25] * 3}, "scores": {"segm": {"AP": 0.25}}})
    return folder


@pytest.fixture(scope="module")
def client(model_dir):
    segmenter = load_segmenter(str(model_dir))
    return TestClient(create_app(segmenter, ServeLimits(max_bytes=100_000, max_pixels=10_000)))


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _image() -> np.ndarray:
    return SyntheticInstances(1, image_size=64, seed=3).generate(0)[0][:, :56]  # 64 x 56: not square


def test_loader_picks_the_instance_adapter_and_the_card_says_instance(client, model_dir):
    assert isinstance(load_segmenter(str(model_dir)), InstanceSegmenter)
    with pytest.raises(ConfigError, match="backend torch only"):
        load_segmenter(str(model_dir), backend="onnxruntime")
    card = client.get("/v1/model").json()
    assert card["task"] == "instance" and card["name"] == "maskrcnn"
    assert [c["name"] for c in card["classes"]] == NAMES
    assert card["options"] == ["score_threshold", "output"]
    assert card["input"]["resize"] == {"min_size": 64, "max_size": 64}
    assert card["input"]["normalisation"]["mean"] == [0.5, 0.5, 0.5]
    assert card["metrics"] == {"segm": {"AP": 0.25}} and card["limits"]["max_pixels"] == 10_000
    assert client.get("/healthz").json()["model"] == "maskrcnn"


def test_segment_matches_the_python_instance_predictor(client, model_dir):
    rgb = _image()
    model, _ = load_instance_model(model_dir)
    with torch.no_grad():
        det = model([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255])[0]
    scores = det.scores.numpy()
    threshold = float(np.sort(scores)[len(scores) // 2:len(scores) // 2 + 2].mean())  # splits the list
    keep = scores >= threshold
    assert 0 < keep.sum() < len(scores)

    resp = client.post(f"/v1/segment?score_threshold={threshold}&output=both",
                       files={"image": ("x.png", _png(rgb), "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["width"], body["height"]) == (56, 64)
    assert body["options"] == {"score_threshold": threshold, "output": "both"}
    items = body["instances"]
    assert [i["id"] for i in items] == list(range(keep.sum()))
    assert [i["class_id"] for i in items] == det.labels[keep].tolist()
    assert [i["class_name"] for i in items] == [NAMES[k] for k in det.labels[keep].tolist()]
    np.testing.assert_allclose([i["score"] for i in items], scores[keep], rtol=1e-6)
    np.testing.assert_allclose([i["box"] for i in items], det.boxes[keep].numpy(), atol=1e-4)
    masks = det.masks[keep].numpy() > 0.5
    for item, mask in zip(items, masks):
        decoded = mask_utils.decode({"size": item["rle"]["size"], "counts": item["rle"]["counts"].encode()})
        assert item["rle"]["size"] == [64, 56]
        np.testing.assert_array_equal(decoded.astype(bool), mask)
        assert item["area"] == int(mask.sum()) > 0 and item["color"].startswith("#")
    assert len({i["color"] for i in items}) == len(items)

    # The semantic part of the response is the label map made from the same detections.
    expected = instances_to_semantic(det.masks, det.labels, det.scores, score_threshold=threshold).numpy()
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["data"]))))
    np.testing.assert_array_equal(png, expected)
    assert [c["pixels"] for c in body["classes"]] == np.bincount(expected.ravel(), minlength=5).tolist()
    for item in body["rle"]:
        decoded = mask_utils.decode({"size": item["size"], "counts": item["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), expected == item["id"])

    # Default threshold 0.5: this untrained model's scores are all lower, so nothing is returned.
    body = client.post("/v1/segment", content=_png(rgb)).json()
    assert body["instances"] == [] and body["classes"][0]["pixels"] == rgb.shape[0] * rgb.shape[1]
    assert body["options"] == {"score_threshold": 0.5, "output": "png"} and body["rle"] is None


@pytest.mark.parametrize("query, named", [
    ("tta=flip", "tta"), ("crf=true", "crf"), ("tile=64", "tile"), ("overlap=0.5", "overlap"),
    ("tta=flip&crf=true&score_threshold=0.1", "tta, crf"),
])
def test_semantic_only_options_are_refused(client, query, named):
    resp = client.post(f"/v1/segment?{query}", content=_png(_image()))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "inapplicable_option" and error["message"].startswith(f"{named}:")
    assert "score_threshold" in error["message"]


def test_no_op_options_and_shared_limits(client):
    ok = client.post("/v1/segment?tta=none&crf=false", content=_png(_image()))
    assert ok.status_code == 200, ok.text
    resp = client.post("/v1/segment?score_threshold=1.5", content=_png(_image()))
    assert resp.status_code == 422 and "score_threshold" in resp.json()["error"]["message"]
    big = np.zeros((120, 100, 3), np.uint8)  # 12 000 pixels: over this server's 10 000
    resp = client.post("/v1/segment", content=_png(big))
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_many_pixels"
    resp = client.post("/v1/segment", content=b"not an image")
    assert resp.status_code == 415


def test_timeout_message_suits_an_instance_model(model_dir):
    slow = TestClient(create_app(load_segmenter(str(model_dir)), ServeLimits(timeout_s=1e-4)))
    resp = slow.post("/v1/segment", content=_png(_image()))
    assert resp.status_code == 504
    message = resp.json()["error"]["message"]
    assert "--timeout" in message and "tta" not in message and "crf" not in message


def test_cli_serve_loads_an_instance_checkpoint(model_dir, monkeypatch, capsys):
    import uvicorn

    from pixelwise.cli import main

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(app=app, **kwargs))
    assert main(["serve", str(model_dir), "--port", "8123", "--max-pixels", "5000"]) == 0
    assert "InstanceSegmenter(maskrcnn" in capsys.readouterr().out and started["port"] == 8123
    card = TestClient(started["app"], base_url="http://127.0.0.1:8123").get("/v1/model").json()
    assert card["task"] == "instance" and card["limits"]["max_pixels"] == 5000
    assert main(["serve", str(model_dir), "--backend", "onnxruntime"]) == 2
    assert "--backend torch only" in capsys.readouterr().err


def test_adapter_refuses_semantic_options_from_python(model_dir):
    segmenter = InstanceSegmenter.from_pretrained(model_dir)
    with pytest.raises(ConfigError, match="tile, tta apply to semantic models only"):
        segmenter(_image(), tile=32, tta="flip")


def test_page_switches_to_instances_and_its_rle_decoder_matches_pycocotools(client):
    page = client.get("/").text
    assert 'id="instance-options"' in page and "score_threshold" in page and "showInstances" in page
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the page's JavaScript cannot be run here")
    decoder = page.split("// rle-decoder:begin")[1].split("// rle-decoder:end")[0]
    rng = np.random.default_rng(0)
    masks = [rng.random((37, 29)) < 0.5, np.zeros((5, 7), bool), np.ones((4, 3), bool)]
    big = np.zeros((300, 200), bool)
    big[10:290, 20:190] = True  # long runs: several 5-bit groups and negative differences
    masks.append(big)
    rles = []
    for m in masks:
        enc = mask_utils.encode(np.asfortranarray(m, dtype=np.uint8))
        rles.append({"size": [int(s) for s in enc["size"]], "counts": enc["counts"].decode("ascii")})
    script = decoder + "\nconst rles = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n" \
                       "console.log(JSON.stringify(rles.map((r) => Array.from(decodeRle(r)))));\n"
    out = subprocess.run([node, "-e", script], input=json.dumps(rles), capture_output=True, text=True,
                         timeout=30, check=True)
    for mask, flat in zip(masks, json.loads(out.stdout)):
        np.testing.assert_array_equal(np.asarray(flat, bool), mask.ravel(order="F"))
