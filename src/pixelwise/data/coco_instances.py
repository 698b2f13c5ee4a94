"""COCO instances and person keypoints for the Mask R-CNN engine (``dataset: coco_instances``,
``dataset: coco_keypoints``).

Same on-disk layout and ``data.args`` (``ann_file``, ``image_dir``, ``skip_empty``) as the
semantic ``coco`` reader (:mod:`pixelwise.data.coco`); the samples go through an
:class:`~pixelwise.data.instances.InstanceTransform`, so training gets the zoom and flip
augmentation of the instance engine and boxes are recomputed from the augmented masks.
Crowd annotations are left out of the targets (COCO's own evaluation ignores them too).
``data.num_classes`` must be the number of categories plus one (background).

``coco_keypoints`` reads COCO's keypoint files (default ``annotations/person_keypoints_{split}2017.json``):
each annotation's ``keypoints`` ``[x1, y1, v1, ...]`` becomes a ``(P, 3)`` row of the target's
``"keypoints"`` ``(K, P, 3)``; the keypoint names and ``skeleton`` come from the category (every
category with keypoints must have the same names; annotations of other categories get
unlabelled points). COCO stores ``x, y`` in continuous pixel coordinates, as pixelwise does.
Extra ``data.args``: ``keypoint_sigmas`` (OKS sigmas, needed unless the names are COCO's 17 person
keypoints) and ``flip_pairs`` (pairs of names or indices that swap in a flip; default: names
that differ by ``left``/``right``). An annotation with no segmentation gets its ``bbox`` filled
as its mask (Mask R-CNN needs one), so box-and-keypoint datasets train too.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .coco import CocoIndex, _paths, _select
from .instances import InstanceTransform
from .keypoints import KeypointSpec
from .reader import reader

__all__ = ["CocoInstanceSamples", "coco_keypoint_spec"]

KEYPOINTS_ANN_FILE = "annotations/person_keypoints_{split}2017.json"


class CocoInstanceSamples(Dataset):
    """``(image (3, H, W) in 0..1, torchvision target)`` per COCO image, via ``transform``;
    with a ``keypoint_spec`` the targets also get ``"keypoints"`` ``(K, P, 3)``."""

    def __init__(self, index: CocoIndex, *, transform: InstanceTransform, skip_empty: bool = False,
                 keypoint_spec: KeypointSpec | None = None) -> None:
        self.index, self.transform, self.keypoint_spec = index, transform, keypoint_spec
        self.class_names = list(index.class_names)
        self.images = _select(index, skip_empty, keep_crowd_only=False)

    def __len__(self) -> int:
        return len(self.images)

    def _mask(self, ann: dict, info: dict) -> np.ndarray:
        if self.keypoint_spec is not None and not ann.get("segmentation") and "bbox" in ann:
            mask = np.zeros((int(info["height"]), int(info["width"])), dtype=np.uint8)
            x, y, w, h = (float(v) for v in ann["bbox"])
            mask[max(0, round(y)):max(0, round(y + h)), max(0, round(x)):max(0, round(x + w))] = 1
            return mask
        return self.index.mask_of(ann, info)

    def _keypoints(self, ann: dict, info: dict) -> np.ndarray:
        count = self.keypoint_spec.count
        values = ann.get("keypoints")
        if values is None:
            return np.zeros((count, 3), dtype=np.float32)
        if len(values) != 3 * count:
            raise DataError(f"{str(self.index.ann_file)!r} annotation id {ann.get('id')} (image {info['file_name']}) "
                            f"has {len(values)} keypoint values; its category has {count} keypoints, so 3 x "
                            f"{count} = {3 * count} values [x, y, v, ...] are expected")
        points = np.asarray(values, dtype=np.float32).reshape(count, 3)
        points[points[:, 2] <= 0] = 0.0  # unlabelled: no position
        return points

    def __getitem__(self, i: int) -> tuple[Tensor, dict]:
        info = self.images[i]
        image = self.index.load_image(info)
        anns = [a for a in self.index.anns[int(info["id"])] if not a.get("iscrowd", 0)]
        height, width = image.shape[:2]
        masks = (np.stack([self._mask(a, info) for a in anns]) if anns
                 else np.zeros((0, height, width), dtype=np.uint8))
        labels = np.array([self.index.label_of[int(a["category_id"])] for a in anns], dtype=np.int64)
        name = str(info["file_name"]).rsplit("/", 1)[-1].rsplit(".", 1)[0]
        keypoints = None
        if self.keypoint_spec is not None:
            keypoints = np.stack([self._keypoints(a, info) for a in anns]) if anns else \
                np.zeros((0, self.keypoint_spec.count, 3), dtype=np.float32)
        return self.transform(image, masks, labels, name=name, image_id=int(info["id"]), keypoints=keypoints,
                              keypoint_spec=self.keypoint_spec)


def _index(cfg, split: str, known: set[str], dataset: str, **paths: str) -> CocoIndex:
    """The parsed file of ``split`` after the ``data.args`` check; ``data.num_classes`` must fit it."""
    unknown = sorted(set(cfg.args) - known)
    if unknown:
        raise DataError(f"unknown data.args {unknown} for dataset {dataset!r}; valid: {sorted(known)}")
    index = CocoIndex(*_paths(cfg, split, **paths))
    if cfg.num_classes != len(index.class_names):
        raise ConfigError(f"data.num_classes is {cfg.num_classes} but {str(index.ann_file)!r} has "
                          f"{len(index.class_names) - 1} categories; set data.num_classes="
                          f"{len(index.class_names)} (background included)")
    return index


@reader("coco_instances", preflight=False)
def build_coco_instances(cfg, split: str, *, train: bool, transform: Callable | None) -> CocoInstanceSamples:
    """Registry builder (``cfg`` is a :class:`pixelwise.config.DataCfg`)."""
    index = _index(cfg, split, {"ann_file", "image_dir", "skip_empty"}, "coco_instances")
    if not isinstance(transform, InstanceTransform):
        transform = InstanceTransform(train=train and cfg.augment != "none")
    return CocoInstanceSamples(index, transform=transform, skip_empty=bool(cfg.args.get("skip_empty", False)))


def coco_keypoint_spec(index: CocoIndex, *, sigmas: list | None = None, flip_pairs: list | None = None
                       ) -> KeypointSpec:
    """The keypoint set of a COCO keypoints file: names and skeleton (1-based in COCO) from its categories."""
    with_points = [c for c in index.categories if c.get("keypoints")]
    if not with_points:
        raise DataError(f"{str(index.ann_file)!r} has no category with 'keypoints' names; it is not a COCO "
                        f"keypoints file (person_keypoints_*.json): use dataset coco_instances for masks only")
    names = [str(n) for n in with_points[0]["keypoints"]]
    for c in with_points[1:]:
        if [str(n) for n in c["keypoints"]] != names:
            raise DataError(f"{str(index.ann_file)!r}: categories {with_points[0].get('name')!r} and "
                            f"{c.get('name')!r} have different keypoint names; one keypoint set per file is supported")
    skeleton = [[int(a) - 1, int(b) - 1] for a, b in with_points[0].get("skeleton", [])]
    return KeypointSpec.build(names, sigmas=sigmas, flip_pairs=flip_pairs, skeleton=skeleton,
                              where=f"dataset coco_keypoints ({str(index.ann_file)!r})")


@reader("coco_keypoints", preflight=False)
def build_coco_keypoints(cfg, split: str, *, train: bool, transform: Callable | None) -> CocoInstanceSamples:
    """Registry builder: COCO instances with their ``keypoints`` (``cfg`` is a :class:`pixelwise.config.DataCfg`)."""
    index = _index(cfg, split, {"ann_file", "image_dir", "skip_empty", "keypoint_sigmas", "flip_pairs"},
                   "coco_keypoints", ann_file=KEYPOINTS_ANN_FILE)
    spec = coco_keypoint_spec(index, sigmas=cfg.args.get("keypoint_sigmas"), flip_pairs=cfg.args.get("flip_pairs"))
    if not isinstance(transform, InstanceTransform):
        transform = InstanceTransform(train=train and cfg.augment != "none")
    return CocoInstanceSamples(index, transform=transform, skip_empty=bool(cfg.args.get("skip_empty", False)),
                               keypoint_spec=spec)
