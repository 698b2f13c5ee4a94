"""Cityscapes semantic segmentation (``cityscapes``), the 19 training classes.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding" (CVPR 2016).

``data.root`` is the folder holding ``leftImg8bit/`` and ``gtFine/`` (the two official
zips ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` unpacked side by side):

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label files store the 34 "labelIds" of the full annotation protocol; training and the
official benchmark use 19 of them. :data:`LABEL_TO_TRAIN` is the published mapping of
the Cityscapes scripts (``cityscapesscripts/helpers/labels.py``); every other id, and
255 (where the uint8 label images store the license plate's id -1), becomes
``data.ignore_index``. ``args.annotations: gtCoarse`` reads the coarse labels
(``ROOT/gtCoarse/<split>/...*_gtCoarse_labelIds.png``, splits train, val, train_extra).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError
from .io import read_mask
from .pairs import (
    PairedDataset,
    arg,
    check_args,
    check_num_classes,
    require_dir,
    require_root,
)
from .reader import reader

__all__ = ["CLASS_NAMES", "LABEL_TO_TRAIN", "class_names", "label_to_train_lut", "build_cityscapes"]

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# labelId -> trainId for the 19 evaluated classes (Cityscapes scripts, labels.py). Ids not
# listed (0-6 void/ego/border/static/dynamic/ground, 9 parking, 10 rail track, 14 guard rail,
# 15 bridge, 16 tunnel, 18 polegroup, 29 caravan, 30 trailer, -1 license plate) are ignored.
LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
NUM_LABEL_IDS = 34  # labelIds 0..33; -1 (license plate) is stored as 255 in the uint8 PNGs
ROOT_HINT = "the Cityscapes folder holding leftImg8bit/ and gtFine/ (the unpacked official zips)"
ANNOTATIONS = ("gtFine", "gtCoarse")


def class_names(cfg) -> list[str]:
    """The 19 Cityscapes training-class names, in trainId order."""
    return list(CLASS_NAMES)


def label_to_train_lut(ignore_index: int) -> np.ndarray:
    """``(256,)`` int64 table: labelId (pixel value 0..33, or 255 for the license plate) -> trainId."""
    lut = np.full(256, ignore_index, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def _decode(path: Path, *, lut: np.ndarray) -> np.ndarray:
    label = read_mask(path)
    valid = (label < NUM_LABEL_IDS) | (label == 255)
    if label.min() < 0 or not valid.all():
        bad = np.unique(label[~valid | (label < 0)])[:10].tolist()
        raise DataError(f"cityscapes: label {str(path)!r} has value(s) {bad} that are no Cityscapes labelId "
                        f"(0..33, or 255 for the license plate); use the *_labelIds.png files (not *_color.png, "
                        f"*_instanceIds.png or already converted *_labelTrainIds.png)")
    return lut[label]


@reader("cityscapes", class_names=class_names)
def build_cityscapes(cfg, split: str, *, train: bool, transform: Callable | None) -> PairedDataset:
    """Cityscapes ``split`` (train, val, test; train_extra with gtCoarse) with labelIds mapped to trainIds."""
    check_args(cfg, "cityscapes", ("annotations",))
    annotations = arg(cfg, "annotations", "gtFine", (str,), "cityscapes")
    if annotations not in ANNOTATIONS:
        raise ConfigError(f"data.args.annotations for 'cityscapes' is {annotations!r}; use gtFine or gtCoarse")
    check_num_classes(cfg, "cityscapes", len(CLASS_NAMES), "the 19 training classes")
    root = require_root(cfg, "cityscapes", ROOT_HINT)
    image_root = require_dir(root / "leftImg8bit" / split, "cityscapes", ROOT_HINT + f" and a split {split!r}")
    label_root = require_dir(root / annotations / split, "cityscapes", ROOT_HINT.replace("gtFine", annotations)
                             + f" and a split {split!r}")
    items = []
    for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        label = label_root / image.parent.name / f"{stem}_{annotations}_labelIds.png"
        items.append((image, label, stem))
    if not items:
        raise DataError(f"cityscapes: {str(image_root)!r} holds no <city>/*_leftImg8bit.png images; data.root "
                        f"must be {ROOT_HINT}")
    return PairedDataset(items, decode=partial(_decode, lut=label_to_train_lut(cfg.ignore_index)),
                         num_classes=cfg.num_classes, ignore_index=cfg.ignore_index, transform=transform,
                         dataset="cityscapes", point_at=ROOT_HINT)
