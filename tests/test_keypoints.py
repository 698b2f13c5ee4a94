"""Mask R-CNN keypoints end to end: the COCO keypoints reader, keypoints that move with flips and
zooms, OKS keypoint AP against an independent numpy computation, training from a config through
the CLI (``loss_keypoint``, ``keypoint_AP`` columns), predict and serve output."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from pixelwise import config
from pixelwise.cli import main
from pixelwise.data import write_image
from pixelwise.data.instances import InstanceTransform, SyntheticInstances
from pixelwise.data.keypoints import (
    COCO_PERSON_KEYPOINTS,
    COCO_PERSON_SIGMAS,
    KeypointSpec,
    flip_keypoints,
    mask_keypoints,
)
from pixelwise.errors import ConfigError, DataError
from pixelwise.metrics.coco import KEYPOINT_STATS, coco_evaluate, coco_ground_truth, coco_results
from pixelwise.registry import DATASETS
from pixelwise.tasks.select import build_task

# --- the COCO person-keypoints reader ---------------------------------------------------------

H, W = 40, 48


def _person(ann_id, image_id, x0, y0, x1, y1, *, visible=17, segmentation=True):
    rng = np.random.default_rng(ann_id)
    points = np.zeros((17, 3))
    points[:, 0], points[:, 1] = rng.uniform(x0, x1, 17), rng.uniform(y0, y1, 17)
    points[:, 2] = 2
    points[visible:] = 0
    ann = {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": [x0, y0, x1 - x0, y1 - y0],
           "area": float((x1 - x0) * (y1 - y0)), "keypoints": [float(v) for v in points.ravel()],
           "num_keypoints": int(min(visible, 17))}
    if segmentation:
        ann["segmentation"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    return ann, points


@pytest.fixture()
def coco_keypoints_root(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    images, anns, points = [], [], {}
    for image_id in (1, 2):
        write_image(tmp_path / "val2017" / f"{image_id:012d}.png", np.full((H, W, 3), 40 * image_id, np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id:012d}.png", "height": H, "width": W})
    for ann_id, (image_id, box, kwargs) in enumerate([(1, (4, 4, 20, 30), {}), (1, (24, 8, 44, 36), {"visible": 5}),
                                                      (2, (10, 2, 30, 22), {"segmentation": False})], start=1):
        ann, pts = _person(ann_id, image_id, *box, **kwargs)
        anns.append(ann)
        points[ann_id] = pts
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_PERSON_KEYPOINTS),
                "skeleton": [[16, 14], [14, 12], [6, 7]]}
    (tmp_path / "annotations" / "person_keypoints_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [category]}))
    return tmp_path, points


def _cfg(root, **args):
    return config.from_dict({"data": {"dataset": "coco_keypoints", "root": str(root), "num_classes": 2,
                                      "args": args}}).data


def test_coco_keypoints_reader_gives_targets_in_the_model_format(coco_keypoints_root):
    root, points = coco_keypoints_root
    ds = DATASETS["coco_keypoints"](_cfg(root), "val", train=False, transform=None)
    assert len(ds) == 2 and ds.class_names == ["background", "person"]
    spec = ds.keypoint_spec
    assert spec.names == list(COCO_PERSON_KEYPOINTS) and spec.sigmas == list(COCO_PERSON_SIGMAS)
    assert spec.skeleton == [[15, 13], [13, 11], [5, 6]]  # COCO's 1-based pairs, 0-based here
    # A flip swaps every left_/right_ pair and keeps the nose.
    assert spec.hflip[0] == 0 and spec.hflip[1] == 2 and spec.hflip[2] == 1 and spec.hflip[16] == 15
    image, target = ds[0]
    assert image.shape == (3, H, W)
    assert target["keypoints"].dtype == torch.float32 and target["keypoints"].shape == (2, 17, 3)
    np.testing.assert_allclose(target["keypoints"][0].numpy(), points[1], rtol=0, atol=1e-5)
    second = points[2].copy()
    np.testing.assert_allclose(target["keypoints"][1].numpy(), second, atol=1e-5)
    assert (target["keypoints"][1, 5:] == 0).all()  # unlabelled points: no position, v = 0
    # Annotation 3 has no segmentation: its box is its mask, so it still trains.
    _, target = ds[1]
    assert target["boxes"].tolist() == [[10.0, 2.0, 30.0, 22.0]] and target["keypoints"].shape == (1, 17, 3)
    # Through a flipping training transform: the flipped image's left eye is the mirrored right eye.
    flip = DATASETS["coco_keypoints"](_cfg(root), "val", train=True,
                                      transform=InstanceTransform(train=True, scale=(1.0, 1.0), hflip=1.0, vflip=0.0))
    flipped = flip[0][1]["keypoints"][0].numpy()
    assert flipped[1, 0] == pytest.approx(W - points[1][2, 0]) and flipped[1, 1] == pytest.approx(points[1][2, 1])
    assert flipped[0, 0] == pytest.approx(W - points[1][0, 0])  # the nose has no partner


def test_coco_keypoints_reader_errors_name_the_fix(coco_keypoints_root, tmp_path):
    root, _ = coco_keypoints_root
    path = root / "annotations" / "person_keypoints_val2017.json"
    data = json.loads(path.read_text())
    data["categories"][0]["keypoints"] = ["head", "tail"]
    for ann in data["annotations"]:
        ann["keypoints"] = ann["keypoints"][:6]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="keypoint_sigmas"):
        DATASETS["coco_keypoints"](_cfg(root), "val", train=False, transform=None)
    ds = DATASETS["coco_keypoints"](_cfg(root, keypoint_sigmas=[0.05, 0.07], flip_pairs=[["head", "tail"]]), "val",
                                    train=False, transform=None)
    assert ds.keypoint_spec.sigmas == [0.05, 0.07] and ds.keypoint_spec.hflip == [1, 0]
    data["annotations"][0]["keypoints"] = [1.0, 2.0, 2]
    path.write_text(json.dumps(data))
    ds = DATASETS["coco_keypoints"](_cfg(root, keypoint_sigmas=[0.05, 0.07]), "val", train=False, transform=None)
    with pytest.raises(DataError, match="3 keypoint values.*6 values"):
        ds[0]
    data["categories"][0].pop("keypoints")
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="coco_instances"):
        DATASETS["coco_keypoints"](_cfg(root), "val", train=False, transform=None)


# --- keypoints move with the image ---------------------------------------------------------------

def test_flips_move_keypoints_onto_their_partners_exactly():
    ds = SyntheticInstances(3, image_size=64, seed=5, keypoints=True)
    for index in range(3):
        image, masks, labels = ds.generate(index)
        points = mask_keypoints(masks)
        for hflip, vflip, flipped in ((1.0, 0.0, masks[:, :, ::-1]), (0.0, 1.0, masks[:, ::-1])):
            transform = InstanceTransform(train=True, scale=(1.0, 1.0), hflip=hflip, vflip=vflip)
            _, target = transform(image, masks, labels, name="x", image_id=1, keypoints=points,
                                  keypoint_spec=ds.keypoint_spec)
            # The keypoints of the flipped masks, computed afresh, are the flipped keypoints.
            np.testing.assert_allclose(target["keypoints"].numpy(), mask_keypoints(flipped), atol=1e-4)
    # A left/right named set swaps names in a flip; an unlabelled point stays unlabelled.
    spec = KeypointSpec.build(["nose", "left_eye", "right_eye"], sigmas=[0.1] * 3)
    points = np.array([[[10.0, 5.0, 2], [8.0, 4.0, 2], [0.0, 0.0, 0]]])
    flipped = flip_keypoints(points, size=20, axis="x", perm=spec.hflip)
    np.testing.assert_allclose(flipped, [[[10.0, 5.0, 2], [0.0, 0.0, 0], [12.0, 4.0, 2]]])


def test_zoom_scales_and_shifts_keypoints_and_drops_those_cut_away():
    ds = SyntheticInstances(4, image_size=64, seed=2, keypoints=True)
    dropped = 0
    for seed in range(4):
        image, masks, _ = ds.generate(seed)
        points = mask_keypoints(masks)
        ids = np.arange(1, len(masks) + 1)  # labels as instance ids: which ones survive the crop
        transform = InstanceTransform(train=True, scale=(1.5, 1.5), hflip=0.0, vflip=0.0, seed=seed)
        _, target = transform(image, masks, ids, name="x", image_id=1, keypoints=points,
                              keypoint_spec=ds.keypoint_spec)
        kept, source = target["keypoints"].numpy(), points[target["labels"].numpy() - 1]
        assert kept.shape[1:] == (5, 3) and len(kept) == len(target["masks"])
        inside = kept[..., 2] > 0
        assert (kept[~inside] == 0).all() and ((kept[inside][:, :2] >= 0) & (kept[inside][:, :2] < 64)).all()
        dropped += int((~inside).sum())
        # x' = 1.5 x + offset with one whole-pixel crop offset for every point of the image.
        offsets = kept[inside][:, :2] - 1.5 * source[inside][:, :2]
        np.testing.assert_allclose(offsets, np.broadcast_to(np.round(offsets[0]), offsets.shape), atol=1e-4)
        assert ((offsets[0] <= 0) & (offsets[0] >= -32)).all()
        # The extreme points lie on the visible mask, so they stay on (or next to) the zoomed mask.
        for mask, pts, vis in zip(target["masks"].numpy(), kept[:, 1:], inside[:, 1:]):
            for x, y in pts[vis][:, :2]:
                r, c = int(y), int(x)
                assert mask[max(0, r - 1):r + 2, max(0, c - 1):c + 2].any()
    assert dropped > 0  # a 1.5x zoom crops some points away
    with pytest.raises(ConfigError, match="KeypointSpec"):
        InstanceTransform(train=True)(image, masks, ids, name="x", image_id=1, keypoints=points)


# --- OKS keypoint AP against numpy ---------------------------------------------------------------

def _numpy_oks(gt, dt, area, sigmas):
    """COCO's object keypoint similarity, written from its definition."""
    visible = gt[:, 2] > 0
    k2 = (2 * np.asarray(sigmas)) ** 2
    d2 = ((gt[:, :2] - dt[:, :2]) ** 2).sum(axis=1)
    return float(np.exp(-d2 / (2 * area * k2))[visible].mean())


