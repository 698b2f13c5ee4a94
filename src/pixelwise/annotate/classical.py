"""Proposals that need no model: GrabCut from a box, watershed from clicks and scribbles.

- A box alone: GrabCut initialised with the rectangle (Rother, Kolmogorov & Blake,
  "GrabCut: interactive foreground extraction using iterated graph cuts", SIGGRAPH 2004),
  as :func:`pixelwise.recipes.weak.boxes.box_object_masks` computes it for box supervision (which
  falls back to the whole box when GrabCut keeps almost nothing).
- A box with clicks or scribbles: GrabCut initialised from a mask, the paper's
  interactive step: outside the box is background, inside is "probably object", and the
  marked pixels are hard constraints (positive = object, negative = background).
- Clicks or scribbles without a box: marker-based watershed (Meyer, "Color image
  segmentation", 1992, as ``cv2.watershed``): positive marks flood as the object, negative
  marks as the background; when no negative mark is given a ring just outside the
  image is the background seed, so the object is what the positives reach before the border does.

Every function returns an ``(H, W)`` bool mask of the object.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..recipes.weak.boxes import box_object_masks
from .prompts import Prompt

__all__ = ["grabcut", "watershed", "classical_proposal"]


def grabcut(image: np.ndarray, prompt: Prompt, *, iterations: int = 5, seed: int = 0,
            prior: np.ndarray | None = None, sure: np.ndarray | None = None) -> np.ndarray:
    """GrabCut inside ``prompt.box`` (which must be set), with its clicks/scribbles as hard constraints.

    ``prior``: an ``(H, W)`` bool guess of the object (a model's proposal): inside the box it is
    "probably object" and the rest of the box "probably background", instead of the whole box
    being "probably object"; ``sure`` (bool, inside ``prior``) is fixed as object. GrabCut then
    corrects the guess's border from the image's colours, the paper's interactive step.
    """
    height, width = image.shape[:2]
    x0, y0, x1, y1 = prompt.box
    positive, negative = prompt.marks(height, width, positive=True), prompt.marks(height, width, positive=False)
    out = np.zeros((height, width), bool)
    guided = prior is not None and bool(prior[y0:y1, x0:x1].any())
    if not positive.any() and not negative.any() and not guided:
        box = np.array([[x0, y0, x1, y1, prompt.class_id]])
        out[y0:y1, x0:x1] = box_object_masks(image, box, mode="grabcut", grabcut_iterations=iterations, seed=seed)[0]
        return out
    labels = np.full((height, width), cv2.GC_BGD, np.uint8)
    labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    if guided:
        inside = np.zeros((height, width), bool)
        inside[y0:y1, x0:x1] = True
        labels[inside & ~prior] = cv2.GC_PR_BGD
        if sure is not None:
            labels[inside & sure & prior] = cv2.GC_FGD
    labels[negative] = cv2.GC_BGD
    labels[positive] = cv2.GC_FGD  # a click on the object wins over a box edge
    inbox = np.zeros((height, width), bool)
    inbox[y0:y1, x0:x1] = True
    if not (labels == cv2.GC_BGD).any():  # a box over the whole image leaves GrabCut no background sample
        return watershed(image, prompt) & inbox if positive.any() else inbox
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)  # GrabCut's GMM initialisation draws from OpenCV's global RNG
    try:
        cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate colour statistics (a flat image): the box minus the negatives
        return (inbox & ~negative) | positive
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def watershed(image: np.ndarray, prompt: Prompt) -> np.ndarray:
    """Marker watershed from the prompt's clicks and scribbles (positives needed)."""
    height, width = image.shape[:2]
    positive, negative = prompt.marks(height, width, positive=True), prompt.marks(height, width, positive=False)
    # cv2.watershed claims the outermost pixel ring for its own boundary marks, so work on a
    # copy padded by 2 pixels and seed the background (when no negative is given) on ring 1 of it.
    pad = 2
    markers = np.zeros((height + 2 * pad, width + 2 * pad), np.int32)
    if not negative.any():
        markers[[1, -2], 1:-1] = 1
        markers[1:-1, [1, -2]] = 1
    inner = (slice(pad, pad + height), slice(pad, pad + width))
    markers[inner][negative] = 1
    markers[inner][positive] = 2
    # A light blur keeps texture and sensor noise from stopping the flood inside the object.
    bgr = cv2.copyMakeBorder(np.ascontiguousarray(image[..., ::-1]), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    cv2.watershed(cv2.GaussianBlur(bgr, (3, 3), 0), markers)
    markers = markers[inner]
    obj = markers == 2
    # watershed leaves -1 on the lines between regions: give them to the object where they touch
    # it, so the mask is closed and as large as the region it encloses.
    boundary = markers == -1
    grown = cv2.dilate(obj.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return obj | (boundary & grown & ~negative)


def classical_proposal(image: np.ndarray, prompt: Prompt) -> tuple[np.ndarray, str]:
    """The model-free proposal for ``prompt`` and the method used (``"grabcut"`` or ``"watershed"``)."""
    if prompt.box is not None:
        return grabcut(image, prompt), "grabcut"
    return watershed(image, prompt), "watershed"
