"""Weakly supervised semantic segmentation from bounding boxes.

Two papers, one recipe:

- BoxSup (Dai, He & Sun, "BoxSup: Exploiting Bounding Boxes to Supervise Convolutional
  Networks for Semantic Segmentation", ICCV 2015): start from candidate masks inside the
  boxes, train, let the network's own predictions update the masks, repeat.
- Simple Does It (Khoreva, Benenson, Hosang, Hein & Schiele, "Simple Does It: Weakly
  Supervised Instance and Semantic Segmentation", CVPR 2017): the box *is* a good first
  label (filled rectangles, or GrabCut inside the rectangle), parts of a box can be marked
  "ignore", and each recursive round keeps only predictions that agree with the box and
  resets a box's label to its initial one when too little survives.

Box format everywhere: ``int64 (K, 5)`` rows ``[x0, y0, x1, y1, class]`` with *exclusive*
``x1, y1`` (``mask[y0:y1, x0:x1]`` is the box), so area is ``(x1 - x0) * (y1 - y0)``.

Pseudo-masks are ``int64 (H, W)``: a class in ``0..C-1`` (0 = background) or
``ignore_index`` (255) for "unknown, do not train on it". The rule used to draw several
boxes into one mask, shared by every function here: first every box writes its
non-object pixels (background or ignore), then object pixels are painted from the largest
box to the smallest, so an object pixel is never overwritten by another box's background
and a small object in front of a big box stays visible (Simple Does It: "smaller boxes on
top").

The training side (train, predict, refine, repeat) is in :mod:`pixelwise.recipes.weak.train`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ...errors import DataError, PixelwiseError

__all__ = [
    "PSEUDO_MODES",
    "box_object_masks",
    "boxes_from_mask",
    "paint_boxes",
    "pseudo_mask",
    "refine_pseudo_mask",
]

IGNORE = 255
# filled / grabcut: everything inside the box that is not the object is background;
# *-ignore: it is ``ignore_index`` instead (Simple Does It's Box^i / GrabCut^i idea).
PSEUDO_MODES: tuple[str, ...] = ("filled", "filled-ignore", "grabcut", "grabcut-ignore")


def boxes_from_mask(mask: np.ndarray, *, ignore_index: int = IGNORE, min_area: int = 1,
                    connectivity: int = 8) -> np.ndarray:
    """Bounding boxes of every connected component of every foreground class.

    This is how box annotations are simulated from a dense mask: one box per 8-connected
    (or 4-connected) blob per class, background (0) and ``ignore_index`` skipped.

    Args:
        mask: ``(H, W)`` integer labels.
        ignore_index: label that gets no box.
        min_area: components with fewer pixels are dropped (annotators skip specks).
        connectivity: 4 or 8.

    Returns:
        ``int64 (K, 5)``: ``[x0, y0, x1, y1, class]``, exclusive ``x1, y1``, sorted by class
        then by ``y0, x0``.
    """
    if mask.ndim != 2:
        raise DataError(f"boxes_from_mask: mask must be (H, W), got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise PixelwiseError(f"boxes_from_mask: connectivity must be 4 or 8, got {connectivity}")
    rows: list[list[int]] = []
    for cls in np.unique(mask):
        if cls == 0 or cls == ignore_index:
            continue
        if cls < 0:
            raise DataError(f"boxes_from_mask: negative label {cls} in the mask; labels must be >= 0")
        binary = (mask == cls).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=connectivity)
        for x, y, w, h, area in stats[1:count]:  # row 0 is the background of `binary`
            if area >= min_area:
                rows.append([int(x), int(y), int(x + w), int(y + h), int(cls)])
    boxes = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return boxes[np.lexsort((boxes[:, 0], boxes[:, 1], boxes[:, 4]))] if len(boxes) else boxes


def _check_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 5)
    bad = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height) \
        | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]) | (boxes[:, 4] < 1)
    if bad.any():
        raise DataError(f"box {boxes[bad][0].tolist()} is empty, outside the {height}x{width} image or has "
                        f"class < 1; boxes are [x0, y0, x1, y1, class] with exclusive x1, y1 and class >= 1")
    return boxes


def paint_boxes(boxes: np.ndarray, objects: Sequence[np.ndarray], height: int, width: int, *,
                uncertain: str = "background", ignore_index: int = IGNORE) -> np.ndarray:
    """Draw per-box object masks into one ``(H, W)`` int64 label map.

    Args:
        boxes: ``(K, 5)`` boxes.
        objects: ``K`` boolean crops, ``objects[k]`` of shape ``(y1 - y0, x1 - x0)``: which
            pixels of box ``k`` belong to its object.
        uncertain: what the box's non-object pixels become: ``"background"`` or ``"ignore"``.

    Pixels outside every box are background. Object pixels win over any box's non-object
    pixels, and smaller boxes are painted over larger ones.
    """
    if uncertain not in ("background", "ignore"):
        raise PixelwiseError(f"uncertain must be 'background' or 'ignore', got {uncertain!r}")
    boxes = _check_boxes(boxes, height, width)
    out = np.zeros((height, width), dtype=np.int64)
    if uncertain == "ignore":
        for (x0, y0, x1, y1, _), obj in zip(boxes, objects):
            out[y0:y1, x0:x1][~obj] = ignore_index
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for k in np.argsort(-areas, kind="stable"):
        x0, y0, x1, y1, cls = boxes[k]
        out[y0:y1, x0:x1][objects[k]] = cls
    return out


def _inner(h: int, w: int, inner_fraction: float) -> np.ndarray:
    """Boolean ``(h, w)``: a centred rectangle covering about ``inner_fraction`` of the box."""
    scale = np.sqrt(inner_fraction)
    ih, iw = max(1, round(h * scale)), max(1, round(w * scale))
    obj = np.zeros((h, w), dtype=bool)
    top, left = (h - ih) // 2, (w - iw) // 2
    obj[top:top + ih, left:left + iw] = True
    return obj


def _grabcut(image: np.ndarray, box: np.ndarray, *, iterations: int, min_fraction: float, seed: int) -> np.ndarray:
    """GrabCut foreground inside ``box`` (boolean crop), or the whole box if it finds too little."""
    x0, y0, x1, y1, _ = (int(v) for v in box)
    h, w = y1 - y0, x1 - x0
    full = np.ones((h, w), dtype=bool)
    height, width = image.shape[:2]
    # GrabCut needs background samples outside the rectangle and a few pixels inside.
    if h < 3 or w < 3 or (x0 == 0 and y0 == 0 and x1 == width and y1 == height):
        return full
    labels = np.zeros((height, width), dtype=np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)  # GrabCut's GMM initialisation uses OpenCV's global RNG
    try:
        cv2.grabCut(image, labels, (x0, y0, w, h), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return full  # degenerate colour statistics (e.g. a flat image): keep the box
    crop = labels[y0:y1, x0:x1]
    obj = (crop == cv2.GC_FGD) | (crop == cv2.GC_PR_FGD)
    # Simple Does It: an almost empty GrabCut result is a failure, the box is the better label.
    return obj if obj.sum() >= min_fraction * h * w else full


def box_object_masks(image: np.ndarray | None, boxes: np.ndarray, *, mode: str = "grabcut",
                     inner_fraction: float = 0.5, grabcut_iterations: int = 5,
                     grabcut_min_fraction: float = 0.15, seed: int = 0) -> list[np.ndarray]:
    """Initial per-box object masks (boolean crops), before painting.

    Args:
        image: ``(H, W, 3)`` uint8 RGB; needed for the grabcut modes only.
        boxes: ``(K, 5)`` boxes.
        mode: one of :data:`PSEUDO_MODES`. ``filled``: the whole box. ``filled-ignore``: a
            centred rectangle with ``inner_fraction`` of the box area (the ring around it
            becomes ignore when painted with ``uncertain="ignore"``). ``grabcut`` /
            ``grabcut-ignore``: ``cv2.grabCut`` initialised with the box rectangle,
            intersected with the box; if it keeps less than ``grabcut_min_fraction`` of the
            box area the whole box is used instead.
    """
    if mode not in PSEUDO_MODES:
        raise PixelwiseError(f"pseudo-mask mode {mode!r} is unknown; choose one of {PSEUDO_MODES}")
    if not 0.0 < inner_fraction <= 1.0:
        raise PixelwiseError(f"inner_fraction must be in (0, 1], got {inner_fraction}")
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 5)
    sizes = [(int(b[3] - b[1]), int(b[2] - b[0])) for b in boxes]
    if mode == "filled":
        return [np.ones(s, dtype=bool) for s in sizes]
    if mode == "filled-ignore":
        return [_inner(h, w, inner_fraction) for h, w in sizes]
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"GrabCut needs the (H, W, 3) uint8 image, got "
                        f"{None if image is None else (image.shape, image.dtype)}")
    bgr = np.ascontiguousarray(image[..., ::-1])
    return [_grabcut(bgr, b, iterations=grabcut_iterations, min_fraction=grabcut_min_fraction, seed=seed + k)
            for k, b in enumerate(boxes)]


def pseudo_mask(image: np.ndarray | None, boxes: np.ndarray, *, mode: str = "grabcut", height: int | None = None,
                width: int | None = None, inner_fraction: float = 0.5, grabcut_iterations: int = 5,
                grabcut_min_fraction: float = 0.15, ignore_index: int = IGNORE, seed: int = 0) -> np.ndarray:
    """An initial ``(H, W)`` int64 training label from boxes (see :func:`box_object_masks`).

    ``height``/``width`` default to the image's; give them when ``image`` is None (filled modes).
    """
    if image is not None:
        height, width = image.shape[:2]
    if height is None or width is None:
        raise PixelwiseError("pseudo_mask: pass the image or both height and width")
    objects = box_object_masks(image, boxes, mode=mode, inner_fraction=inner_fraction,
                               grabcut_iterations=grabcut_iterations,
                               grabcut_min_fraction=grabcut_min_fraction, seed=seed)
    uncertain = "ignore" if mode.endswith("-ignore") else "background"
    return paint_boxes(boxes, objects, height, width, uncertain=uncertain, ignore_index=ignore_index)


def refine_pseudo_mask(prediction: np.ndarray, boxes: np.ndarray, initial: Sequence[np.ndarray], *,
                       min_fraction: float = 0.2, uncertain: str = "background",
                       ignore_index: int = IGNORE) -> tuple[np.ndarray, int]:
    """One Simple Does It / BoxSup update of a pseudo-mask from the network's prediction.

    Outside every box the label is background. Inside box ``k`` of class ``c`` the pixels the
    network predicts as ``c`` keep ``c``; the others become ``uncertain`` (background or
    ignore). If fewer than ``min_fraction`` of the box's pixels survive, the box goes back
    to its initial object mask ``initial[k]`` (the prediction lost the object).

    Args:
        prediction: ``(H, W)`` integer argmax of the network on the training image.
        boxes: ``(K, 5)`` boxes.
        initial: the ``K`` boolean crops from :func:`box_object_masks`.

    Returns:
        ``(pseudo-mask (H, W) int64, number of boxes that were reset)``.
    """
    height, width = prediction.shape
    boxes = _check_boxes(boxes, height, width)
    if len(initial) != len(boxes):
        raise PixelwiseError(f"refine_pseudo_mask: {len(boxes)} boxes but {len(initial)} initial masks")
    objects, resets = [], 0
    for (x0, y0, x1, y1, cls), start in zip(boxes, initial):
        keep = prediction[y0:y1, x0:x1] == cls
        if keep.sum() < min_fraction * keep.size:
            keep, resets = start, resets + 1
        objects.append(keep)
    return paint_boxes(boxes, objects, height, width, uncertain=uncertain, ignore_index=ignore_index), resets
