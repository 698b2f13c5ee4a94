"""COCO-style mask average precision for instance segmentation, via pycocotools.

AP is the COCO detection metric (Lin et al., "Microsoft COCO: Common Objects in
Context", ECCV 2014) with mask IoU: for each class and IoU threshold in
``0.50:0.05:0.95``, detections of all images are ranked by score, greedily matched to
unmatched ground truth of IoU >= threshold, and precision is interpolated (made
monotone) and sampled at the 101 recalls ``0:0.01:1``; AP is the mean over recalls,
classes and thresholds. AP50 / AP75 use one threshold; APs / APm / APl restrict ground
truth and unmatched detections to areas ``< 32**2``, ``32**2 .. 96**2``, ``> 96**2``
pixels. The computation itself is pycocotools' ``COCOeval(iouType="segm")``; this
module only turns per-image masks into its run-length-encoded inputs.

Two entry points share one AP routine (:func:`_cocoeval`): :class:`CocoMaskAP` accumulates
masks image by image (mask AP, per-class AP, all-gather across processes), and
:func:`coco_evaluate` scores COCO dicts (ground truth from :func:`coco_ground_truth`, results
from :func:`coco_results`) for box, mask and keypoint AP at once, as instance training validates.

Keypoint AP (``iouType="keypoints"``) replaces IoU by the object keypoint similarity
``OKS = sum_i exp(-d_i^2 / (2 s^2 k_i^2)) [v_i > 0] / sum_i [v_i > 0]`` over the labelled
ground-truth keypoints, with ``d_i`` the distance to the predicted point, ``s^2`` the object's
(mask) area and ``k_i = 2 sigma_i`` the per-keypoint falloff (COCO's 17 person sigmas by default).

pycocotools is an optional dependency: ``pip install "pixelwise[coco]"`` (``".[coco]"`` in a clone).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch.distributed as dist
from torch import Tensor

from ..data.rle import coco_rle
from ..optional import require

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# COCO's keypoint summary has no small range (people under 32^2 px carry no usable keypoints).
KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl")


def _pycocotools():
    feature = "COCO mask AP"
    return (require("pycocotools.mask", feature), require("pycocotools.coco", feature).COCO,
            require("pycocotools.cocoeval", feature).COCOeval)


def _numpy(value: Tensor | np.ndarray | Sequence) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class CocoMaskAP:
    """Accumulates instance predictions image by image; :meth:`compute` gives COCO AP.

    Example::

        ap = CocoMaskAP()
        for gt_masks, gt_labels, out in data:
            ap.update(gt_masks=gt_masks, gt_labels=gt_labels, pred_masks=out.masks,
                      pred_labels=out.labels, pred_scores=out.scores)
        ap.compute()["AP"]

    Masks are run-length encoded on :meth:`update`, so memory grows with the number of
    instances, not pixels. Every ground-truth instance counts (no ``iscrowd`` regions).

    Args:
        max_detections: detections kept per image and class ranking, COCO's 100.
    """

    def __init__(self, *, max_detections: int = 100) -> None:
        if not isinstance(max_detections, int) or isinstance(max_detections, bool) \
                or max_detections < 1:
            raise ValueError(f"max_detections must be an int >= 1 but got {max_detections!r}")
        self._mask_utils = _pycocotools()[0]
        self.max_detections = max_detections
        self._images: list[tuple[int, int]] = []
        self._gts: list[dict] = []
        self._dets: list[dict] = []

    @property
    def num_images(self) -> int:
        """How many images have been added."""
        return len(self._images)

    def reset(self) -> None:
        """Forget every image."""
        self._images, self._gts, self._dets = [], [], []

    def _encode(self, masks: np.ndarray, name: str, shape: tuple[int, int] | None) -> list:
        if masks.ndim != 3 or (shape is not None and masks.shape[1:] != shape):
            want = "(M, H, W)" if shape is None else f"(M, {shape[0]}, {shape[1]})"
            raise ValueError(f"{name} must have shape {want} but got {masks.shape}")
        if masks.shape[0] == 0:
            return []
        return coco_rle(masks > 0)

    def update(
        self,
        *,
        gt_masks: Tensor | np.ndarray,
        gt_labels: Tensor | np.ndarray | Sequence[int],
        pred_masks: Tensor | np.ndarray,
        pred_labels: Tensor | np.ndarray | Sequence[int],
        pred_scores: Tensor | np.ndarray | Sequence[float],
    ) -> None:
        """Add one image.

        Args:
            gt_masks: ``(M, H, W)`` bool / 0-1 ground-truth instance masks (``M`` may be 0).
            gt_labels: ``(M,)`` integer class of each ground-truth instance.
            pred_masks: ``(D, H, W)`` predicted masks, binarised at ``> 0`` (threshold
                soft masks first, e.g. ``probs > 0.5``).
            pred_labels: ``(D,)`` integer classes.
            pred_scores: ``(D,)`` confidences; only their order matters.
        """
        gt_masks, pred_masks = _numpy(gt_masks), _numpy(pred_masks)
        gt_labels = _numpy(gt_labels).reshape(-1).astype(np.int64)
        pred_labels = _numpy(pred_labels).reshape(-1).astype(np.int64)
        pred_scores = _numpy(pred_scores).reshape(-1).astype(np.float64)
        if gt_masks.ndim != 3:
            raise ValueError(f"gt_masks must have shape (M, H, W) but got {gt_masks.shape}")
        shape = gt_masks.shape[1:]
        if len(gt_labels) != len(gt_masks):
            raise ValueError(
                f"gt_labels has {len(gt_labels)} entries for {len(gt_masks)} gt_masks; "
                f"give one label per mask"
            )
        if not (len(pred_labels) == len(pred_scores) == len(pred_masks)):
            raise ValueError(
                f"pred_masks ({len(pred_masks)}), pred_labels ({len(pred_labels)}) and "
                f"pred_scores ({len(pred_scores)}) must have one entry per detection"
            )
        image_id = len(self._images) + 1
        self._images.append((int(shape[0]), int(shape[1])))
        for rle, label in zip(self._encode(gt_masks, "gt_masks", None), gt_labels):
            self._gts.append({"image_id": image_id, "category_id": int(label), "rle": rle})
        for rle, label, score in zip(
            self._encode(pred_masks, "pred_masks", tuple(shape)), pred_labels, pred_scores
        ):
            self._dets.append(
                {"image_id": image_id, "category_id": int(label), "rle": rle, "score": float(score)}
            )

    def all_gather(self) -> CocoMaskAP:
        """Collect every process's images into every process (a collective); returns
        ``self``. A no-op unless ``torch.distributed`` is initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return self
        shards: list = [None] * dist.get_world_size()
        dist.all_gather_object(shards, (self._images, self._gts, self._dets))
        self.reset()
        for images, gts, dets in shards:
            offset = len(self._images)  # renumber: image ids are per process
            self._images += images
            self._gts += [{**g, "image_id": g["image_id"] + offset} for g in gts]
            self._dets += [{**d, "image_id": d["image_id"] + offset} for d in dets]
        return self

    def _ground_truth(self) -> dict:
        mask_utils = self._mask_utils
        # Annotation ids start at 1: COCOeval stores the matched id and treats 0 as
        # "unmatched", so an id of 0 would silently turn a true positive into a miss.
        annotations = [{"id": ann_id, "image_id": g["image_id"], "category_id": g["category_id"],
                        "segmentation": g["rle"], "area": float(mask_utils.area(g["rle"])),
                        "bbox": mask_utils.toBbox(g["rle"]).tolist(), "iscrowd": 0}
                       for ann_id, g in enumerate(self._gts, start=1)]
        categories = {r["category_id"] for r in self._gts + self._dets}
        return {"images": [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(self._images, start=1)],
                "annotations": annotations, "categories": [{"id": c} for c in sorted(categories)]}

    def compute(self) -> dict:
        """``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` as floats in ``[0, 1]``
        (NaN where COCO reports -1: no ground truth in that range), and ``per_class``:
        ``{label: AP}`` over the classes with ground truth."""
        if not self._gts:
            raise ValueError(
                "CocoMaskAP has no ground-truth instances; AP is undefined without them"
            )
        results = [{"image_id": d["image_id"], "category_id": d["category_id"], "segmentation": d["rle"],
                    "score": d["score"]} for d in self._dets]
        evaluator = _cocoeval(self._ground_truth(), results, "segm", max_detections=self.max_detections)
        result: dict = _stats(evaluator, "segm")
        # precision: (IoU thresholds, recalls, classes, area ranges, max dets); -1 = none.
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        per_class = {}
        for k, label in enumerate(evaluator.params.catIds):
            values = precision[:, :, k]
            values = values[values > -1]
            if values.size:
                per_class[int(label)] = float(values.mean())
        result["per_class"] = per_class
        return result


