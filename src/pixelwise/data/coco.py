"""COCO instance annotations (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014).

Layout (``dataset: coco``), the one the COCO 2017 download unpacks to::

    ROOT/annotations/instances_{split}2017.json
    ROOT/{split}2017/000000000139.jpg ...

Both paths are templates set by ``data.args.ann_file`` and ``data.args.image_dir``.
A segmentation in the JSON is a list of polygons ``[[x0, y0, x1, y1, ...], ...]``, an
uncompressed RLE ``{"size": [H, W], "counts": [int, ...]}`` or a compressed RLE
``{"size": [H, W], "counts": "string"}``; all three are rasterised with pycocotools.

Categories are mapped to contiguous labels in order of category id: the smallest id is
label 1, the largest label K; 0 is background (COCO's 80 categories have ids 1..90 with
gaps, so labels are not ids). Two readers share one parsed index:

- :class:`CocoSegmentation`, semantic masks. Painting rule, so overlaps are resolved the
  same way every time: crowd regions first (as ``ignore_index`` by default), then the
  non-crowd instances from the largest to the smallest pixel area, so a smaller object
  lying on a larger one stays visible; equal areas are painted in file order (later on top).
- :class:`CocoInstances`, torchvision detection targets for Mask R-CNN; crowd
  annotations are left out of the targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..optional import require
from .io import read_image
from .reader import reader
from .rle import coco_rle
from .transforms import make_sample

__all__ = ["CocoIndex", "CocoSegmentation", "CocoInstances", "collate_instances", "segmentation_to_mask",
           "coco_class_names", "CROWD_MODES"]

CROWD_MODES: tuple[str, ...] = ("ignore", "label", "background")
DEFAULT_ANN_FILE = "annotations/instances_{split}2017.json"
DEFAULT_IMAGE_DIR = "{split}2017"


def segmentation_to_mask(segm: Any, height: int, width: int, *, where: str = "segmentation") -> np.ndarray:
    """Rasterise one COCO segmentation (polygons, uncompressed or compressed RLE).

    Args:
        segm: the annotation's ``"segmentation"`` value.
        height, width: the image size from the JSON ``images`` entry.
        where: what to call the annotation in errors.

    Returns:
        ``(H, W)`` uint8 mask of 0/1.

    Raises:
        DataError: the segmentation is malformed or its RLE size is not the image size.
    """
    mask_utils = require("pycocotools.mask", "COCO annotations")
    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) > 0]
        for i, poly in enumerate(polygons):
            # frPyObjects reads a list of exactly 4 numbers as a box, and crashes on odd counts.
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise DataError(f"{where}: polygon {i} has {len(poly) if isinstance(poly, list) else poly!r} "
                                f"coordinates; a polygon is a flat list [x0, y0, x1, y1, ...] of at least 3 points")
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = [int(s) for s in segm["size"]]
        if size != [height, width]:
            raise DataError(f"{where}: RLE size {size} (H, W) differs from the image size [{height}, {width}]; "
                            f"the annotation belongs to another image or was made for a resized copy")
        counts = segm["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width or min(counts, default=0) < 0:
                raise DataError(f"{where}: uncompressed RLE counts add up to {sum(counts)}, but a {height}x{width} "
                                f"image has {height * width} pixels; the counts are corrupt")
            rle = mask_utils.frPyObjects(segm, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise DataError(f"{where}: RLE counts are a {type(counts).__name__}; expected a list or a string")
    else:
        raise DataError(f"{where}: segmentation is neither a polygon list nor an RLE dict with 'size' and 'counts'")
    try:
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)
    except Exception as err:  # pycocotools raises bare ValueError / TypeError on corrupt strings
        raise DataError(f"{where}: the RLE cannot be decoded ({type(err).__name__}: {err}); it is corrupt") from None


class CocoIndex:
    """A parsed COCO instances JSON: images, annotations per image and the label mapping.

    Attributes:
        category_ids: COCO category id of label ``1 + i`` (sorted ids).
        categories: the JSON ``categories`` entries in the same order.
        label_of: COCO category id -> contiguous label in ``1..K``.
        class_names: ``["background", name of label 1, ..., name of label K]``.
        images: the JSON ``images`` entries in id order.
        anns: image id -> its annotations in file order.
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path) -> None:
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        if not self.ann_file.is_file():
            raise DataError(f"COCO annotation file {str(self.ann_file)!r} does not exist; set data.args.ann_file "
                            f"(default {DEFAULT_ANN_FILE!r}, relative to data.root)")
        if not self.image_dir.is_dir():
            raise DataError(f"COCO image folder {str(self.image_dir)!r} does not exist; set data.args.image_dir "
                            f"(default {DEFAULT_IMAGE_DIR!r}, relative to data.root)")
        try:
            data = json.loads(self.ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"COCO annotation file {str(self.ann_file)!r} is not valid JSON ({err}); "
                            f"re-download or re-export it") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"COCO annotation file {str(self.ann_file)!r} has no {key!r} list; is it an "
                                f"instances file (captions and keypoints files are not segmentations)?")
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.categories = categories  # the JSON entries, in label order (keypoint names, skeleton)
        self.category_ids = [int(c["id"]) for c in categories]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.class_names = ["background"] + [str(c.get("name", f"category_{c['id']}")) for c in categories]
        self.images = sorted(data["images"], key=lambda im: int(im["id"]))
        self.anns: dict[int, list[dict]] = {int(im["id"]): [] for im in self.images}
        for ann in data["annotations"]:
            where = f"{str(self.ann_file)!r} annotation id {ann.get('id')}"
            if int(ann.get("image_id", -1)) not in self.anns:
                raise DataError(f"{where} refers to image id {ann.get('image_id')}, which is not in 'images'; "
                                f"remove the annotation or add the image")
            if int(ann.get("category_id", -1)) not in self.label_of:
                raise DataError(f"{where} has category id {ann.get('category_id')}, which is not in 'categories' "
                                f"(ids {self.category_ids[:10]}...); fix the category or add it")
            self.anns[int(ann["image_id"])].append(ann)

    def image_path(self, info: dict) -> Path:
        return self.image_dir / str(info["file_name"])

    def load_image(self, info: dict) -> np.ndarray:
        """Read the image of a JSON ``images`` entry, checking its size against the JSON."""
        path = self.image_path(info)
        image = read_image(path)
        if image.shape[:2] != (int(info["height"]), int(info["width"])):
            raise DataError(f"image {str(path)!r} is {image.shape[1]}x{image.shape[0]} (WxH) but "
                            f"{str(self.ann_file)!r} says {info['width']}x{info['height']}; the annotations do not "
                            f"belong to this file: use the original images")
        return image

    def mask_of(self, ann: dict, info: dict) -> np.ndarray:
        where = f"{str(self.ann_file)!r} annotation id {ann.get('id')} (image {info['file_name']})"
        return segmentation_to_mask(ann.get("segmentation", []), int(info["height"]), int(info["width"]), where=where)


