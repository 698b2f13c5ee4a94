"""``InstancePredictor``: the instance task's predictor (``Task.predictor``), a Mask R-CNN
model with its class names, called on images like :class:`~pixelwise.infer.segmenter.Segmenter`.

    predictor = InstancePredictor.from_pretrained("runs/maskrcnn/best")
    det = predictor("photo.jpg")          # Instances: boxes, labels, scores, (D, H, W) mask probabilities
    predictor.class_names[int(det.labels[0])]

It holds what :func:`~pixelwise.infer.instance.detect_instances` needs; batch prediction
over files (overlays, COCO results) is :func:`~pixelwise.infer.instance.predict_instance_paths`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..models.maskrcnn import Instances
from ..registry import PREDICTORS, register
from ..tasks.instance import load_instance_model
from .instance import detect_instances
from .segmenter import ImageLike, to_rgb

__all__ = ["InstancePredictor"]


@register(PREDICTORS, "instance")
class InstancePredictor:
    """An instance model ready for images.

    Args:
        model: a pixelwise instance model (Mask R-CNN); put in eval mode on ``device``.
        class_names: one name per class, background first.
        device, amp: where and in which autocast dtype the model runs.
        config: the rest of the saved ``config.json`` (or the task's model meta).
    """

    task = "instance"

    def __init__(self, model: nn.Module, *, class_names: list[str], device: str | torch.device = "cpu",
                 amp: str = "none", config: dict[str, Any] | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_names = list(class_names)
        self.amp = amp
        self.config = dict(config or {})

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str | torch.device = "cpu",
                        amp: str = "none") -> InstancePredictor:
        """Load a saved instance model folder; a semantic one is refused with the loader to use."""
        model, config = load_instance_model(folder, device=device)
        return cls.from_model(model, config, device=device, amp=amp)

    @classmethod
    def from_model(cls, model: nn.Module, meta: dict[str, Any], *, device: str | torch.device = "cpu",
                   amp: str = "none") -> InstancePredictor:
        """A model in memory with the meta its folder would record (class names under ``data``)."""
        names = meta.get("data", {}).get("class_names") or [f"class_{i}" for i in range(model.num_classes)]
        return cls(model, class_names=names, device=device, amp=amp,
                   config={k: v for k, v in meta.items() if k != "model"})

    def __call__(self, image: ImageLike) -> Instances:
        """Every detection the model keeps for one image (array, PIL image or path), on ``device``:
        float32 ``boxes`` ``(D, 4)`` xyxy, ``labels``, ``scores`` and ``(D, H, W)`` mask probabilities."""
        return detect_instances(self.model, to_rgb(image), device=self.device, amp=self.amp)

    def __repr__(self) -> str:
        name = getattr(self.model, "config", {}).get("name", type(self.model).__name__)
        return f"InstancePredictor({name}, classes={self.class_names}, device={self.device}, amp={self.amp!r})"