def coco_mask_ap(images: Sequence[dict], *, max_detections: int = 100) -> dict:
    """COCO mask AP of a list of per-image dicts with the keyword arguments of
    :meth:`CocoMaskAP.update` (``gt_masks``, ``gt_labels``, ``pred_masks``,
    ``pred_labels``, ``pred_scores``); see :meth:`CocoMaskAP.compute`."""
    evaluator = CocoMaskAP(max_detections=max_detections)
    for image in images:
        evaluator.update(**image)
    return evaluator.compute()


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]


def _keypoint_fields(points: np.ndarray) -> dict:
    """A ground-truth ``(P, 3)`` keypoint row as COCO's ``keypoints`` list and ``num_keypoints``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    visible = points[:, 2] > 0
    flat = np.where(visible[:, None], points, 0.0)
    return {"keypoints": [float(v) if j < 2 else int(v) for row in flat for j, v in enumerate(row)],
            "num_keypoints": int(visible.sum())}


def coco_ground_truth(targets: Iterable[dict], sizes: Iterable[tuple[int, int]],
                      class_names: list[str]) -> dict:
    """A COCO dataset dict from torchvision targets (``masks`` (K, H, W), ``labels``, ``image_id``,
    optionally ``keypoints`` (K, P, 3)) and the ``(H, W)`` of each image; ``class_names[0]`` is the
    background and is left out. The area (OKS's object scale too) is the mask's pixel count."""
    images, annotations = [], []
    for target, (height, width) in zip(targets, sizes):
        image_id = int(target["image_id"])
        images.append({"id": image_id, "height": int(height), "width": int(width),
                       "file_name": str(target.get("name", image_id))})
        masks = _numpy(target["masks"]).astype(np.uint8)
        points = _numpy(target["keypoints"]) if "keypoints" in target else [None] * len(masks)
        for rle, label, box, kps in zip(coco_rle(masks), _numpy(target["labels"]), _xywh(_numpy(target["boxes"])),
                                        points):
            # ids from 1: COCOeval takes a matched id of 0 for "unmatched".
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "segmentation": rle, "area": float(masks_area(rle)), "bbox": box, "iscrowd": 0,
                                **(_keypoint_fields(kps) if kps is not None else {})})
    categories = [{"id": k, "name": name} for k, name in enumerate(class_names) if k > 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def masks_area(rle: dict) -> float:
    """Pixel area of one RLE mask."""
    mask_utils = require("pycocotools.mask", "COCO evaluation")

    return float(mask_utils.area(rle))


def coco_results(image_id: int, boxes, labels, scores, masks, *, mask_threshold: float = 0.5,
                 keypoints=None, keypoint_scores=None) -> list[dict]:
    """COCO result records of one image: ``masks`` ``(D, H, W)`` probabilities, binarised at
    ``> mask_threshold``; each record has both ``bbox`` and an RLE ``segmentation``, and with
    ``keypoints`` ``(D, P, 2+)`` also ``keypoints`` ``[x1, y1, s1, ...]``, ``s`` the ``(D, P)``
    ``keypoint_scores`` (1 if not given; COCOeval reads only x and y)."""
    masks = _numpy(masks) > mask_threshold
    records = [{"image_id": int(image_id), "category_id": int(label), "score": float(score), "bbox": box,
                "segmentation": rle}
               for rle, label, score, box in zip(coco_rle(masks), _numpy(labels), _numpy(scores), _xywh(_numpy(boxes)))]
    if keypoints is not None:
        points = _numpy(keypoints).astype(np.float64)[..., :2]
        point_scores = (np.ones(points.shape[:2]) if keypoint_scores is None
                        else _numpy(keypoint_scores).astype(np.float64).reshape(points.shape[:2]))
        for record, xy, sc in zip(records, points, point_scores):
            record["keypoints"] = [float(v) for v in np.concatenate([xy, sc[:, None]], axis=1).ravel()]
    return records


def _cocoeval(ground_truth: dict, results: list[dict], iou_type: str, *, max_detections: int = 100,
              sigmas: Sequence[float] | None = None):
    """pycocotools' ``COCOeval`` of ``results`` against ``ground_truth`` (COCO dicts), evaluated,
    accumulated and summarised: the one AP routine behind :class:`CocoMaskAP` and :func:`coco_evaluate`.

    Each evaluation sees only its own geometry: ``loadRes`` would otherwise take the box area for
    segm records too (detectron2 drops the other key the same way); keypoint records keep their
    box, whose area decides their size range. No results at all is an empty result set (``loadRes``
    refuses an empty list). ``max_detections`` is the largest of COCO's ``maxDets`` (keypoints: 20,
    COCO's fixed value); ``sigmas`` the per-keypoint OKS sigmas (default COCO's 17).
    """
    _, COCO, COCOeval = _pycocotools()
    drop = {"bbox": ("segmentation", "keypoints"), "segm": ("bbox", "keypoints"), "keypoints": ("segmentation",)}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports with print()
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)
        gt.createIndex()
        if results:
            dt = gt.loadRes([{k: v for k, v in r.items() if k not in drop[iou_type]} for r in copy.deepcopy(results)])
        else:
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType=iou_type)
        if iou_type == "keypoints":
            if sigmas is not None:
                evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        else:
            evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _stats(evaluator, iou_type: str) -> dict[str, float]:
    names = KEYPOINT_STATS if iou_type == "keypoints" else STATS
    return {name: (math.nan if v < 0 else float(v)) for name, v in zip(names, evaluator.stats)}


def coco_evaluate(ground_truth: dict, results: list[dict], *, iou_types: tuple[str, ...] = ("bbox", "segm"),
                  sigmas: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
    """``{"bbox": {AP, AP50, ...}, "segm": {...}}`` (and ``"keypoints": {AP, AP50, AP75, APm, APl}``,
    OKS AP with per-keypoint ``sigmas``, when asked) from pycocotools' COCOeval (:func:`_cocoeval`).

    Values are in 0..1; NaN where COCO reports -1 (no ground truth in that size range).
    With no detections at all every AP is 0.
    """
    scores: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if not results:
            scores[iou_type] = {name: 0.0 for name in (KEYPOINT_STATS if iou_type == "keypoints" else STATS)}
            continue
        scores[iou_type] = _stats(_cocoeval(ground_truth, results, iou_type, sigmas=sigmas), iou_type)
    return scores
