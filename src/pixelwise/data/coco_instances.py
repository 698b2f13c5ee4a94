"""COCO instances for the Mask R-CNN engine (``dataset: coco_instances``).

Same on-disk layout and ``data.args`` (``ann_file``, ``image_dir``, ``skip_empty``) as the
semantic ``coco`` reader (:mod:`pixelwise.data.coco`); the samples go through an
:class:`~pixelwise.data.instances.InstanceTransform`, so training gets the zoom and flip
augmentation of the instance engine and boxes are recomputed from the augmented masks.
Crowd annotations are left out of the targets (COCO's own evaluation ignores them too).
``data.num_classes`` must be the number of categories plus one (background).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..registry import DATASETS, register
from .coco import CocoIndex, _paths, _select
from .instances import InstanceTransform

__all__ = ["CocoInstanceSamples"]


class CocoInstanceSamples(Dataset):
    """``(image (3, H, W) in 0..1, torchvision target)`` per COCO image, via ``transform``."""

    def __init__(self, index: CocoIndex, *, transform: InstanceTransform, skip_empty: bool = False) -> None:
        self.index, self.transform = index, transform
        self.class_names = list(index.class_names)
        self.images = _select(index, skip_empty, keep_crowd_only=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict]:
        info = self.images[i]
        image = self.index.load_image(info)
        anns = [a for a in self.index.anns[int(info["id"])] if not a.get("iscrowd", 0)]
        height, width = image.shape[:2]
        masks = (np.stack([self.index.mask_of(a, info) for a in anns]) if anns
                 else np.zeros((0, height, width), dtype=np.uint8))
        labels = np.array([self.index.label_of[int(a["category_id"])] for a in anns], dtype=np.int64)
        name = str(info["file_name"]).rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return self.transform(image, masks, labels, name=name, image_id=int(info["id"]))


@register(DATASETS, "coco_instances")
def build_coco_instances(cfg, split: str, *, train: bool, transform: Callable | None) -> CocoInstanceSamples:
    """Registry builder (``cfg`` is a :class:`pixelwise.config.DataCfg`)."""
    known = {"ann_file", "image_dir", "skip_empty"}
    unknown = sorted(set(cfg.args) - known)
    if unknown:
        raise DataError(f"unknown data.args {unknown} for dataset 'coco_instances'; valid: {sorted(known)}")
    index = CocoIndex(*_paths(cfg, split))
    if cfg.num_classes != len(index.class_names):
        raise ConfigError(f"data.num_classes is {cfg.num_classes} but {str(index.ann_file)!r} has "
                          f"{len(index.class_names) - 1} categories; set data.num_classes="
                          f"{len(index.class_names)} (background included)")
    if not isinstance(transform, InstanceTransform):
        transform = InstanceTransform(train=train and cfg.augment != "none")
    return CocoInstanceSamples(index, transform=transform, skip_empty=bool(cfg.args.get("skip_empty", False)))
