"""The annotation HTTP API: listing, masks in and out, proposals, clean-up, next image, and every
kind of bad input answered with a clear 4xx that changes nothing on disk."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from scipy import ndimage

from annotate_helpers import CLASSES, iou, make_folder, objects
from pixelwise.annotate import AnnotationStore, create_app, open_project
from pixelwise.annotate.jobs import ModelSlot
from pixelwise.annotate.model_proposals import ModelProposer
from pixelwise.data import read_mask
from pixelwise.errors import ConfigError
from pixelwise.infer.segmenter import Segmenter
from pixelwise.postprocess.cleanup import clean_mask

RAW = {"content-type": "application/octet-stream"}


@pytest.fixture()
def folder(tmp_path):
    truth = make_folder(tmp_path / "data", count=4, size=64, seed=3)
    return tmp_path / "data", truth


@pytest.fixture()
def client(folder):
    store, slot, sam = open_project(folder[0], classes=",".join(CLASSES))
    return TestClient(create_app(store, slot=slot, sam=sam))


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _proposal(body: dict) -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    x, y, w, h = body["bbox"]
    if w:
        mask[y:y + h, x:x + w] = np.frombuffer(base64.b64decode(body["data"]), np.uint8).reshape(h, w).astype(bool)
    return mask


def test_listing_progress_and_masks_round_trip(client, folder):
    root, truth = folder
    listing = client.get("/v1/annotate/images").json()
    assert [i["name"] for i in listing["images"]] == ["img0", "img1", "img2", "img3"]
    assert listing["progress"] == {"labelled": 0, "total": 4, "remaining": 4}
    project = client.get("/v1/annotate/project").json()
    assert [c["name"] for c in project["classes"]] == CLASSES and project["classes"][1]["color"] == "#800000"
    assert project["methods"] == ["auto", "grabcut", "watershed"] and project["model"] is None

    image = np.asarray(Image.open(io.BytesIO(client.get("/v1/annotate/images/img0/image").content)).convert("RGB"))
    assert image.shape == (64, 64, 3)
    assert client.get("/v1/annotate/images/img0/mask").status_code == 404

    raw = client.put("/v1/annotate/images/img0/mask", content=truth["img0"].astype(np.uint8).tobytes(), headers=RAW)
    assert raw.status_code == 200, raw.text
    assert raw.json()["pixels"]["background"] == int((truth["img0"] == 0).sum())
    png = client.put("/v1/annotate/images/img1/mask", content=_png(truth["img1"].astype(np.uint8)),
                     headers={"content-type": "image/png"})
    assert png.status_code == 200 and png.json()["progress"]["labelled"] == 2
    for name in ("img0", "img1"):
        assert (read_mask(root / "masks" / f"{name}.png") == truth[name]).all()
        back = client.get(f"/v1/annotate/images/{name}/mask?format=raw")
        assert back.headers["x-mask-source"] == "saved"
        assert (np.frombuffer(back.content, np.uint8).reshape(64, 64) == truth[name]).all()
        as_png = Image.open(io.BytesIO(client.get(f"/v1/annotate/images/{name}/mask").content))
        assert as_png.mode == "P" and (np.asarray(as_png) == truth[name]).all()
    info = client.get("/v1/annotate/images/img1").json()
    assert info == {**info, "labelled": True, "previous": "img0", "next": "img2", "width": 64, "height": 64}
    assert client.get("/v1/annotate/next?after=img0&strategy=order").json()["name"] == "img2"


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(client, folder):
    root, truth = folder
    assert client.put("/v1/annotate/images/img0/mask", content=truth["img0"].astype(np.uint8).tobytes(),
                      headers=RAW).status_code == 200
    before = _snapshot(root)
    good = truth["img1"].astype(np.uint8)
    bad_class = good.copy()
    bad_class[5, 5] = len(CLASSES)
    rgb = np.stack([good * 40] * 3, axis=-1)
    cases = [
        ("put", "/v1/annotate/images/img0/mask", {"content": b"this is not an image", "headers":
                                                 {"content-type": "image/png"}}, 415, "not_an_image"),
        ("put", "/v1/annotate/images/img0/mask", {"content": _png(rgb), "headers": {"content-type": "image/png"}},
         415, "not_an_index_image"),
        ("put", "/v1/annotate/images/img0/mask", {"content": bad_class.tobytes(), "headers": RAW}, 422,
         "unknown_class"),
        ("put", "/v1/annotate/images/img0/mask", {"content": _png(bad_class), "headers":
                                                 {"content-type": "image/png"}}, 422, "unknown_class"),
        ("put", "/v1/annotate/images/img0/mask", {"content": good[:, :50].tobytes(), "headers": RAW}, 422,
         "wrong_size"),
        ("put", "/v1/annotate/images/img0/mask", {"content": _png(good[:40]), "headers":
                                                 {"content-type": "image/png"}}, 422, "wrong_size"),
        ("put", "/v1/annotate/images/img0/mask", {"content": b"", "headers": RAW}, 400, "empty_body"),
        ("put", "/v1/annotate/images/..%2F..%2Fescape/mask", {"content": good.tobytes(), "headers": RAW}, 404,
         "not_found"),
        ("put", "/v1/annotate/images/../masks/img0/mask", {"content": good.tobytes(), "headers": RAW}, 404,
         "not_found"),
        ("put", "/v1/annotate/images/.pixelwise-annotate/mask", {"content": good.tobytes(), "headers": RAW}, 400,
         "bad_name"),
        ("put", "/v1/annotate/images/..\\img0/mask", {"content": good.tobytes(), "headers": RAW}, 400, "bad_name"),
        ("put", "/v1/annotate/images/nope/mask", {"content": good.tobytes(), "headers": RAW}, 404, "no_such_image"),
        ("get", "/v1/annotate/images/..%2F..%2F..%2Fetc%2Fpasswd/image", {}, 404, "not_found"),
        ("post", "/v1/annotate/images/img0/proposal", {"json": {"box": [10, 10, 200, 300], "class_id": 9}}, 422,
         "invalid_prompt"),
        ("post", "/v1/annotate/images/img0/proposal", {"json": {"points": [{"x": 99, "y": 3}]}}, 422,
         "invalid_prompt"),
        ("post", "/v1/annotate/images/img0/proposal", {"json": {"box": [1, 1, 30, 30], "method": "magic"}}, 422,
         "unknown_method"),
        ("post", "/v1/annotate/images/img0/proposal", {"json": {"box": [1, 1, 30, 30], "method": "model"}}, 409,
         "no_model"),
        ("post", "/v1/annotate/images/img0/proposal", {"content": b"{not json", "headers":
                                                      {"content-type": "application/json"}}, 400, "invalid_json"),
        ("post", "/v1/annotate/export", {"json": {"format": "../../x"}}, 422, "unknown_format"),
        ("post", "/v1/annotate/retrain", {"json": {}}, 409, "too_few_labels"),
        ("post", "/v1/annotate/predict", {"json": {}}, 409, "no_model"),
    ]
    for method, url, kwargs, status, code in cases:
        response = getattr(client, method if method != "put" else "put")(url, **kwargs) if method != "get" else \
            client.get(url)
        assert response.status_code == status, (url, kwargs.get("json"), response.text)
        error = response.json()["error"]
        assert error["code"] == code and len(error["message"]) > 20, (url, error)
    assert _snapshot(root) == before  # nothing written, renamed or left behind
    assert (read_mask(root / "masks" / "img0.png") == truth["img0"]).all()


def test_grabcut_and_watershed_proposals(client, folder):
    _, truth = folder
    cls, box, obj = objects(truth["img0"])[0]
    grab = client.post("/v1/annotate/images/img0/proposal", json={"box": box, "class_id": cls}).json()
    assert grab["method"] == "grabcut" and grab["area"] == int(_proposal(grab).sum())
    assert iou(_proposal(grab), obj) > 0.9
    # A positive scribble along the object's middle row, no box: watershed.
    ys, xs = np.nonzero(obj)
    row = int(np.median(ys))
    line = [[int(x), row] for x in sorted(xs[ys == row])]
    shed = client.post("/v1/annotate/images/img0/proposal",
                       json={"scribbles": [{"points": line, "positive": True, "width": 1}], "class_id": cls}).json()
    assert shed["method"] == "watershed" and iou(_proposal(shed), obj) > 0.8
    # A negative click inside the object, with a box: GrabCut keeps that pixel out.
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    marked = client.post("/v1/annotate/images/img0/proposal",
                         json={"box": box, "class_id": cls, "points": [{"x": x, "y": y, "positive": False}]}).json()
    assert not _proposal(marked)[y, x]


class _Oracle(torch.nn.Module):
    """A "model" whose logits are the given label map (one-hot x 10), to test the prompt logic alone."""

    def __init__(self, labels: np.ndarray, num_classes: int) -> None:
        super().__init__()
        onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), num_classes).permute(2, 0, 1).float()
        self.register_buffer("logits", 10 * onehot[None])

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_model_proposals_follow_the_prompt(folder):
    root, truth = folder
    labels = truth["img0"]
    seg = Segmenter(_Oracle(labels, len(CLASSES)), mean=[0.5] * 3, std=[0.25] * 3, class_names=CLASSES)
    store = AnnotationStore(root, classes=CLASSES)
    client = TestClient(create_app(store, slot=ModelSlot(ModelProposer(seg, CLASSES, source="oracle"))))
    assert client.get("/v1/annotate/project").json()["methods"] == ["auto", "grabcut", "watershed", "model",
                                                                     "model+grabcut"]
    cls, box, obj = objects(labels)[0]
    x0, y0, x1, y1 = box
    wide = [max(0, x0 - 6), max(0, y0 - 6), min(64, x1 + 6), min(64, y1 + 6)]
    inbox = np.zeros((64, 64), bool)
    inbox[wide[1]:wide[3], wide[0]:wide[2]] = True
    boxed = client.post("/v1/annotate/images/img0/proposal", json={"method": "model", "box": wide, "class_id": cls})
    assert (_proposal(boxed.json()) == ((labels == cls) & inbox)).all()
    ys, xs = np.nonzero(obj)
    click = {"x": int(xs[0]), "y": int(ys[0]), "positive": True}
    clicked = client.post("/v1/annotate/images/img0/proposal", json={"method": "model", "points": [click],
                                                                     "class_id": cls}).json()
    assert (_proposal(clicked) == obj).all()  # exactly the piece under the click
    other = 1 + cls % (len(CLASSES) - 1)  # a class the clicked object is not: the object's extent instead
    objectness = client.post("/v1/annotate/images/img0/proposal", json={"method": "model", "points": [click],
                                                                        "class_id": other}).json()
    assert _proposal(objectness)[click["y"], click["x"]] and obj[_proposal(objectness)].all() or \
        (_proposal(objectness) & obj).sum() == obj.sum()
    auto = client.post("/v1/annotate/images/img0/proposal", json={"points": [click], "class_id": cls}).json()
    assert auto["method"] == "model"


def test_model_seeded_grabcut_corrects_a_model_border_and_a_wrong_class(folder):
    """A model that under-segments every object by 2 pixels and calls it the wrong class: the box
    proposal still takes its object (the box's class wins), and GrabCut seeded with it recovers the
    border from the colours: better than the model alone and than GrabCut from the box alone."""
    from pixelwise.annotate.classical import grabcut
    from pixelwise.annotate.prompts import Prompt

    root, truth = folder
    store = AnnotationStore(root, classes=CLASSES)
    gains = []
    for name in ("img0", "img1", "img2", "img3"):
        labels = truth[name]
        image = np.asarray(Image.open(root / "images" / f"{name}.png").convert("RGB"))
        shrunk = np.zeros_like(labels)
        for c in range(1, len(CLASSES)):
            core = ndimage.binary_erosion(labels == c, iterations=2)
            shrunk[core] = 1 + c % (len(CLASSES) - 1)  # every object in another class
        proposer = ModelProposer(Segmenter(_Oracle(shrunk, len(CLASSES)), mean=[0.5] * 3, std=[0.25] * 3,
                                           class_names=CLASSES), CLASSES)
        for cls, box, obj in objects(labels, min_area=60):
            prompt = Prompt(class_id=cls, box=tuple(box))
            model = proposer.propose(image, prompt, name)
            assert iou(model, obj) > 0.2  # the object itself (0 without it) despite the model's class
            refined = proposer.refine(image, prompt, name)
            gains.append((iou(refined, obj), iou(model, obj), iou(grabcut(image, prompt), obj)))
    refined, model, plain = (np.mean(column) for column in zip(*gains))
    assert refined > model + 0.1 and refined >= plain - 0.02, gains
    client = TestClient(create_app(store, slot=ModelSlot(proposer)))
    cls, box, obj = objects(truth["img3"], min_area=60)[0]
    answer = client.post("/v1/annotate/images/img3/proposal", json={"method": "model+grabcut", "box": box,
                                                                    "class_id": cls})
    assert answer.status_code == 200 and answer.json()["method"] == "model+grabcut"
    bad = client.post("/v1/annotate/images/img3/proposal", json={"method": "model+grabcut", "class_id": cls,
                                                                 "points": [{"x": 5, "y": 5, "positive": True}]})
    assert bad.status_code == 422 and "needs a box" in bad.text


def test_cleanup_endpoint_matches_postprocess(client):
    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 10:30] = 2
    labels[15:18, 15:18] = 0  # a hole
    labels[50, 50] = 3        # a speck
    body = labels.tobytes()
    filled = client.post("/v1/annotate/images/img0/cleanup?fill_holes=true", content=body, headers=RAW)
    small = client.post("/v1/annotate/images/img0/cleanup?min_size=5", content=body, headers=RAW)
    for response, expected in ((filled, clean_mask(labels, fill_holes=True, ignore_index=None)),
                               (small, clean_mask(labels, min_size=5, ignore_index=None))):
        got = np.frombuffer(response.content, np.uint8).reshape(64, 64)
        assert (got == expected).all()
    assert (np.frombuffer(filled.content, np.uint8).reshape(64, 64)[15:18, 15:18] == 2).all()
    assert np.frombuffer(small.content, np.uint8).reshape(64, 64)[50, 50] == 0


def test_classes_are_kept_with_the_folder(folder):
    root, truth = folder
    store = AnnotationStore(root, classes=CLASSES)
    store.save_mask("img0", truth["img0"])
    assert AnnotationStore(root).classes == CLASSES  # saved with the folder
    assert AnnotationStore(root, classes=[*CLASSES, "hexagon"]).classes[-1] == "hexagon"  # appending is safe
    with pytest.raises(ConfigError, match="may only be appended"):
        AnnotationStore(root, classes=["background", "star", "circle"])
    assert json.loads((root / ".pixelwise-annotate" / "classes.json").read_text())[-1] == "hexagon"


def test_stale_temporaries_of_a_killed_writer_are_removed(folder):
    root, truth = folder
    store = AnnotationStore(root, classes=CLASSES)
    store.save_mask("img0", truth["img0"])
    stale = root / "masks" / ".img0.png.12345.deadbeef.tmp"
    stale.write_bytes(b"half a png")
    AnnotationStore(root)
    assert not stale.exists() and (read_mask(root / "masks" / "img0.png") == truth["img0"]).all()
