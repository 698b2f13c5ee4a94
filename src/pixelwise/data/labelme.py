"""LabelMe JSON annotations (``labelme``), rasterised to semantic masks.

The format of the LabelMe annotation tool (Wada, ``labelme``, after Russell et al.,
"LabelMe: a database and web-based tool for image annotation", IJCV 2008): one
``NAME.json`` per image with ``shapes`` (``label``, ``points`` in pixel x/y,
``shape_type``), ``imagePath`` (relative to the JSON file) and optionally the image
itself as base64 ``imageData``.

``data.root`` is the folder of JSON files, either split into ``ROOT/<split>/*.json`` or
flat (``ROOT/*.json``), in which case ``train``/``val`` are a deterministic split (see
:func:`pairs.deterministic_split`; ``args.val_fraction``, ``args.seed``; ``all`` = every file).

``args.classes`` (a list, or the path of a ``labels.txt`` with one name per line) gives the
class of each label; the first entry is the background that unlabelled pixels get. An
entry ``__ignore__`` (labelme's own convention) is no class: shapes with that label are
painted ``data.ignore_index``. Shapes are painted in file order, later shapes on top:
``polygon`` (cv2.fillPoly), ``rectangle`` (two opposite corners, both inclusive),
``circle`` (centre and a point on the rim), ``mask`` (base64 PNG placed at the first
point); ``line``/``linestrip`` only when ``args.line_width`` > 0 (a line has no area);
``point``/``points`` are skipped.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .pairs import arg, check_args, check_num_classes, deterministic_split, require_root
from .reader import reader
from .transforms import make_sample

__all__ = ["LabelMeDataset", "class_names", "rasterize", "build_labelme"]

IGNORE = "__ignore__"
SKIPPED = ("point", "points")
ROOT_HINT = "the folder of LabelMe *.json files (or the folder holding one such folder per split)"
ARGS = ("classes", "line_width", "val_fraction", "seed")


def _classes(cfg) -> list[str]:
    check_args(cfg, "labelme", ARGS)
    classes = arg(cfg, "classes", None, (list, tuple, str), "labelme")
    if classes is None:
        raise ConfigError("data.dataset is 'labelme' but data.args.classes is not set; list the labels, background "
                          "first, e.g. data.args.classes: [background, cat, dog] (or the path of a labels.txt)")
    if isinstance(classes, str):
        path = Path(classes).expanduser()
        if not path.is_absolute() and cfg.root is not None and not path.is_file():
            path = Path(cfg.root).expanduser() / path
        if not path.is_file():
            raise ConfigError(f"data.args.classes is the file {classes!r}, which does not exist; give a labels.txt "
                              f"with one class per line, or a list of names")
        classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    classes = [str(c) for c in classes]
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates or not [c for c in classes if c != IGNORE]:
        raise ConfigError(f"data.args.classes for 'labelme' must be unique names with at least a background class; "
                          f"got {classes}")
    return classes


def class_names(cfg) -> list[str]:
    """``args.classes`` without the ``__ignore__`` entry: the class of index i is the i-th name."""
    return [c for c in _classes(cfg) if c != IGNORE]


def _decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            # LabelMe shows photos upright (EXIF orientation applied) and stores points in that frame.
            return np.array(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... on bad data
        raise DataError(f"labelme: cannot decode the image of {where} ({type(err).__name__}: {err}); re-save "
                        f"the annotation in LabelMe or fix imagePath") from None


def _points(shape: dict, where: str, need: int) -> np.ndarray:
    points = np.asarray(shape.get("points", []), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < need or not np.isfinite(points).all():
        raise DataError(f"labelme: {where} ({shape.get('shape_type')!r}) needs at least {need} finite [x, y] points, "
                        f"got {shape.get('points')!r}; fix or delete the shape in LabelMe")
    return points


def rasterize(shapes: list[dict], height: int, width: int, *, ids: dict[str, int], line_width: int,
              where: str) -> np.ndarray:
    """Paint LabelMe ``shapes`` in order (later on top) into an ``(H, W)`` int64 mask of class ids.

    ``ids`` maps each label to its id; unpainted pixels are 0 (the background class).
    """
    mask = np.zeros((height, width), dtype=np.int32)  # int32: cv2 draws into it and it holds any ignore_index
    for number, shape in enumerate(shapes):
        kind = shape.get("shape_type") or "polygon"  # old LabelMe files leave shape_type out (null)
        here = f"shape {number} of {where}"
        label = shape.get("label")
        if kind in SKIPPED:
            continue
        if label not in ids:
            raise DataError(f"labelme: {here} has label {label!r}, which is not in data.args.classes "
                            f"{sorted(ids)}; add it to data.args.classes (or map it to '__ignore__'), or rename the "
                            f"shape in LabelMe")
        value = ids[label]
        if kind == "polygon":
            cv2.fillPoly(mask, [np.round(_points(shape, here, 3)).astype(np.int32)], value)
        elif kind == "rectangle":
            (x0, y0), (x1, y1) = np.round(_points(shape, here, 2)[:2]).astype(int)
            cv2.rectangle(mask, (min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1)), value, thickness=-1)
        elif kind == "circle":
            centre, rim = _points(shape, here, 2)[:2]
            radius = int(round(float(np.hypot(*(rim - centre)))))
            cv2.circle(mask, tuple(int(v) for v in np.round(centre)), radius, value, thickness=-1)
        elif kind in ("line", "linestrip"):
            if line_width > 0:
                points = np.round(_points(shape, here, 2)).astype(np.int32)
                cv2.polylines(mask, [points], False, value, thickness=line_width)
        elif kind == "mask":
            x0, y0 = np.round(_points(shape, here, 1)[0]).astype(int)
            try:
                with Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or "", validate=True))) as img:
                    region = np.asarray(img.convert("L")) > 0
            except (binascii.Error, OSError, ValueError) as err:
                raise DataError(f"labelme: {here} is a 'mask' shape whose base64 PNG cannot be decoded ({err}); "
                                f"re-save it in LabelMe") from None
            target = mask[y0:y0 + region.shape[0], x0:x0 + region.shape[1]]
            target[region[:target.shape[0], :target.shape[1]]] = value
        else:
            raise DataError(f"labelme: {here} has shape_type {kind!r}; supported are polygon, rectangle, circle, "
                            f"mask, line, linestrip (point is skipped): convert it in LabelMe")
    return mask.astype(np.int64)


class LabelMeDataset(Dataset):
    """LabelMe JSON files as semantic-segmentation samples.

    Args:
        files: the ``*.json`` annotation files, in dataset order.
        classes: label names, background first; ``"__ignore__"`` paints ``ignore_index``.
        ignore_index: label of pixels left out of loss and metrics.
        line_width: stroke width in pixels for ``line``/``linestrip`` shapes; 0 skips them.
        transform: ``(image, mask) -> (FloatTensor (3, H, W), LongTensor (H, W))``.

    Every label is checked against ``classes`` when the dataset is built, so a typo fails
    before training. Each item is ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": stem}``.
    """

    def __init__(self, files: list[Path], *, classes: list[str], ignore_index: int, line_width: int = 0,
                 transform: Callable | None = None) -> None:
        if not files:
            raise DataError(f"labelme: no *.json files in this split; data.root must be {ROOT_HINT}")
        names = [c for c in classes if c != IGNORE]
        self.ids = {name: i for i, name in enumerate(names)}
        if IGNORE in classes:
            self.ids[IGNORE] = ignore_index
        self.paths = list(files)
        self.line_width = line_width
        self.transform = transform
        for path in self.paths:
            for number, shape in enumerate(self._json(path).get("shapes") or []):
                if shape.get("shape_type") not in SKIPPED and shape.get("label") not in self.ids:
                    raise DataError(f"labelme: shape {number} of {str(path)!r} has label {shape.get('label')!r}, "
                                    f"which is not in data.args.classes {classes}; add it to data.args.classes "
                                    f"(or '__ignore__' to leave it out), or rename the shape in LabelMe")

    @staticmethod
    def _json(path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"labelme: {str(path)!r} is not readable JSON ({err}); re-save it in LabelMe") from None
        if not isinstance(data, dict) or not isinstance(data.get("shapes", []), list):
            raise DataError(f"labelme: {str(path)!r} is not a LabelMe annotation (no 'shapes' list)")
        return data

    def __len__(self) -> int:
        return len(self.paths)

    def files(self, index: int) -> tuple[Path, Path]:
        """The annotation file of item ``index``, as (image source, label source) for ``data.check``."""
        return self.paths[index], self.paths[index]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 and rasterised mask ``(H, W)`` int64 of file ``index``."""
        path = self.paths[index]
        data = self._json(path)
        if data.get("imageData"):
            try:
                raw = base64.b64decode(data["imageData"], validate=True)
            except (binascii.Error, ValueError) as err:
                raise DataError(f"labelme: imageData of {str(path)!r} is not valid base64 ({err}); re-save it in "
                                f"LabelMe or remove imageData to use imagePath") from None
        else:
            # LabelMe on Windows writes backslashes into imagePath.
            image_path = path.parent / str(data.get("imagePath") or "").replace("\\", "/")
            if not data.get("imagePath") or not image_path.is_file():
                raise DataError(f"labelme: {str(path)!r} has no imageData and its imagePath "
                                f"{data.get('imagePath')!r} does not name a file next to it ({str(image_path)!r}); "
                                f"put the image there or fix imagePath")
            raw = image_path.read_bytes()
        image = _decode_image(raw, repr(str(path)))
        height, width = image.shape[:2]
        stated = (data.get("imageHeight"), data.get("imageWidth"))
        if None not in stated and tuple(stated) != (height, width):
            raise DataError(f"labelme: {str(path)!r} says the image is {stated[1]}x{stated[0]} (WxH) but it is "
                            f"{width}x{height}; the image was replaced or resized after labelling: restore it")
        mask = rasterize(data.get("shapes") or [], height, width, ids=self.ids, line_width=self.line_width,
                         where=repr(str(path)))
        return image, mask

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(index)
        return make_sample(image, mask, self.paths[index].stem, self.transform)