def _select(index: CocoIndex, skip_empty: bool, keep_crowd_only: bool) -> list[dict]:
    """Images to use: all, or only those with at least one (non-crowd, unless allowed) annotation."""
    if not skip_empty:
        return list(index.images)
    return [im for im in index.images
            if any(keep_crowd_only or not a.get("iscrowd", 0) for a in index.anns[int(im["id"])])]


class CocoSegmentation(Dataset):
    """Semantic masks made from COCO instance annotations.

    Args:
        index: the parsed annotation file.
        num_classes: must be K + 1 (categories + background).
        ignore_index: label of crowd regions (``crowd="ignore"``).
        transform: ``(image uint8 (H, W, 3), mask int64 (H, W)) -> (image, mask)`` tensors.
        crowd: ``"ignore"`` (crowd pixels -> ``ignore_index``), ``"label"`` (painted as their
            category) or ``"background"`` (left as 0).
        skip_empty: drop images without any annotation.

    Each item is ``{"image": FloatTensor (3, H, W), "mask": LongTensor (H, W), "name": file stem}``.
    """

    def __init__(self, index: CocoIndex, *, num_classes: int, ignore_index: int = 255,
                 transform: Callable | None = None, crowd: str = "ignore", skip_empty: bool = False) -> None:
        if crowd not in CROWD_MODES:
            raise DataError(f"data.args.crowd is {crowd!r}; valid: {', '.join(CROWD_MODES)}")
        if num_classes != len(index.class_names):
            raise DataError(f"{str(index.ann_file)!r} has {len(index.class_names) - 1} categories, so the masks have "
                            f"{len(index.class_names)} classes with background, but data.num_classes is "
                            f"{num_classes}; set data.num_classes to {len(index.class_names)}")
        self.index, self.ignore_index, self.transform, self.crowd = index, ignore_index, transform, crowd
        self.num_classes = num_classes
        self.class_names = list(index.class_names)
        self.images = _select(index, skip_empty, keep_crowd_only=True)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 and mask ``(H, W)`` int64 of sample ``i``, painted by the module's rule."""
        info = self.images[i]
        image = self.index.load_image(info)
        mask = np.zeros(image.shape[:2], dtype=np.int64)
        crowds, things = [], []
        for order, ann in enumerate(self.index.anns[int(info["id"])]):
            m = self.index.mask_of(ann, info).astype(bool)
            (crowds if ann.get("iscrowd", 0) else things).append((int(m.sum()), order, ann, m))
        if self.crowd != "background":
            for _, _, ann, m in crowds:
                mask[m] = self.ignore_index if self.crowd == "ignore" else self.index.label_of[int(ann["category_id"])]
        # Largest first, so smaller objects end on top; ties keep file order (later on top).
        for _, _, ann, m in sorted(things, key=lambda t: (-t[0], t[1])):
            mask[m] = self.index.label_of[int(ann["category_id"])]
        return image, mask

    def __getitem__(self, i: int) -> dict:
        image, mask = self.load(i)
        return make_sample(image, mask, Path(str(self.images[i]["file_name"])).stem, self.transform)


