"""Panoptic quality: PQ, SQ and RQ per class and for things and stuff (Kirillov et al., "Panoptic
Segmentation", CVPR 2019), with the conventions of the COCO panoptic evaluation (panopticapi).

A panoptic prediction of one image is a map of segment ids ``(H, W)`` plus, per segment id, its
category; the ground truth also marks segments ``iscrowd``. Id 0 is "void" (unlabelled) in the
ground truth and "nothing predicted" in a prediction. Per image:

- a predicted and a ground-truth segment of the same category **match** when their IoU is above
  0.5 (so each segment matches at most one), where the union leaves out the predicted pixels
  that fall on void ground truth;
- a matched pair is a true positive worth its IoU; an unmatched non-crowd ground-truth segment
  is a false negative; an unmatched predicted segment is a false positive **unless** more than
  half of it lies on void or on crowd regions of its category (it is then ignored).

Per category, ``PQ = sum(IoU of TPs) / (TP + FP/2 + FN/2) = SQ * RQ`` with
``SQ = sum(IoU)/TP`` and ``RQ = TP / (TP + FP/2 + FN/2)``; categories with no TP, FP or FN
anywhere are left out of the averages. :func:`evaluate_panoptic_files` reads the COCO panoptic
format (a JSON with ``annotations[].segments_info`` and one RGB PNG per image whose segment id
is ``R + 256 G + 256^2 B``) for ground truth and predictions alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["PanopticQuality", "rgb_to_id", "id_to_rgb", "evaluate_panoptic_files"]

VOID = 0
OFFSET = 1 << 32  # pairs (gt id, pred id) packed into one int64 for a single np.unique


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG ``(H, W, 3)`` uint8 -> segment ids ``(H, W)`` int64 (``R + 256 G + 256^2 B``)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise DataError(f"a COCO panoptic PNG is RGB (H, W, 3); got an array of shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids ``(H, W)`` -> the COCO panoptic PNG colours ``(H, W, 3)`` uint8."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 1 << 24:
        raise DataError("panoptic segment ids must be in [0, 2^24) to fit a COCO panoptic PNG")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


@dataclass
class _Counts:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass
class PanopticQuality:
    """Accumulates panoptic matches over images; :meth:`compute` gives PQ/SQ/RQ.

    Args:
        things: category ids of countable objects.
        stuff: category ids of amorphous regions (at most one segment per image, usually).
        names: optional category id -> name, for the per-class table.
    """

    things: Sequence[int]
    stuff: Sequence[int]
    names: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        overlap = set(self.things) & set(self.stuff)
        if overlap:
            raise ValueError(f"categories {sorted(overlap)} are listed both as things and as stuff")
        self.known = set(self.things) | set(self.stuff)
        self.counts: dict[int, _Counts] = {c: _Counts() for c in self.known}
        self.images = 0

    def update(self, pred_ids: np.ndarray, pred_segments: Iterable[Mapping[str, Any]], gt_ids: np.ndarray,
               gt_segments: Iterable[Mapping[str, Any]], *, image: str = "image") -> None:
        """Add one image.

        Args:
            pred_ids, gt_ids: ``(H, W)`` integer segment ids (0: void / nothing).
            pred_segments: ``[{"id", "category_id"}, ...]`` for the ids in ``pred_ids``.
            gt_segments: ``[{"id", "category_id", "iscrowd" (optional, 0)}, ...]``.
            image: its name, for error messages.
        """
        pred_ids, gt_ids = np.asarray(pred_ids, np.int64), np.asarray(gt_ids, np.int64)
        if pred_ids.shape != gt_ids.shape:
            raise DataError(f"{image}: prediction is {pred_ids.shape[:2]} but the ground truth is {gt_ids.shape[:2]}")
        gt = {int(s["id"]): (int(s["category_id"]), bool(s.get("iscrowd", 0))) for s in gt_segments}
        pred = {int(s["id"]): int(s["category_id"]) for s in pred_segments}
        for where, table in (("ground truth", {k: v[0] for k, v in gt.items()}), ("prediction", pred)):
            unknown = sorted({c for c in table.values() if c not in self.known})
            if unknown:
                raise DataError(f"{image}: {where} uses category id(s) {unknown} that are neither things nor stuff")
        pairs, counts = np.unique(gt_ids * OFFSET + pred_ids, return_counts=True)
        gt_of, pred_of = pairs // OFFSET, pairs % OFFSET
        area_gt: dict[int, int] = {}
        area_pred: dict[int, int] = {}
        for g, p, n in zip(gt_of.tolist(), pred_of.tolist(), counts.tolist()):
            area_gt[g] = area_gt.get(g, 0) + n
            area_pred[p] = area_pred.get(p, 0) + n
        for g in area_gt:
            if g != VOID and g not in gt:
                raise DataError(f"{image}: ground-truth segment id {g} is in the PNG but not in segments_info")
        for p in area_pred:
            if p != VOID and p not in pred:
                raise DataError(f"{image}: predicted segment id {p} is in the PNG but not in segments_info")
        for where, table, areas in (("ground-truth", gt, area_gt), ("predicted", pred, area_pred)):
            absent = sorted(k for k in table if k not in areas)
            if absent:
                raise DataError(f"{image}: {where} segment id(s) {absent} are in segments_info but not in the PNG")
        overlap = {(g, p): n for g, p, n in zip(gt_of.tolist(), pred_of.tolist(), counts.tolist())}
        matched_gt, matched_pred = set(), set()
        for (g, p), n in overlap.items():
            if g == VOID or p == VOID or gt[g][1] or gt[g][0] != pred[p]:
                continue
            union = area_pred[p] + area_gt[g] - n - overlap.get((VOID, p), 0)
            iou = n / union
            if iou > 0.5:
                entry = self.counts[pred[p]]
                entry.tp += 1
                entry.iou += iou
                matched_gt.add(g)
                matched_pred.add(p)
        crowd_of = {}  # category -> the image's crowd segment ids of it
        for g, (category, crowd) in gt.items():
            if crowd:
                crowd_of.setdefault(category, set()).add(g)
            elif g not in matched_gt:
                self.counts[category].fn += 1
        for p, category in pred.items():
            if p in matched_pred:
                continue
            ignored = overlap.get((VOID, p), 0) + sum(overlap.get((g, p), 0) for g in crowd_of.get(category, ()))
            if ignored / area_pred[p] > 0.5:
                continue
            self.counts[category].fp += 1
        self.images += 1

    def _average(self, categories: Iterable[int]) -> dict[str, float]:
        pq = sq = rq = 0.0
        n = 0
        for c in categories:
            k = self.counts[c]
            if k.tp + k.fp + k.fn == 0:
                continue
            n += 1
            sq_c = k.iou / k.tp if k.tp else 0.0
            rq_c = k.tp / (k.tp + 0.5 * k.fp + 0.5 * k.fn)
            pq, sq, rq = pq + sq_c * rq_c, sq + sq_c, rq + rq_c
        if n == 0:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}

    def compute(self) -> dict[str, Any]:
        """``{"all"|"things"|"stuff": {"pq", "sq", "rq", "n"}, "per_class": {id: {...}}, "images"}``
        (values 0..1; ``n``: categories in the average)."""
        per_class = {}
        for c in sorted(self.known):
            k = self.counts[c]
            denominator = k.tp + 0.5 * k.fp + 0.5 * k.fn
            per_class[c] = {"name": self.names.get(c, str(c)), "thing": c in set(self.things),
                            "pq": k.iou / denominator if denominator else float("nan"),
                            "sq": k.iou / k.tp if k.tp else (0.0 if denominator else float("nan")),
                            "rq": k.tp / denominator if denominator else float("nan"),
                            "tp": k.tp, "fp": k.fp, "fn": k.fn}
        return {"all": self._average(self.known), "things": self._average(self.things),
                "stuff": self._average(self.stuff), "per_class": per_class, "images": self.images}


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return rgb_to_id(np.asarray(im.convert("RGB")))
    except FileNotFoundError:
        raise DataError(f"panoptic PNG {str(path)!r} does not exist (named by file_name in the JSON)") from None
    except OSError as err:
        raise DataError(f"panoptic PNG {str(path)!r} cannot be read ({err})") from None


def evaluate_panoptic_files(gt_json: str | Path, gt_folder: str | Path, pred_json: str | Path,
                            pred_folder: str | Path) -> dict[str, Any]:
    """PQ of predictions in the COCO panoptic format against ground truth in the same format.

    Images are paired by ``image_id``; the categories (and which are things, ``isthing``) come
    from the ground truth's ``categories``. A ground-truth image without a prediction counts all
    its segments as false negatives. Returns :meth:`PanopticQuality.compute`'s dict."""
    gt_data = json.loads(Path(gt_json).read_text())
    pred_data = json.loads(Path(pred_json).read_text())
    categories = gt_data.get("categories")
    if not categories:
        raise DataError(f"{gt_json}: no 'categories' list; a COCO panoptic JSON names its categories with isthing")
    metric = PanopticQuality(things=[c["id"] for c in categories if c.get("isthing")],
                             stuff=[c["id"] for c in categories if not c.get("isthing")],
                             names={c["id"]: c.get("name", str(c["id"])) for c in categories})
    predictions = {a["image_id"]: a for a in pred_data.get("annotations", pred_data if isinstance(pred_data, list)
                                                            else [])}
    for ann in gt_data.get("annotations", []):
        gt_ids = _read_png(Path(gt_folder) / ann["file_name"])
        pred = predictions.get(ann["image_id"])
        if pred is None:
            pred_ids, segments = np.zeros_like(gt_ids), []
        else:
            pred_ids, segments = _read_png(Path(pred_folder) / pred["file_name"]), pred.get("segments_info", [])
        metric.update(pred_ids, segments, gt_ids, ann.get("segments_info", []), image=str(ann["file_name"]))
    return metric.compute()
