"""Writing the labelled images out: LabelMe JSON, COCO with RLE masks, and a trainable folder dataset.

Each export reads back through pixelwise's own readers with exactly the saved masks:

- ``labelme``: ``OUT/NAME.json`` + a copy of the image beside it (``imagePath`` is the bare
  file name, as LabelMe itself writes), one ``"mask"`` shape per connected object (its
  bounding box corners and a base64 PNG of the crop), and ``OUT/labels.txt``
  (``__ignore__`` then the classes) for ``data.args.classes``. Read with ``dataset: labelme``.
- ``coco``: ``OUT/annotations.json`` + ``OUT/images/``, one annotation per connected object,
  ``segmentation`` a compressed RLE, category ``i`` = class ``i`` (background has none), so
  ``dataset: coco`` with ``args: {ann_file: annotations.json, image_dir: images}`` maps
  them back to the same class indices.
- ``folder``: ``OUT/<split>/images`` + ``OUT/<split>/masks`` and ``OUT/dataset.yaml``, a config
  for ``pixelwise check`` and ``pixelwise train`` (``dataset: folder``).

Objects are 8-connected components of one class, so an object split by an occluder becomes
two shapes / annotations; painting them back in any order gives the same mask, since no
two overlap. Every export is written to a temporary folder first and renamed into place.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

from ..data.rle import coco_rle
from ..optional import require
from .store import AnnotationStore

__all__ = ["FORMATS", "export_labelme", "export_coco", "export_folder", "objects_of", "folder_config"]

FORMATS: tuple[str, ...] = ("labelme", "coco", "folder")
_EIGHT = np.ones((3, 3), bool)


def objects_of(labels: np.ndarray) -> list[tuple[int, tuple[slice, slice], np.ndarray]]:
    """``(class, (rows, cols) slices of its bounding box, bool crop)`` per 8-connected object of
    every non-background class, by class then scan order."""
    out = []
    for cls in (int(c) for c in np.unique(labels) if c != 0):
        pieces, _ = ndimage.label(labels == cls, structure=_EIGHT)
        for index, box in enumerate(ndimage.find_objects(pieces), start=1):
            out.append((cls, box, pieces[box] == index))
    return out


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no second copy of the photos when the export is on the same disk
    except OSError:
        shutil.copy2(src, dst)


class _Staged:
    """A temporary folder that replaces ``out`` when the block ends without error."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        self.old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            if self.out.exists():
                self.out.rename(self.old)
            self.tmp.rename(self.out)
            shutil.rmtree(self.old, ignore_errors=True)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def export_labelme(store: AnnotationStore, out: str | Path, *, names: Iterable[str] | None = None) -> dict:
    """LabelMe JSON files of the labelled images (all, or ``names``) in ``out``; returns a summary."""
    names = list(store.labelled() if names is None else names)
    with _Staged(Path(out)) as tmp:
        (tmp / "labels.txt").write_text("__ignore__\n" + "\n".join(store.classes) + "\n")
        shapes_total = 0
        for name in names:
            entry, labels = store.entry(name), store.read_mask(name)
            height, width = labels.shape
            shapes = []
            for cls, (rows, cols), crop in objects_of(labels):
                shapes.append({"label": store.classes[cls], "points": [[cols.start, rows.start],
                                                                       [cols.stop - 1, rows.stop - 1]],
                               "group_id": None, "description": "", "shape_type": "mask", "flags": {},
                               "mask": base64.b64encode(_png(crop)).decode("ascii")})
            _link_or_copy(entry.path, tmp / entry.path.name)
            doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": entry.path.name,
                   "imageData": None, "imageHeight": height, "imageWidth": width}
            (tmp / f"{name}.json").write_text(json.dumps(doc))
            shapes_total += len(shapes)
    return {"format": "labelme", "path": str(out), "images": len(names), "shapes": shapes_total,
            "read_with": {"dataset": "labelme", "root": str(out), "args": {"classes": str(Path(out) / "labels.txt")},
                          "split": "all"}}


