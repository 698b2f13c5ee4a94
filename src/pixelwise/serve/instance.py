"""Serving an instance model (Mask R-CNN) through the same app, gate and limits as a semantic one.

:class:`InstanceSegmenter` has the attributes and the call signature of
:class:`pixelwise.infer.segmenter.Segmenter` that the app reads (``model``, ``class_names``,
``palette``, ``mean``, ``std``, ``tile``, ``config``, ``__call__(image, tile=, overlap=,
tta=, crf=)``), plus ``task = "instance"``. Its result carries a label map built from the
detections (``instances_to_semantic``: each pixel takes the class of the highest-scoring
instance covering it), so the semantic parts of a response (per-class pixel counts, the
palette PNG, per-class RLE) mean the same for both kinds of model, and the detections
themselves, which :func:`instance_items` turns into JSON.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.io import default_palette
from ..data.rle import coco_rle
from ..errors import ConfigError
from ..infer.instance import detect_instances, instance_colours
from ..infer.segmenter import ImageLike, to_rgb
from ..postprocess.instances import instances_to_semantic
from ..tasks.instance import load_instance_model

__all__ = ["InstanceResult", "InstanceSegmenter", "instance_items"]

# Query options of a semantic model that an instance model has no use for.
SEMANTIC_ONLY = ("tile", "overlap", "tta", "crf")


@dataclass
class InstanceResult:
    """One image's detections above the score threshold, highest score first.

    Attributes:
        labels: ``(H, W)`` int64 label map made from the detections (0 where none covers a pixel).
        masks: ``(D, H, W)`` bool instance masks (mask probability above the mask threshold).
        boxes: ``(D, 4)`` float32 ``x1, y1, x2, y2`` in pixels.
        classes: ``(D,)`` int64 class index of each detection (1..C-1).
        scores: ``(D,)`` float32 confidences.
        class_names: the ``C`` class names (index 0 is the background).
        palette: ``(K, 3)`` uint8 class colours of the label map.
        keypoints: ``(D, P, 3)`` float32 ``x, y, score`` per keypoint (a keypoint model), else None.
    """

    labels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    palette: np.ndarray
    keypoints: np.ndarray | None = None


class InstanceSegmenter:
    """A saved instance model ready for serving, called like a :class:`~pixelwise.infer.segmenter.Segmenter`.

    Args:
        model: an instance model in eval mode (:func:`~pixelwise.tasks.instance.load_instance_model`).
        class_names: one name per class, background first.
        palette: ``(K, 3)`` uint8 label-map colours (default: the PASCAL VOC colour map).
        device, amp: where and in which autocast dtype the model runs.
        config: the rest of the saved ``config.json`` (its ``scores`` go into the model card).
        mask_threshold: a pixel belongs to an instance where its mask probability is above this.
    """

    task = "instance"
    tile = None  # Mask R-CNN resizes whole images itself; there is no sliding window

    def __init__(self, model: nn.Module, *, class_names: list[str], palette: np.ndarray | None = None,
                 device: str | torch.device = "cpu", amp: str = "none", config: dict[str, Any] | None = None,
                 mask_threshold: float = 0.5) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        self.palette = default_palette(max(256, len(self.class_names))) if palette is None else \
            np.asarray(palette, dtype=np.uint8)
        self.amp, self.mask_threshold = amp, mask_threshold
        self.config = dict(config or {})
        model_cfg = getattr(model, "config", {})
        self.mean, self.std = list(model_cfg.get("image_mean", [])), list(model_cfg.get("image_std", []))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str = "cpu", amp: str = "none"
                        ) -> InstanceSegmenter:
        """Load a saved instance model folder (``config.json`` + ``model.safetensors``)."""
        model, config = load_instance_model(folder, device=device)
        names = config.get("data", {}).get("class_names") or [f"class_{i}" for i in range(model.num_classes)]
        meta = {k: v for k, v in config.items() if k != "model"}
        return cls(model, class_names=names, palette=config.get("palette"), device=device, amp=amp, config=meta)

    @torch.no_grad()
    def __call__(self, image: ImageLike, *, tile: int | None = None, overlap: float = 0.25,
                 tta: bool | str | None = False, crf: bool = False, score_threshold: float = 0.5) -> InstanceResult:
        """Detect the instances in one image (array, PIL image or path) scoring at least ``score_threshold``.

        ``tile``, ``tta`` and ``crf`` exist for the semantic signature only: asking for any of
        them raises :class:`~pixelwise.errors.ConfigError` instead of being ignored.
        """
        asked = [name for name, value in (("tile", tile), ("tta", tta), ("crf", crf))
                 if value not in (None, False, "none")]
        if asked:
            raise ConfigError(f"{', '.join(asked)} apply to semantic models only; this is an instance model "
                              f"(Mask R-CNN sees the whole image, resized to its min_size / max_size)")
        det = detect_instances(self.model, to_rgb(image), device=self.device, amp=self.amp)
        labels = instances_to_semantic(det.masks, det.labels, det.scores, score_threshold=score_threshold,
                                       mask_threshold=self.mask_threshold)
        keep = det.scores >= score_threshold
        keypoints = None
        if det.keypoints is not None:
            keypoints = torch.cat([det.keypoints[keep][..., :2].float(), det.keypoint_scores[keep][..., None].float()],
                                  dim=-1).cpu().numpy()
        return InstanceResult(labels=labels.cpu().numpy(), masks=(det.masks[keep] > self.mask_threshold).cpu().numpy(),
                              boxes=det.boxes[keep].cpu().numpy(), classes=det.labels[keep].cpu().numpy(),
                              scores=det.scores[keep].cpu().numpy(), class_names=self.class_names,
                              palette=self.palette, keypoints=keypoints)

    def __repr__(self) -> str:
        name = getattr(self.model, "config", {}).get("name", type(self.model).__name__)
        return f"InstanceSegmenter({name}, classes={self.class_names}, device={self.device}, amp={self.amp!r})"


def instance_items(result: InstanceResult) -> list[dict[str, Any]]:
    """The detections as JSON records: class, score, ``box`` ``[x1, y1, x2, y2]``, mask ``area``,
    a display ``color``, the mask as COCO RLE (``{"size": [H, W], "counts": str}``, which
    ``pycocotools.mask.decode`` reads once ``counts`` is encoded to bytes) and, for a keypoint
    model, ``keypoints`` ``[x1, y1, score1, ...]`` (the model card's ``keypoints.names`` order)."""
    if len(result.masks) == 0:
        return []
    encoded = coco_rle(result.masks)
    colours = instance_colours(len(result.masks))
    names = result.class_names
    items = []
    for i, (rle, cls, score, box, mask) in enumerate(zip(encoded, result.classes, result.scores, result.boxes,
                                                         result.masks)):
        cls = int(cls)
        items.append({"id": i, "class_id": cls, "class_name": names[cls] if cls < len(names) else f"class_{cls}",
                      "score": float(score), "box": [float(v) for v in box], "area": int(mask.sum()),
                      "color": "#" + "".join(f"{int(c):02x}" for c in colours[i]),
                      "rle": rle})
        if result.keypoints is not None:
            items[-1]["keypoints"] = [float(v) for v in result.keypoints[i].ravel()]
    return items
