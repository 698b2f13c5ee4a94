"""Exports read back through pixelwise's own readers (``labelme``, ``coco``, ``folder``) with the same masks,
including objects with holes, several objects of one class and an object inside another's hole."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from annotate_helpers import CLASSES, make_folder
from pixelwise.annotate import AnnotationStore, create_app
from pixelwise.annotate.exports import export_coco, export_folder, export_labelme
from pixelwise.config import DataCfg
from pixelwise.data import build_dataset


@pytest.fixture()
def store(tmp_path):
    truth = make_folder(tmp_path / "data", count=4, size=64, seed=9)
    store = AnnotationStore(tmp_path / "data", classes=CLASSES)
    ring = np.zeros_like(truth["img2"])
    ring[8:40, 8:40] = 3
    ring[16:32, 16:32] = 0   # a hole in the triangle-class square ...
    ring[20:26, 20:26] = 4   # ... holding a star-class island
    ring[50:60, 2:6] = 3     # a second, separate object of class 3
    truth["img2"] = ring
    for name in ("img0", "img2", "img3"):  # img1 stays unlabelled and must not be exported
        store.save_mask(name, truth[name])
    return store, truth


def _read_back(cfg: DataCfg, split: str) -> dict[str, np.ndarray]:
    dataset = build_dataset(cfg, split, train=False)
    out = {}
    for i in range(len(dataset)):
        _, mask = dataset.load(i)
        name = dataset[i]["name"]
        out[name] = mask
    return out


def test_labelme_export_reads_back_identically(store, tmp_path):
    store, truth = store
    summary = export_labelme(store, tmp_path / "labelme")
    assert summary["images"] == 3 and summary["shapes"] > 6
    read = summary["read_with"]
    cfg = DataCfg(dataset="labelme", root=read["root"], num_classes=len(CLASSES), args=read["args"])
    masks = _read_back(cfg, read["split"])
    assert sorted(masks) == ["img0", "img2", "img3"]
    for name, mask in masks.items():
        assert (mask == truth[name]).all(), name


def test_coco_export_reads_back_identically(store, tmp_path):
    store, truth = store
    summary = export_coco(store, tmp_path / "coco")
    read = summary["read_with"]
    cfg = DataCfg(dataset="coco", root=read["root"], num_classes=len(CLASSES), args=read["args"])
    masks = _read_back(cfg, "train")
    assert sorted(masks) == ["img0", "img2", "img3"]
    for name, mask in masks.items():
        assert (mask == truth[name]).all(), name
    # One annotation per connected object: img2's class-3 square with a hole and its separate bar.
    import json

    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    img2 = next(im["id"] for im in doc["images"] if im["file_name"] == "img2.png")
    threes = [a for a in doc["annotations"] if a["image_id"] == img2 and a["category_id"] == 3]
    assert sorted(a["area"] for a in threes) == sorted([32 * 32 - 16 * 16, 40])
    assert [c["name"] for c in doc["categories"]] == CLASSES[1:]


def test_folder_export_reads_back_and_is_a_snapshot(store, tmp_path):
    store, truth = store
    summary = export_folder(store, tmp_path / "folder", splits={"train": ["img0", "img2"], "val": ["img3"]})
    cfg = DataCfg(dataset="folder", root=summary["path"], num_classes=len(CLASSES))
    train, val = _read_back(cfg, "train"), _read_back(cfg, "val")
    assert sorted(train) == ["img0", "img2"] and sorted(val) == ["img3"]
    for name, mask in {**train, **val}.items():
        assert (mask == truth[name]).all()
    store.save_mask("img0", np.zeros_like(truth["img0"]))  # a later edit does not reach into the export
    assert (_read_back(cfg, "train")["img0"] == truth["img0"]).all()


def test_export_endpoint_writes_under_the_state_folder(store):
    store, truth = store
    client = TestClient(create_app(store))
    for fmt in ("labelme", "coco", "folder"):
        response = client.post("/v1/annotate/export", json={"format": fmt})
        assert response.status_code == 200, response.text
        assert response.json()["path"] == str(store.state_dir / "exports" / fmt)
    again = client.post("/v1/annotate/export", json={"format": "coco"}).json()  # replaces the previous export
    assert again["images"] == 3
    assert not [p for p in (store.state_dir / "exports").iterdir() if p.name.startswith(".")]
