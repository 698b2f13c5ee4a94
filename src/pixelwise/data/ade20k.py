"""ADE20K SceneParsing (``ade20k``), the 150-class MIT Scene Parsing Benchmark release.

Zhou et al., "Scene Parsing through ADE20K Dataset" (CVPR 2017). ``data.root`` is the
unpacked ``ADEChallengeData2016/`` folder:

    ROOT/images/{training,validation}/ADE_{train,val}_NNNNNNNN.jpg       20,210 / 2,000 images
    ROOT/annotations/{training,validation}/ADE_{train,val}_NNNNNNNN.png  index PNGs, 0..150

In the annotation PNGs 0 is "other objects / void" and 1..150 are the classes. With
``args.reduce_zero_label: true`` (the default, as in the benchmark and MMSegmentation),
0 becomes ``data.ignore_index`` and 1..150 become 0..149: 150 classes, void never
trained or scored. With ``false`` the values are kept and "other" is class 0 of 151.
Split names ``train``/``val`` (or the folder names ``training``/``validation``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
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

__all__ = ["CLASS_NAMES", "class_names", "build_ade20k"]

# objectInfo150 order (label value k = CLASS_NAMES[k - 1]), first name of each entry.
CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
ROOT_HINT = "the ADEChallengeData2016 folder (holding images/ and annotations/)"
FOLDERS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def _reduce(cfg) -> bool:
    check_args(cfg, "ade20k", ("reduce_zero_label",))
    return arg(cfg, "reduce_zero_label", True, (bool,), "ade20k")


def class_names(cfg) -> list[str]:
    """The 150 class names, with ``"other"`` first when ``reduce_zero_label`` is false (151 classes)."""
    return list(CLASS_NAMES) if _reduce(cfg) else ["other", *CLASS_NAMES]


def _decode(path: Path, *, reduce_zero_label: bool, ignore_index: int) -> np.ndarray:
    label = read_mask(path)
    if not reduce_zero_label:
        return label
    # Subtract first, then overwrite: 0 - 1 = -1 is replaced, nothing else can become negative.
    return np.where(label == 0, ignore_index, label - 1)


@reader("ade20k", class_names=class_names)
def build_ade20k(cfg, split: str, *, train: bool, transform: Callable | None) -> PairedDataset:
    """ADE20K ``split`` (train/val) with label 0 handled by ``args.reduce_zero_label``."""
    reduce_zero_label = _reduce(cfg)
    check_num_classes(cfg, "ade20k", len(class_names(cfg)),
                      "args.reduce_zero_label is " + ("true: 0 is ignored, 1..150 -> 0..149" if reduce_zero_label
                                                      else "false: 0 'other' is a class"))
    root = require_root(cfg, "ade20k", ROOT_HINT)
    if split not in FOLDERS:
        raise DataError(f"ade20k has no split {split!r}; use train or val (the folders training/ and validation/)")
    images = require_dir(root / "images" / FOLDERS[split], "ade20k", ROOT_HINT)
    labels = require_dir(root / "annotations" / FOLDERS[split], "ade20k", ROOT_HINT)
    items = [(p, labels / f"{p.stem}.png", p.stem) for p in sorted(images.glob("*.jpg"))]
    return PairedDataset(items, decode=partial(_decode, reduce_zero_label=reduce_zero_label,
                                               ignore_index=cfg.ignore_index),
                         num_classes=cfg.num_classes, ignore_index=cfg.ignore_index, transform=transform,
                         dataset="ade20k", point_at=ROOT_HINT)
