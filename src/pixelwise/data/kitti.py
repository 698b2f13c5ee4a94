"""KITTI Road (``kitti_road``): binary road vs background from the colour-coded ground truth.

Fritsch, Kuehnl and Geiger, "A New Performance Measure and Evaluation Benchmark for Road
Detection Algorithms" (ITSC 2013). ``data.root`` is the unpacked ``data_road/`` folder:

    ROOT/training/image_2/{um,umm,uu}_NNNNNN.png                 RGB frames (289 in all)
    ROOT/training/gt_image_2/{um,umm,uu}_road_NNNNNN.png         colour ground truth
    ROOT/training/gt_image_2/um_lane_NNNNNN.png                  ego-lane ground truth (um only)

In the ground truth magenta (255, 0, 255) is road (class 1), red (255, 0, 0) is not road
(class 0) and black (0, 0, 0) is outside the valid area (``data.ignore_index``).
``args.lane: true`` reads the ego-lane files instead (only the ``um`` category has them).

KITTI publishes no validation split and keeps the test ground truth private, so ``train``
and ``val`` are a deterministic split of ``training/``: per category, the frame names are
sorted and shuffled with ``numpy.random.default_rng(seed)``, and the first
``round(n * val_fraction)`` go to ``val`` (see :func:`pairs.deterministic_split`);
``trainval`` is every labelled frame.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError
from .io import read_image
from .pairs import (
    PairedDataset,
    arg,
    check_args,
    check_num_classes,
    colours_to_index,
    deterministic_split,
    require_dir,
    require_root,
)
from .reader import reader

__all__ = ["CLASS_NAMES", "CATEGORIES", "class_names", "build_kitti_road"]

CLASS_NAMES: tuple[str, ...] = ("background", "road")
CATEGORIES: tuple[str, ...] = ("um", "umm", "uu")  # urban marked, urban multiple marked, urban unmarked
ROAD, NOT_ROAD, INVALID = (255, 0, 255), (255, 0, 0), (0, 0, 0)
ROOT_HINT = "KITTI's data_road folder (holding training/image_2 and training/gt_image_2)"
ARGS = ("categories", "lane", "val_fraction", "seed", "unknown_color")


def class_names(cfg) -> list[str]:
    """``["background", "road"]`` (with ``args.lane`` class 1 is the ego lane, still called road)."""
    return list(CLASS_NAMES)


def _decode(path: Path, *, ignore_index: int, unknown: int | None) -> np.ndarray:
    colours = np.array([NOT_ROAD, ROAD, INVALID], dtype=np.uint8)
    ids = np.array([0, 1, ignore_index], dtype=np.int64)
    return colours_to_index(read_image(path), colours, ids, path=path, unknown=unknown,
                            fix="KITTI road labels use only magenta (road), red (not road) and black (invalid); "
                                "restore the original gt_image_2 file or set data.args.unknown_color: ignore")


@reader("kitti_road", class_names=class_names)
def build_kitti_road(cfg, split: str, *, train: bool, transform: Callable | None) -> PairedDataset:
    """KITTI Road ``split`` (train / val / trainval, a deterministic split of ``training/``)."""
    check_args(cfg, "kitti_road", ARGS)
    categories = arg(cfg, "categories", list(CATEGORIES), (list, tuple), "kitti_road")
    lane = arg(cfg, "lane", False, (bool,), "kitti_road")
    val_fraction = float(arg(cfg, "val_fraction", 0.2, (int, float), "kitti_road"))
    seed = arg(cfg, "seed", 0, (int,), "kitti_road")
    unknown = arg(cfg, "unknown_color", "error", (str,), "kitti_road")
    wrong = [c for c in categories if c not in CATEGORIES]
    if wrong or not categories:
        raise ConfigError(f"data.args.categories for 'kitti_road' is {categories!r}; choose from {list(CATEGORIES)}")
    if lane and list(categories) != ["um"]:
        raise ConfigError("data.args.lane is true but KITTI has ego-lane labels only for 'um'; set "
                          "data.args.categories: [um]")
    if unknown not in ("error", "ignore"):
        raise ConfigError(f"data.args.unknown_color for 'kitti_road' is {unknown!r}; use error or ignore")
    check_num_classes(cfg, "kitti_road", len(CLASS_NAMES), "background and road")
    root = require_root(cfg, "kitti_road", ROOT_HINT)
    if split == "test":
        raise DataError("kitti_road: the test images (data_road/testing/image_2) have no public ground truth; "
                        "evaluate on the 'val' split and run `pixelwise predict` on the test images")
    images = require_dir(root / "training" / "image_2", "kitti_road", ROOT_HINT)
    labels = require_dir(root / "training" / "gt_image_2", "kitti_road", ROOT_HINT)
    kind = "lane" if lane else "road"
    items = []
    for category in categories:
        frames = [p.stem[len(category) + 1:] for p in sorted(images.glob(f"{category}_*.png"))]
        if not frames:
            raise DataError(f"kitti_road: {str(images)!r} has no {category}_NNNNNN.png images; data.root must be "
                            f"{ROOT_HINT}")
        for frame in deterministic_split(frames, split, val_fraction=val_fraction, seed=seed, dataset="kitti_road"):
            items.append((images / f"{category}_{frame}.png", labels / f"{category}_{kind}_{frame}.png",
                          f"{category}_{frame}"))
    return PairedDataset(items, decode=partial(_decode, ignore_index=cfg.ignore_index,
                                               unknown=cfg.ignore_index if unknown == "ignore" else None),
                         num_classes=cfg.num_classes, ignore_index=cfg.ignore_index, transform=transform,
                         dataset="kitti_road", point_at=ROOT_HINT)