@reader("labelme", class_names=class_names)
def build_labelme(cfg, split: str, *, train: bool, transform: Callable | None) -> LabelMeDataset:
    """LabelMe ``split``: ``ROOT/<split>/*.json``, else a deterministic split of ``ROOT/*.json``."""
    classes = _classes(cfg)
    line_width = arg(cfg, "line_width", 0, (int,), "labelme")
    val_fraction = float(arg(cfg, "val_fraction", 0.2, (int, float), "labelme"))
    seed = arg(cfg, "seed", 0, (int,), "labelme")
    if line_width < 0:
        raise ConfigError(f"data.args.line_width for 'labelme' is {line_width}; use 0 (skip lines) or a width in px")
    check_num_classes(cfg, "labelme", len(class_names(cfg)), "the entries of data.args.classes")
    root = require_root(cfg, "labelme", ROOT_HINT)
    if (root / split).is_dir():
        files = sorted(p for p in (root / split).glob("*.json") if not p.name.startswith("."))
    else:
        by_stem = {p.stem: p for p in root.glob("*.json") if not p.name.startswith(".")}
        if not by_stem:
            raise DataError(f"labelme: {str(root)!r} has neither a {split!r} folder nor *.json files; data.root must "
                            f"be {ROOT_HINT}")
        stems = deterministic_split(list(by_stem), split, val_fraction=val_fraction, seed=seed, dataset="labelme")
        files = [by_stem[s] for s in stems]
    return LabelMeDataset(files, classes=classes, ignore_index=cfg.ignore_index, line_width=line_width,
                          transform=transform)
