"""COCO box and mask AP for instance models (pycocotools), COCO result files, and the
instance-to-semantic conversion that lets semantic metrics score an instance model.

The ground truth of a dataset is turned into a COCO dataset dict in memory and the
predictions into COCO *results* (Lin et al., "Microsoft COCO", ECCV 2014): one record per
detection, ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}`` plus
``"segmentation"`` as run-length encoding (``pycocotools.mask.encode``, counts as ASCII
text so the list is valid JSON and ``COCO().loadRes`` reads it back). ``COCOeval`` then
gives AP (IoU .50:.05:.95), AP50, AP75 and AP for small / medium / large objects
(< 32², 32²..96², > 96² pixels) for ``iouType`` ``bbox`` and ``segm``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..optional import require
from ..runtime import autocast

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _rle(masks: np.ndarray) -> list[dict]:
    """``(K, H, W)`` binary masks -> COCO RLE dicts with ``counts`` as str (JSON-safe)."""
    mask_utils = require("pycocotools.mask", "COCO evaluation")

    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0) > 0, dtype=np.uint8))
    for rle in encoded:
        rle["counts"] = rle["counts"].decode("ascii")
    return encoded


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]


def coco_ground_truth(targets: Iterable[dict], sizes: Iterable[tuple[int, int]],
                      class_names: list[str]) -> dict:
    """A COCO dataset dict from torchvision targets (``masks`` (K, H, W), ``labels``, ``image_id``)
    and the ``(H, W)`` of each image; ``class_names[0]`` is the background and is left out."""
    images, annotations = [], []
    for target, (height, width) in zip(targets, sizes):
        image_id = int(target["image_id"])
        images.append({"id": image_id, "height": int(height), "width": int(width),
                       "file_name": str(target.get("name", image_id))})
        masks = _numpy(target["masks"]).astype(np.uint8)
        for rle, label, box in zip(_rle(masks), _numpy(target["labels"]), _xywh(_numpy(target["boxes"]))):
            # ids from 1: COCOeval takes a matched id of 0 for "unmatched".
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "segmentation": rle, "area": float(masks_area(rle)), "bbox": box, "iscrowd": 0})
    categories = [{"id": k, "name": name} for k, name in enumerate(class_names) if k > 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def masks_area(rle: dict) -> float:
    """Pixel area of one RLE mask."""
    mask_utils = require("pycocotools.mask", "COCO evaluation")

    return float(mask_utils.area(rle))


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def coco_results(image_id: int, boxes, labels, scores, masks, *, mask_threshold: float = 0.5) -> list[dict]:
    """COCO result records of one image: ``masks`` ``(D, H, W)`` probabilities, binarised at
    ``> mask_threshold``; each record has both ``bbox`` and an RLE ``segmentation``."""
    masks = _numpy(masks) > mask_threshold
    return [{"image_id": int(image_id), "category_id": int(label), "score": float(score), "bbox": box,
             "segmentation": rle}
            for rle, label, score, box in zip(_rle(masks), _numpy(labels), _numpy(scores), _xywh(_numpy(boxes)))]


def coco_evaluate(ground_truth: dict, results: list[dict], *, iou_types: tuple[str, ...] = ("bbox", "segm")
                  ) -> dict[str, dict[str, float]]:
    """``{"bbox": {AP, AP50, ...}, "segm": {...}}`` from pycocotools' COCOeval.

    Values are in 0..1; NaN where COCO reports -1 (no ground truth in that size range).
    With no detections at all every AP is 0 (``loadRes`` refuses an empty list).
    """
    COCO = require("pycocotools.coco", "COCO evaluation").COCO
    COCOeval = require("pycocotools.cocoeval", "COCO evaluation").COCOeval

    scores: dict[str, dict[str, float]] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports with print()
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        for iou_type in iou_types:
            if not results:
                scores[iou_type] = {name: 0.0 for name in STATS}
                continue
            # Each evaluation sees only its own geometry: loadRes would otherwise take the
            # box area for segm records too (detectron2 drops the other key the same way).
            drop = "segmentation" if iou_type == "bbox" else "bbox"
            dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)])
            evaluator = COCOeval(gt, dt, iouType=iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            scores[iou_type] = {name: (math.nan if v < 0 else float(v)) for name, v in zip(STATS, evaluator.stats)}
    return scores


def instances_to_semantic(masks: Tensor, labels: Tensor, scores: Tensor, *, score_threshold: float = 0.5,
                          mask_threshold: float = 0.5) -> Tensor:
    """Per-pixel class of the highest-scoring instance covering it (0 where none).

    Args:
        masks: ``(D, H, W)`` mask probabilities; labels ``(D,)``; scores ``(D,)``.
        score_threshold: instances scoring below it are ignored.
        mask_threshold: a pixel belongs to an instance where its probability is above it.

    Returns:
        ``(H, W)`` int64 label map, for :class:`pixelwise.metrics.ConfusionMatrix`.
    """
    if masks.ndim != 3:
        raise ValueError(f"instances_to_semantic: masks must be (D, H, W), got {tuple(masks.shape)}")
    keep = scores >= score_threshold
    masks, labels, scores = masks[keep], labels[keep], scores[keep]
    semantic = torch.zeros(masks.shape[1:], dtype=torch.int64, device=masks.device)
    if len(labels) == 0:
        return semantic
    # Score where the instance covers the pixel, -1 elsewhere; the best score wins the pixel.
    covered = masks > mask_threshold
    ranked = torch.where(covered, scores.float()[:, None, None], torch.full_like(masks, -1.0, dtype=torch.float32))
    best, index = ranked.max(dim=0)
    return torch.where(best >= 0, labels.long()[index], semantic)


@torch.no_grad()
def evaluate_instances(model: nn.Module, loader: DataLoader, *, class_names: list[str],
                       device: torch.device | str = "cpu", amp: str = "none", mask_threshold: float = 0.5,
                       progress: bool = True) -> dict[str, dict[str, float]]:
    """COCO box and mask AP of ``model`` on ``loader`` (batches from ``instance_collate``).

    Returns ``{"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...}}``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    targets, sizes, results = [], [], []
    for images, batch_targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        with autocast(device, amp):
            outputs = model([image.to(device) for image in images])
        for image, target, out in zip(images, batch_targets, outputs):
            # Our own running id: a dataset's ids need not be unique across splits or shards.
            target = {**target, "image_id": len(targets) + 1}
            targets.append(target)
            sizes.append(tuple(image.shape[-2:]))
            results += coco_results(target["image_id"], out.boxes.float(), out.labels, out.scores.float(),
                                    out.masks.float(), mask_threshold=mask_threshold)
    model.train(was_training)
    return coco_evaluate(coco_ground_truth(targets, sizes, class_names), results)


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per IoU type, one column per COCO statistic."""
    lines = [f"{'':6s}" + "".join(f"{name:>8s}" for name in STATS)]
    for iou_type, label in (("bbox", "box"), ("segm", "mask")):
        if iou_type in scores:
            lines.append(f"{label:6s}" + "".join(f"{scores[iou_type][name]:8.4f}" for name in STATS))
    return "\n".join(lines)
