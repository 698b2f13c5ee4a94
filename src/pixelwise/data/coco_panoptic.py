"""COCO panoptic annotations (Kirillov et al., "Panoptic Segmentation", CVPR 2019) as semantic masks,
and the panoptic ground truth itself for :mod:`pixelwise.metrics.panoptic`.

Layout (``dataset: coco_panoptic``), the one COCO 2017's panoptic download unpacks to::

    ROOT/annotations/panoptic_{split}2017.json         images, annotations[].segments_info, categories
    ROOT/annotations/panoptic_{split}2017/NAME.png     segment ids as RGB: id = R + 256 G + 256^2 B
    ROOT/{split}2017/NAME.jpg

The three paths are templates (``data.args.ann_file``, ``png_dir``, ``image_dir``). Cityscapes'
panoptic conversion (cityscapesscripts' ``createPanopticImgs``) writes the same format; its images
sit in per-city folders, so an image that is not at ``image_dir/file_name`` is looked up by name
anywhere under ``image_dir``.

Semantic masks: the categories, in order of id, are the classes ``0 .. K-1`` (COCO: 133, things
and stuff; there is no background class), void pixels (id 0) are ``ignore_index``, and crowd
segments are labelled with their category (``data.args.crowd: ignore`` makes them void too).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError
from .io import read_image
from .reader import reader
from .transforms import make_sample

__all__ = ["PanopticIndex", "CocoPanopticSemantic", "panoptic_class_names"]

DEFAULTS = {"ann_file": "annotations/panoptic_{split}2017.json", "png_dir": "annotations/panoptic_{split}2017",
            "image_dir": "{split}2017"}


def _rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


class PanopticIndex:
    """A parsed COCO panoptic JSON with its PNG and image folders."""

    def __init__(self, ann_file: str | Path, png_dir: str | Path, image_dir: str | Path) -> None:
        self.ann_file, self.png_dir, self.image_dir = Path(ann_file), Path(png_dir), Path(image_dir)
        if not self.ann_file.is_file():
            raise DataError(f"COCO panoptic annotation file {str(self.ann_file)!r} does not exist; set data.root (or "
                            f"data.args.ann_file) to where panoptic_{{split}}2017.json is")
        try:
            data = json.loads(self.ann_file.read_text())
        except ValueError as err:
            raise DataError(f"{str(self.ann_file)!r} is not valid JSON ({err})") from None
        if not isinstance(data, dict) or "categories" not in data or "annotations" not in data:
            raise DataError(f"{str(self.ann_file)!r} has no 'categories' and 'annotations'; is it a COCO panoptic "
                            f"file (panoptic_*.json), not an instances file?")
        self.categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.label_of = {int(c["id"]): k for k, c in enumerate(self.categories)}
        self.class_names = [str(c.get("name", c["id"])) for c in self.categories]
        self.things = [int(c["id"]) for c in self.categories if c.get("isthing")]
        self.stuff = [int(c["id"]) for c in self.categories if not c.get("isthing")]
        images = {int(im["id"]): im for im in data.get("images", [])}
        self.annotations = sorted(data["annotations"], key=lambda a: str(a["file_name"]))
        self.image_info = {int(a["image_id"]): images.get(int(a["image_id"]), {}) for a in self.annotations}

    @cached_property
    def _by_name(self) -> dict[str, Path]:
        return {p.name: p for p in self.image_dir.rglob("*") if p.is_file()}

    def image_path(self, ann: dict) -> Path:
        """The image of an annotation: ``image_dir/file_name`` (from ``images``), else found by name below it."""
        name = self.image_info[int(ann["image_id"])].get("file_name") or Path(ann["file_name"]).with_suffix(".jpg").name
        path = self.image_dir / name
        if path.is_file():
            return path
        found = self._by_name.get(Path(name).name)
        if found is None:
            raise DataError(f"image {name!r} of {str(self.ann_file)!r} is neither at {str(path)!r} nor anywhere under "
                            f"{str(self.image_dir)!r}; set data.args.image_dir")
        return found

    def panoptic(self, ann: dict) -> tuple[np.ndarray, list[dict]]:
        """``(segment ids (H, W) int64, segments_info)`` of an annotation, checked against each other."""
        path = self.png_dir / str(ann["file_name"])
        if not path.is_file():
            raise DataError(f"panoptic PNG {str(path)!r} (file_name in {self.ann_file.name}) does not exist; set "
                            f"data.args.png_dir")
        rgb = read_image(path)
        ids = _rgb_to_id(rgb)
        segments = list(ann.get("segments_info", []))
        listed = {int(s["id"]) for s in segments}
        stray = sorted(set(np.unique(ids).tolist()) - listed - {0})
        if stray:
            raise DataError(f"{str(path)!r} holds segment id(s) {stray[:5]} that its segments_info does not list")
        unknown = sorted({int(s["category_id"]) for s in segments} - set(self.label_of))
        if unknown:
            raise DataError(f"{str(path)!r}: category id(s) {unknown} are not in the file's categories")
        return ids, segments


class CocoPanopticSemantic(Dataset):
    """COCO panoptic annotations as semantic samples (see the module docstring).

    Each item is ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": file stem}``.
    """

    def __init__(self, index: PanopticIndex, *, num_classes: int, ignore_index: int = 255,
                 transform: Callable | None = None, crowd: str = "label") -> None:
        if crowd not in ("label", "ignore"):
            raise DataError(f"data.args.crowd is {crowd!r} for coco_panoptic; valid: label, ignore")
        if num_classes != len(index.class_names):
            raise DataError(f"{str(index.ann_file)!r} has {len(index.class_names)} categories (things and stuff; void "
                            f"is ignore_index), but data.num_classes is {num_classes}; set data.num_classes to "
                            f"{len(index.class_names)}")
        self.index, self.ignore_index, self.transform, self.crowd = index, ignore_index, transform, crowd
        self.class_names = list(index.class_names)

    def __len__(self) -> int:
        return len(self.index.annotations)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 and semantic mask ``(H, W)`` int64 of sample ``i``."""
        ann = self.index.annotations[i]
        image = read_image(self.index.image_path(ann))
        ids, segments = self.index.panoptic(ann)
        if ids.shape != image.shape[:2]:
            raise DataError(f"{ann['file_name']}: the panoptic PNG is {ids.shape[1]}x{ids.shape[0]} but the image is "
                            f"{image.shape[1]}x{image.shape[0]}")
        lookup = {0: self.ignore_index}
        for s in segments:
            crowd = bool(s.get("iscrowd", 0)) and self.crowd == "ignore"
            lookup[int(s["id"])] = self.ignore_index if crowd else self.index.label_of[int(s["category_id"])]
        keys, inverse = np.unique(ids, return_inverse=True)
        mask = np.array([lookup[int(k)] for k in keys], np.int64)[inverse].reshape(ids.shape)
        return image, mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.load(i)
        return make_sample(image, mask, Path(str(self.index.annotations[i]["file_name"])).stem, self.transform)