def _numpy_ap(oks, scores):
    """101-point interpolated AP over OKS thresholds 0.50:0.05:0.95, one ground truth and one
    detection per image (so a detection is a true positive iff its OKS clears the threshold)."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    oks = np.asarray(oks)[order]
    aps = []
    for t in np.linspace(0.5, 0.95, 10):
        tp = np.cumsum(oks >= t)
        fp = np.cumsum(oks < t)
        recall, precision = tp / len(oks), tp / (tp + fp)
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone from the right
        at = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        aps.append(np.mean([precision[i] if i < len(precision) else 0.0 for i in at]))
    return float(np.mean(aps))


def _square_target(image_id, x0, side, points):
    mask = np.zeros((1, 96, 96), np.uint8)
    mask[0, 10:10 + side, x0:x0 + side] = 1
    return {"image_id": image_id, "masks": mask, "labels": np.array([1]),
            "boxes": np.array([[x0, 10, x0 + side, 10 + side]], np.float32), "keypoints": points[None]}


def test_oks_keypoint_ap_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    sigmas = [0.05, 0.08, 0.1, 0.06]
    targets, results, oks, scores = [], [], [], []
    for image_id in range(1, 9):
        side = int(rng.integers(20, 40))
        gt = np.concatenate([rng.uniform(12, 50, (4, 2)), np.full((4, 1), 2.0)], axis=1)
        if image_id == 3:
            gt[1, 2] = 0  # one unlabelled point: OKS averages over the labelled ones
        target = _square_target(image_id, 8, side, gt)
        shift = rng.normal(0, 1.2 * image_id, (4, 2))  # from near-perfect to far off
        dt = np.concatenate([gt[:, :2] + shift, np.ones((4, 1))], axis=1)
        score = float(rng.uniform(0.1, 0.9))
        targets.append(target)
        results += coco_results(image_id, target["boxes"], [1], [score], target["masks"].astype(np.float32),
                                keypoints=dt[None], keypoint_scores=np.full((1, 4), 0.7))
        oks.append(_numpy_oks(gt, dt, side * side, sigmas))
        scores.append(score)
    thresholds = np.linspace(0.5, 0.95, 10)
    assert min(abs(o - t) for o in oks for t in thresholds) > 1e-3  # no case hangs on a threshold
    assert 0 < min(oks) < 0.5 < max(oks)  # some matched, some not
    gt_dict = coco_ground_truth(targets, [(96, 96)] * len(targets), ["bg", "thing"])
    ours = coco_evaluate(gt_dict, results, iou_types=("keypoints",), sigmas=sigmas)["keypoints"]
    assert set(ours) == set(KEYPOINT_STATS)
    assert ours["AP"] == pytest.approx(_numpy_ap(oks, scores), abs=1e-9)
    assert ours["AP50"] == pytest.approx(_numpy_ap(np.where(np.array(oks) >= 0.5, 1.0, 0.0), scores), abs=1e-9)
    assert 0.0 < ours["AP"] < 1.0
    # Perfect keypoints: AP 1, with COCO's own 17 person sigmas when none are given.
    gt17 = np.concatenate([rng.uniform(12, 30, (17, 2)), np.full((17, 1), 2.0)], axis=1)
    target = _square_target(1, 8, 30, gt17)
    perfect = coco_results(1, target["boxes"], [1], [0.9], target["masks"].astype(np.float32), keypoints=gt17[None])
    kp = coco_evaluate(coco_ground_truth([target], [(96, 96)], ["bg", "person"]), perfect, iou_types=("keypoints",))
    assert kp["keypoints"]["AP"] == pytest.approx(1.0)


# --- a keypoint config trains, evaluates, predicts and serves ------------------------------------

MODEL_ARGS = {"min_size": 64, "max_size": 64, "fpn_channels": 16, "anchor_scale": 4.0, "representation_size": 32,
              "mask_channels": 16, "mask_layers": 2, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
              "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "rpn_batch_size_per_image": 32,
              "box_batch_size_per_image": 32, "box_score_thresh": 0.0, "box_detections_per_img": 20,
              "num_keypoints": 5}


def _config(tmp_path, *, keypoints=True, num_keypoints=5):
    data = {
        "model": {"name": "maskrcnn", "encoder": "test_resnet", "args": {**MODEL_ARGS, "num_keypoints": num_keypoints}},
        "data": {"dataset": "synthetic_instances", "num_classes": 5, "crop_size": 64, "batch_size": 4,
                 "train_samples": 8, "val_samples": 4, "args": {"max_objects": 3, "keypoints": keypoints}},
        "train": {"max_steps": 6, "lr": 0.002, "schedule": "constant", "val_every": 3, "log_every": 1,
                  "device": "cpu", "grad_clip": 10.0, "plots": False, "out_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "keypoints.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("keypoints")
    path = _config(tmp_path)
    assert main(["train", str(path), "--quiet", "--no-report"]) == 0
    return tmp_path, path


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_keypoint_config_trains_and_reports_keypoint_ap(trained, capsys):
    tmp_path, path = trained
    run = tmp_path / "run"
    steps = _rows(run / "log.csv")
    assert len(steps) == 6 and all(np.isfinite(float(r["loss_keypoint"])) for r in steps)
    assert float(steps[0]["loss_keypoint"]) > 0
    metrics = [r for r in _rows(run / "metrics.csv") if r["keypoint_AP"]]
    assert metrics, "no validation row with keypoint AP"
    for key in ("AP", "AP50", "AP75"):
        assert 0.0 <= float(metrics[-1][f"keypoint_{key}"]) <= 1.0
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["data"]["keypoints"]["names"] == ["centre", "left", "right", "top", "bottom"]
    capsys.readouterr()
    assert main(["eval", str(path), "--quiet"]) == 0
    assert "keypoint" in capsys.readouterr().out


def test_predict_writes_keypoints_and_draws_them(trained, tmp_path):
    run = trained[0] / "run"
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "a.png", SyntheticInstances(1, image_size=64, seed=9).generate(0)[0])
    assert main(["predict", str(run / "best"), str(images), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert predictions and all(len(p["keypoints"]) == 15 for p in predictions)
    categories = json.loads((tmp_path / "out" / "images.json").read_text())["categories"]
    assert categories[0]["keypoints"][0] == "centre"
    assert (tmp_path / "out" / "a_instances.png").is_file()


def test_draw_keypoints_paints_dots_and_skeleton():
    from pixelwise.infer.instance import draw_keypoints

    blank = np.zeros((32, 32, 3), np.uint8)
    out = draw_keypoints(blank, np.array([[[5.0, 5.0, 1.0], [25.0, 25.0, 1.0]]]), skeleton=[[0, 1]],
                         colours=np.array([[255, 0, 0]], np.uint8))
    assert out[5, 5, 0] == 255 and out[25, 25, 0] == 255 and out[15, 15, 0] > 0  # both points and the line
    assert blank.sum() == 0


def test_serve_returns_keypoints(trained):
    from fastapi.testclient import TestClient

    from pixelwise.serve import ServeLimits, create_app, load_segmenter

    client = TestClient(create_app(load_segmenter(str(trained[0] / "run" / "best")), ServeLimits()))
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(SyntheticInstances(1, image_size=64, seed=9).generate(0)[0]).save(buf, format="PNG")
    card = client.get("/v1/model").json()
    assert card["keypoints"]["names"][1] == "left"
    body = client.post("/v1/segment?score_threshold=0", content=buf.getvalue(),
                       headers={"content-type": "image/png"}).json()
    assert body["instances"] and all(len(item["keypoints"]) == 15 for item in body["instances"])


def test_keypoint_model_without_dataset_keypoints_names_the_fix(tmp_path, capsys):
    # Through the CLI: once a bare "error: keypoints" (torchvision's KeyError), now the fix.
    assert main(["train", str(_config(tmp_path, keypoints=False)), "--quiet", "--no-report"]) == 2
    assert "data.args.keypoints: true" in capsys.readouterr().err
    cfg = config.load(_config(tmp_path, num_keypoints=0))
    with pytest.raises(ConfigError, match="num_keypoints: 5"):
        build_task(cfg).build_model()
    cfg = config.load(_config(tmp_path, num_keypoints=3))
    with pytest.raises(ConfigError, match="has 5 keypoints"):
        build_task(cfg).build_model()


def test_shipped_keypoint_config_trains(tmp_path, capsys):
    """configs/keypoints_synthetic.yaml (docs/instance.md, "Keypoints") trains as written, only the
    sample counts and the step budget shrunk, and validates keypoint AP."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "keypoints_synthetic.yaml"
    raw = config.load(path)
    assert raw.model.args["num_keypoints"] == 5 and raw.data.args["keypoints"] is True
    overrides = [f"train.out_dir={tmp_path / 'run'}", "train.max_steps=2", "data.train_samples=8",
                 "data.val_samples=2", "train.val_every=1", "train.plots=false"]
    assert main(["train", str(path), "--quiet", "--no-report", *sum((["--set", o] for o in overrides), [])]) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    assert _rows(tmp_path / "run" / "metrics.csv")[-1]["keypoint_AP"] != ""


def test_model_refuses_targets_without_keypoints():
    from pixelwise.models.maskrcnn import create_instance_model

    model = create_instance_model("maskrcnn", encoder="test_resnet", num_classes=3, min_size=64, max_size=64,
                                  fpn_channels=16, representation_size=32, mask_channels=16, mask_layers=1,
                                  num_keypoints=3).train()
    target = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
              "masks": torch.ones(1, 64, 64, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="needs 'keypoints' \\(K, 3, 3\\)"):
        model([torch.rand(3, 64, 64)], [target])
