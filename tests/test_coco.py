"""COCO readers: semantic masks (``coco``) and torchvision instance targets (``CocoInstances``)."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from torch import nn

from pixelwise.config import DataCfg
from pixelwise.data import build_dataset, class_names
from pixelwise.data.coco import (
    CocoIndex,
    CocoInstances,
    CocoSegmentation,
    collate_instances,
    segmentation_to_mask,
)
from pixelwise.data.io import write_image
from pixelwise.errors import ConfigError, DataError

H, W = 16, 20


def rect(x0, y0, x1, y1):
    """Polygon of the rectangle [x0, x1) x [y0, y1) in COCO pixel-edge coordinates."""
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def rect_mask(x0, y0, x1, y1):
    """Independent rasterisation: the pixels whose centre lies inside the rectangle."""
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    return (xx > x0) & (xx < x1) & (yy > y0) & (yy < y1)


def uncompressed_counts(mask):
    """COCO uncompressed RLE: alternating run lengths of 0s and 1s, column-major, starting with 0s."""
    flat = mask.ravel(order="F").astype(int)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return counts


def decode_counts(counts):
    """Hand decoder of uncompressed counts, the other way round."""
    flat = np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(counts)])
    return flat.reshape((W, H)).T


DOG_RLE = np.zeros((H, W), bool)
DOG_RLE[10:14, 15:18] = True
CAT_COMPRESSED = np.zeros((H, W), bool)
CAT_COMPRESSED[3:9, 4:12] = True
CROWD = np.zeros((H, W), bool)
CROWD[12:16, 0:8] = True


@pytest.fixture
def coco_root(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "val2017" / name, np.full((H, W, 3), 120, np.uint8))
    crowd_rle = mask_utils.encode(np.asfortranarray(CROWD.astype(np.uint8)))
    cat_rle = mask_utils.encode(np.asfortranarray(CAT_COMPRESSED.astype(np.uint8)))
    data = {
        "images": [{"id": 5, "file_name": "b.jpg", "height": H, "width": W},
                   {"id": 1, "file_name": "a.jpg", "height": H, "width": W},
                   {"id": 9, "file_name": "c.jpg", "height": H, "width": W}],
        # Category ids with gaps, listed out of order: labels follow sorted ids (3 -> 1, 7 -> 2).
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            # Small dog first in the file, inside the big cat: it must still end on top.
            {"id": 10, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": [rect(6, 4, 9, 7)],
             "bbox": [6, 4, 3, 3], "area": 9.0},
            {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [rect(2, 2, 12, 10)],
             "bbox": [2, 2, 10, 8], "area": 80.0},
            {"id": 12, "image_id": 1, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": uncompressed_counts(DOG_RLE)},
             "bbox": [15, 10, 3, 4], "area": 12.0},
            {"id": 13, "image_id": 1, "category_id": 3, "iscrowd": 1,
             "segmentation": {"size": [H, W], "counts": crowd_rle["counts"].decode()},
             "bbox": [0, 12, 8, 4], "area": 32.0},
            # Image b: a compressed RLE cat, whose box runs past the image (clipped).
            {"id": 20, "image_id": 5, "category_id": 3, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": cat_rle["counts"].decode()},
             "bbox": [4, 3, 8, 30], "area": 48.0},
        ],
    }
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return tmp_path


def _index(root):
    return CocoIndex(root / "annotations" / "instances_val2017.json", root / "val2017")


def test_hand_codecs_agree():
    assert decode_counts(uncompressed_counts(DOG_RLE)).tolist() == DOG_RLE.tolist()
    assert uncompressed_counts(np.array([[0, 1], [1, 1]])) == [1, 3]


def test_segmentation_formats():
    np.testing.assert_array_equal(segmentation_to_mask([rect(2, 2, 12, 10)], H, W), rect_mask(2, 2, 12, 10))
    counts = uncompressed_counts(DOG_RLE)
    np.testing.assert_array_equal(segmentation_to_mask({"size": [H, W], "counts": counts}, H, W),
                                  decode_counts(counts))
    compressed = mask_utils.encode(np.asfortranarray(CAT_COMPRESSED.astype(np.uint8)))
    np.testing.assert_array_equal(segmentation_to_mask(compressed, H, W), CAT_COMPRESSED)
    # Two polygons of one object are merged.
    both = segmentation_to_mask([rect(0, 0, 3, 3), rect(10, 10, 12, 12)], H, W)
    np.testing.assert_array_equal(both, rect_mask(0, 0, 3, 3) | rect_mask(10, 10, 12, 12))


@pytest.mark.parametrize("segm, message", [
    ([[1.0, 2.0, 3.0, 4.0]], "at least 3 points"),
    ({"size": [H + 1, W], "counts": [H * W + W]}, "differs from the image size"),
    ({"size": [H, W], "counts": [5, 5]}, "add up to 10"),
    ("nonsense", "neither a polygon"),
])
def test_malformed_segmentation(segm, message):
    with pytest.raises(DataError, match=message):
        segmentation_to_mask(segm, H, W, where="ann 3")


def test_semantic_masks(coco_root):
    cfg = DataCfg(dataset="coco", root=str(coco_root), num_classes=3, augment="none")
    ds = build_dataset(cfg, "val", train=False)
    assert class_names(cfg) == ["background", "cat", "dog"]
    assert ds.index.label_of == {3: 1, 7: 2} and ds.index.category_ids == [3, 7]
    assert [im["id"] for im in ds.images] == [1, 5, 9]
    sample = ds[0]
    assert sample["name"] == "a" and sample["image"].shape == (3, H, W)
    expected = np.zeros((H, W), np.int64)
    expected[CROWD] = 255
    expected[rect_mask(2, 2, 12, 10)] = 1
    expected[rect_mask(6, 4, 9, 7)] = 2
    expected[DOG_RLE] = 2
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    b = ds[1]["mask"].numpy()
    np.testing.assert_array_equal(b, np.where(CAT_COMPRESSED, 1, 0))
    assert ds[2]["mask"].sum() == 0


def test_crowd_modes_and_skip_empty(coco_root):
    index = _index(coco_root)
    as_label = CocoSegmentation(index, num_classes=3, crowd="label").load(0)[1]
    assert (as_label[CROWD] == 1).all()
    as_background = CocoSegmentation(index, num_classes=3, crowd="background").load(0)[1]
    assert (as_background[CROWD] == 0).all()
    assert len(CocoSegmentation(index, num_classes=3, skip_empty=True)) == 2
    with pytest.raises(DataError, match="set data.num_classes to 3"):
        CocoSegmentation(index, num_classes=5)


def test_instances_follow_torchvision_format(coco_root):
    ds = CocoInstances(_index(coco_root))
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W) and 0.0 <= image.min() <= image.max() <= 1.0
    assert target["image_id"] == 1 and target["name"] == "a"
    # Crowd annotation 13 is left out; file order kept.
    expected_boxes = torch.tensor([[6., 4., 9., 7.], [2., 2., 12., 10.], [15., 10., 18., 14.]])
    torch.testing.assert_close(target["boxes"], expected_boxes)
    assert target["labels"].tolist() == [2, 1, 2] and target["labels"].dtype == torch.int64
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, H, W)
    np.testing.assert_array_equal(target["masks"][2].numpy(), DOG_RLE)
    assert target["iscrowd"].tolist() == [0, 0, 0] and target["iscrowd"].dtype == torch.int64
    assert target["area"].tolist() == [9.0, 80.0, 12.0]
    _, target_b = ds[1]
    torch.testing.assert_close(target_b["boxes"], torch.tensor([[4., 3., 12., float(H)]]))  # clipped to the image
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W) and empty["labels"].numel() == 0
    assert len(CocoInstances(_index(coco_root), skip_empty=True)) == 2


def test_instances_train_torchvision_mask_rcnn(coco_root):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
    backbone.out_channels = 8
    model = MaskRCNN(backbone, num_classes=None, min_size=32, max_size=40,
                     rpn_anchor_generator=AnchorGenerator(sizes=((4, 8),), aspect_ratios=((1.0,),)),
                     box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
                     box_head=TwoMLPHead(8 * 7 * 7, 32), mask_head=MaskRCNNHeads(8, (8,), 1),
                     box_predictor=FastRCNNPredictor(32, 3), mask_predictor=MaskRCNNPredictor(8, 8, 3),
                     rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, box_batch_size_per_image=32)
    images, targets = collate_instances([CocoInstances(_index(coco_root))[i] for i in range(3)])
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_mask"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_broken_files(coco_root, tmp_path):
    ann = coco_root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 99
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="annotation id 10 has category id 99"):
        _index(coco_root)
    ann.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        _index(coco_root)
    with pytest.raises(DataError, match="data.args.ann_file"):
        build_dataset(DataCfg(dataset="coco", root=str(tmp_path / "nowhere"), num_classes=3), "val", train=False)


def test_image_size_mismatch(coco_root):
    write_image(coco_root / "val2017" / "a.jpg", np.zeros((H + 2, W, 3), np.uint8))
    with pytest.raises(DataError, match="a.jpg.*20x18.*says 20x16"):
        CocoSegmentation(_index(coco_root), num_classes=3).load(0)


def test_coco_instances_builder_feeds_the_instance_engine(coco_root):
    from pixelwise.config import ExperimentCfg, ModelCfg
    from pixelwise.tasks.instance import build_instance_dataset

    cfg = ExperimentCfg(model=ModelCfg(name="maskrcnn"),
                        data=DataCfg(dataset="coco_instances", root=str(coco_root), num_classes=3, augment="none",
                                     train_split="val", val_split="val"))
    ds = build_instance_dataset(cfg, "val", train=False)
    assert ds.class_names == ["background", "cat", "dog"]
    image, target = ds[0]
    assert image.shape == (3, H, W) and target["image_id"] == 1 and target["name"] == "a"
    # Crowd left out; boxes are tight around the masks (polygon rasterisation decides the edge pixels).
    assert target["labels"].tolist() == [2, 1, 2]
    for box, mask in zip(target["boxes"], target["masks"]):
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        assert box.tolist() == [cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1]
    np.testing.assert_array_equal(target["masks"][2].numpy(), DOG_RLE)
    assert ds[2][1]["boxes"].shape == (0, 4)
    with pytest.raises(ConfigError, match="num_classes=3"):
        build_dataset(DataCfg(dataset="coco_instances", root=str(coco_root), num_classes=5), "val", train=False)