def _index(cfg, split: str) -> PanopticIndex:
    if cfg.root is None:
        raise DataError("data.dataset is 'coco_panoptic' but data.root is not set; set it to the folder holding "
                        f"{DEFAULTS['ann_file']!r}")
    known = {"ann_file", "png_dir", "image_dir", "crowd"}
    unknown = sorted(set(cfg.args) - known)
    if unknown:
        raise DataError(f"unknown data.args {unknown} for dataset 'coco_panoptic'; valid: {sorted(known)}")
    root = Path(cfg.root)
    paths = [root / str(cfg.args.get(k, DEFAULTS[k])).format(split=split) for k in ("ann_file", "png_dir", "image_dir")]
    return PanopticIndex(*paths)


def panoptic_class_names(cfg) -> list[str]:
    """The category names (in id order) of the validation split's annotation file."""
    return _index(cfg, cfg.val_split).class_names


@reader("coco_panoptic", class_names=panoptic_class_names)
def build_coco_panoptic(cfg, split: str, *, train: bool, transform: Callable | None) -> CocoPanopticSemantic:
    """Registry builder: COCO-format panoptic annotations as semantic masks. ``data.args``:
    ``ann_file``, ``png_dir``, ``image_dir`` (templates with ``{split}``), ``crowd`` (label | ignore)."""
    return CocoPanopticSemantic(_index(cfg, split), num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                                transform=transform, crowd=str(cfg.args.get("crowd", "label")))