def export_coco(store: AnnotationStore, out: str | Path, *, names: Iterable[str] | None = None) -> dict:
    """A COCO instances file with RLE masks of the labelled images, plus the images, in ``out``."""

    require("pycocotools.mask", "the COCO export")  # before any work: name the missing extra first
    names = list(store.labelled() if names is None else names)
    images, annotations = [], []
    with _Staged(Path(out)) as tmp:
        for image_id, name in enumerate(names, start=1):
            entry, labels = store.entry(name), store.read_mask(name)
            height, width = labels.shape
            _link_or_copy(entry.path, tmp / "images" / entry.path.name)
            images.append({"id": image_id, "file_name": entry.path.name, "height": height, "width": width})
            for cls, (rows, cols), crop in objects_of(labels):
                full = np.zeros((1, height, width), np.uint8)
                full[0, rows, cols] = crop
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls,
                                    "segmentation": coco_rle(full)[0],
                                    "area": int(crop.sum()), "iscrowd": 0,
                                    "bbox": [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]})
        categories = [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(store.classes) if i > 0]
        doc = {"info": {"description": f"pixelwise annotate export of {store.root}"}, "images": images,
               "annotations": annotations, "categories": categories}
        (tmp / "annotations.json").write_text(json.dumps(doc))
    return {"format": "coco", "path": str(out), "images": len(images), "annotations": len(annotations),
            "read_with": {"dataset": "coco", "root": str(out),
                          "args": {"ann_file": "annotations.json", "image_dir": "images"}}}


def folder_config(store: AnnotationStore, root: str | Path, *, train_split: str = "train", val_split: str = "val",
                  extra: dict | None = None) -> dict:
    """A ``pixelwise train`` config (as a dict) for a folder export at ``root``."""
    config = {
        "model": {"name": "unet", "args": {"base_channels": 16, "depth": 4, "norm": "batch"}},
        "data": {"dataset": "folder", "root": str(root), "train_split": train_split, "val_split": val_split,
                 "num_classes": len(store.classes), "class_names": list(store.classes), "ignore_index": 255,
                 "augment": "none", "batch_size": 4, "num_workers": 0},
        "train": {"epochs": 20, "optimizer": "adamw", "lr": 0.003, "loss": [{"name": "ce", "weight": 1.0}],
                  "out_dir": str(Path(root) / "run"), "plots": False},
    }
    for section, values in (extra or {}).items():
        config[section] = {**config.get(section, {}), **values}
    return config


def export_folder(store: AnnotationStore, out: str | Path, *, splits: dict[str, list[str]] | None = None,
                  config: dict | None = None) -> dict:
    """The labelled images as a ``folder`` dataset (``OUT/<split>/images``, ``masks``) plus
    ``OUT/dataset.yaml``. ``splits`` maps split names to image names; by default every labelled
    image is in both ``train`` and ``val`` (so the config trains and validates as it is)."""
    out = Path(out)
    labelled = store.labelled()
    splits = splits or {"train": labelled, "val": labelled}
    with _Staged(out) as tmp:
        for split, names in splits.items():
            for name in names:
                entry = store.entry(name)
                _link_or_copy(entry.path, tmp / split / "images" / entry.path.name)
                _link_or_copy(store.mask_path(name), tmp / split / "masks" / f"{name}.png")
            (tmp / split / "images").mkdir(parents=True, exist_ok=True)
            (tmp / split / "masks").mkdir(parents=True, exist_ok=True)
        split_names = list(splits)
        cfg = config or folder_config(store, out, train_split=split_names[0], val_split=split_names[-1])
        (tmp / "dataset.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return {"format": "folder", "path": str(out), "config": str(out / "dataset.yaml"),
            "images": {split: len(names) for split, names in splits.items()}}
