"""Weakly supervised segmentation from bounding boxes (BoxSup, ICCV 2015; Simple Does It, CVPR 2017).

- :mod:`pixelwise.recipes.weak.boxes`: boxes from masks, initial pseudo-masks (filled / GrabCut,
  optionally with ignore regions) and the box-constrained refinement rule.
- :mod:`pixelwise.recipes.weak.train`: the train → predict → refine loop, :func:`train_from_boxes`.
"""

from .boxes import PSEUDO_MODES, box_object_masks, boxes_from_mask, paint_boxes, pseudo_mask, refine_pseudo_mask
from .train import BoxTrainingResult, fit, predict, pseudo_label_scores, synthetic_arrays, train_from_boxes

__all__ = [
    "PSEUDO_MODES",
    "BoxTrainingResult",
    "box_object_masks",
    "boxes_from_mask",
    "fit",
    "paint_boxes",
    "predict",
    "pseudo_label_scores",
    "pseudo_mask",
    "refine_pseudo_mask",
    "synthetic_arrays",
    "train_from_boxes",
]