class CocoInstances(Dataset):
    """COCO instances as torchvision detection samples, for Mask R-CNN.

    Each item is ``(image, target)``: ``image`` a FloatTensor ``(3, H, W)`` in 0..1 (not
    normalised: torchvision's detection models normalise inside), ``target`` a dict

    - ``"boxes"``: FloatTensor ``(K, 4)``, ``x1, y1, x2, y2`` in pixels (COCO's ``bbox``
      ``[x, y, w, h]`` converted and clipped to the image; boxes with no area are dropped),
    - ``"labels"``: Int64Tensor ``(K,)``, contiguous labels ``1..num categories``,
    - ``"masks"``: UInt8Tensor ``(K, H, W)`` of 0/1,
    - ``"iscrowd"``: Int64Tensor ``(K,)`` (all 0: crowd annotations are left out),
    - ``"area"``: FloatTensor ``(K,)``, the annotation's ``area`` (mask pixels if absent),
    - ``"image_id"``: int, the COCO image id,
    - ``"name"``: str, the file stem (as :mod:`pixelwise.data.instances`; torchvision ignores it).

    Args:
        index: the parsed annotation file.
        transforms: optional ``(image, target) -> (image, target)`` applied last.
        skip_empty: drop images that have no non-crowd annotation (Mask R-CNN trains fine
            on empty targets, but they only teach the background).
    """

    def __init__(self, index: CocoIndex, *, transforms: Callable | None = None, skip_empty: bool = False) -> None:
        self.index, self.transforms = index, transforms
        self.class_names = list(index.class_names)
        self.images = _select(index, skip_empty, keep_crowd_only=False)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        info = self.images[i]
        image = self.index.load_image(info)
        height, width = image.shape[:2]
        boxes, labels, masks, areas = [], [], [], []
        for ann in self.index.anns[int(info["id"])]:
            if ann.get("iscrowd", 0):
                continue
            m = self.index.mask_of(ann, info)
            if "bbox" in ann:
                x, y, w, h = (float(v) for v in ann["bbox"])
            else:
                mask_utils = require("pycocotools.mask", "COCO annotations")
                x, y, w, h = (float(v) for v in mask_utils.toBbox(coco_rle(m[None])[0]))
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x2 <= x1 or y2 <= y1:
                continue  # torchvision's box regression divides by the box size
            boxes.append((x1, y1, x2, y2))
            labels.append(self.index.label_of[int(ann["category_id"])])
            masks.append(m)
            areas.append(float(ann["area"]) if "area" in ann else float(m.sum()))
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.uint8),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
            "area": torch.tensor(areas, dtype=torch.float32),
            "image_id": int(info["id"]),
            "name": Path(str(info["file_name"])).stem,
        }
        image_t = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        if self.transforms is not None:
            image_t, target = self.transforms(image_t, target)
        return image_t, target


def collate_instances(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """DataLoader ``collate_fn`` for :class:`CocoInstances`: images and targets as two lists
    (torchvision detection models take lists, since images differ in size)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def _paths(cfg, split: str, *, ann_file: str = DEFAULT_ANN_FILE) -> tuple[Path, Path]:
    if cfg.root is None:
        raise DataError(f"data.dataset is {cfg.dataset!r} but data.root is not set; set it to the COCO folder "
                        f"holding {ann_file!r} and {DEFAULT_IMAGE_DIR!r}")
    args = cfg.args
    root = Path(cfg.root)
    return (root / str(args.get("ann_file", ann_file)).format(split=split),
            root / str(args.get("image_dir", DEFAULT_IMAGE_DIR)).format(split=split))


def coco_class_names(cfg) -> list[str]:
    """``["background", category names...]`` from the validation split's annotation file."""
    return CocoIndex(*_paths(cfg, cfg.val_split)).class_names


@reader("coco", class_names=coco_class_names)
def build_coco(cfg, split: str, *, train: bool, transform: Callable | None) -> CocoSegmentation:
    """Registry builder for semantic COCO. ``data.args``: ``ann_file``, ``image_dir`` (templates
    with ``{split}``), ``crowd`` (ignore | label | background), ``skip_empty``."""
    known = {"ann_file", "image_dir", "crowd", "skip_empty"}
    unknown = sorted(set(cfg.args) - known)
    if unknown:
        raise DataError(f"unknown data.args {unknown} for dataset 'coco'; valid: {sorted(known)}")
    return CocoSegmentation(CocoIndex(*_paths(cfg, split)), num_classes=cfg.num_classes,
                            ignore_index=cfg.ignore_index, transform=transform,
                            crowd=str(cfg.args.get("crowd", "ignore")),
                            skip_empty=bool(cfg.args.get("skip_empty", False)))
