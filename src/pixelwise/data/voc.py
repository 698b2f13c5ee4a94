"""PASCAL VOC 2012 segmentation and its SBD augmentation (``voc``, ``voc_aug``, ``sbd``).

Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge" (IJCV 2010);
Hariharan et al., "Semantic Contours from Inverse Detectors" (ICCV 2011) for SBD, the
11,355 extra annotations that, merged with VOC, give the usual 10,582-image ``train_aug``.

Layouts (``data.root`` is the folder shown first):

- ``voc``: ``VOCdevkit/VOC2012/`` with ``JPEGImages/ID.jpg``, ``SegmentationClass/ID.png``
  (palette PNGs: the palette index is the class, 255 marks the void border around objects)
  and ``ImageSets/Segmentation/{train,val,trainval}.txt`` (one ID per line).
- ``voc_aug``: the same ``VOC2012/`` folder holding ``SegmentationClassAug/ID.png`` (plain
  index PNGs, no border) and a split list ``ImageSets/Segmentation/<split>_aug.txt``
  (else ``aug.txt`` for ``train``, else ``<split>.txt``). Lines may be IDs or the DeepLab
  form ``/JPEGImages/ID.jpg /SegmentationClassAug/ID.png``; only the first token's stem is used.
- ``sbd``: SBD's ``benchmark_RELEASE/dataset/`` with ``img/ID.jpg``, ``cls/ID.mat``
  (MATLAB struct ``GTcls`` whose field ``Segmentation`` is the ``(H, W)`` class map) and
  ``train.txt`` / ``val.txt``.

- ``labelme_voc``: what labelme's ``labelme2voc.py`` writes: ``JPEGImages/ID.jpg``,
  ``SegmentationClassPNG/ID.png`` (palette PNGs; ``__ignore__`` regions are 255) and
  ``class_names.txt`` (``_background_`` first), with no split files: ``train`` and ``val``
  are a deterministic split (``data.args.val_fraction``, default 0.2, and ``data.args.seed``)
  unless ``ImageSets/Segmentation/<split>.txt`` exists.

The first three have 21 classes (background + 20 objects); ``labelme_voc`` has the classes of
its ``class_names.txt``. Label 255 in the files becomes ``data.ignore_index``.
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
    deterministic_split,
    read_id_list,
    require_dir,
    require_root,
)
from .reader import reader

__all__ = ["CLASS_NAMES", "class_names", "build_voc", "build_voc_aug", "build_sbd", "read_sbd_mat", "build_labelme_voc",
           "labelme_voc_class_names"]

CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_VOID = 255  # the border label VOC draws around every object
VOC_ROOT = "the VOC2012 folder (VOCdevkit/VOC2012, holding JPEGImages/ and SegmentationClass/)"
AUG_ROOT = "the VOC2012 folder holding JPEGImages/ and SegmentationClassAug/ (VOCdevkit/VOC2012)"
LABELME_ROOT = ("labelme2voc.py's output folder (holding JPEGImages/, SegmentationClassPNG/ and "
                "class_names.txt)")
SBD_ROOT = "SBD's dataset folder (benchmark_RELEASE/dataset, holding img/, cls/, train.txt, val.txt)"


def class_names(cfg) -> list[str]:
    """The 21 VOC class names; ``cfg`` is unused (same names for every VOC variant)."""
    return list(CLASS_NAMES)


def _void_to_ignore(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    if ignore_index != VOC_VOID:
        mask = np.where(mask == VOC_VOID, ignore_index, mask)
    return mask


# Module-level decoders bound with functools.partial, not closures: DataLoader workers
# started with spawn/forkserver must pickle the dataset.
def _decode_png(path: Path, *, ignore_index: int) -> np.ndarray:
    return _void_to_ignore(read_mask(path), ignore_index)


def _decode_sbd(path: Path, *, ignore_index: int) -> np.ndarray:
    return _void_to_ignore(read_sbd_mat(path), ignore_index)


def read_sbd_mat(path: str | Path) -> np.ndarray:
    """Class map of one SBD ``cls/ID.mat`` file as ``(H, W)`` int64 (0 background, 1..20 objects).

    The file holds a MATLAB struct ``GTcls`` with fields ``Segmentation`` (the class map),
    ``Boundaries`` and ``CategoriesPresent``; only ``Segmentation`` is read.
    """
    from scipy.io import (
        loadmat,  # scipy is only needed for SBD; keep it off the import path
    )

    path = Path(path)
    try:
        mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError, ... on a bad file
        raise DataError(f"sbd: {str(path)!r} is not a readable MATLAB file ({type(err).__name__}: {err}); "
                        f"re-extract it from SBD's benchmark.tgz") from None
    gt = mat.get("GTcls")
    segmentation = getattr(gt, "Segmentation", None)
    if segmentation is None:
        raise DataError(f"sbd: {str(path)!r} has no GTcls.Segmentation; it is not an SBD cls/*.mat file "
                        f"(inst/*.mat holds instances, use cls/)")
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 2:
        raise DataError(f"sbd: GTcls.Segmentation in {str(path)!r} has shape {segmentation.shape}; expected (H, W)")
    return segmentation.astype(np.int64)


@reader("voc", class_names=CLASS_NAMES)
def build_voc(cfg, split: str, *, train: bool, transform: Callable | None) -> PairedDataset:
    """PASCAL VOC 2012 ``split`` (a file ``ImageSets/Segmentation/<split>.txt``) under ``cfg.root``."""
    check_args(cfg, "voc", ())
    check_num_classes(cfg, "voc", len(CLASS_NAMES))
    root = require_root(cfg, "voc", VOC_ROOT)
    if (root / "SegmentationClassPNG").is_dir() and not (root / "SegmentationClass").is_dir():
        raise DataError(f"voc: {str(root)!r} holds SegmentationClassPNG/, the layout labelme2voc.py writes, not "
                        f"VOC2012's SegmentationClass/; set data.dataset: labelme_voc (it reads class_names.txt "
                        f"and splits train/val itself)")
    images = require_dir(root / "JPEGImages", "voc", VOC_ROOT)
    labels = require_dir(root / "SegmentationClass", "voc", VOC_ROOT)
    ids = read_id_list(root / "ImageSets" / "Segmentation" / f"{split}.txt", "voc", VOC_ROOT)
    items = [(images / f"{i}.jpg", labels / f"{i}.png", i) for i in ids]
    return PairedDataset(items, decode=partial(_decode_png, ignore_index=cfg.ignore_index),
                         num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                         transform=transform, dataset="voc", point_at=VOC_ROOT)


def _aug_split_file(root: Path, split: str) -> Path:
    folder = root / "ImageSets" / "Segmentation"
    names = [f"{split}_aug.txt"] + (["aug.txt"] if split == "train" else []) + [f"{split}.txt"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"voc_aug: no split list for {split!r} in {str(folder)!r} (looked for {', '.join(names)}); "
                    f"put the SBD-augmented list there (e.g. train_aug.txt, 10582 IDs) and point data.root at "
                    f"{AUG_ROOT}")


@reader("voc_aug", class_names=CLASS_NAMES)
def build_voc_aug(cfg, split: str, *, train: bool, transform: Callable | None) -> PairedDataset:
    """VOC 2012 + SBD as the merged ``SegmentationClassAug`` PNG folder (the DeepLab ``train_aug`` set)."""
    check_args(cfg, "voc_aug", ())
    check_num_classes(cfg, "voc_aug", len(CLASS_NAMES))
    root = require_root(cfg, "voc_aug", AUG_ROOT)
    images = require_dir(root / "JPEGImages", "voc_aug", AUG_ROOT)
    labels = require_dir(root / "SegmentationClassAug", "voc_aug", AUG_ROOT)
    ids = [Path(i).stem for i in read_id_list(_aug_split_file(root, split), "voc_aug", AUG_ROOT)]
    items = [(images / f"{i}.jpg", labels / f"{i}.png", i) for i in ids]
    return PairedDataset(items, decode=partial(_decode_png, ignore_index=cfg.ignore_index),
                         num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                         transform=transform, dataset="voc_aug", point_at=AUG_ROOT)


@reader("sbd", class_names=CLASS_NAMES)
def build_sbd(cfg, split: str, *, train: bool, transform: Callable | None) -> PairedDataset:
    """SBD ``split`` (``train`` 8498 or ``val`` 2857 images) read from the original ``cls/*.mat`` files."""
    check_args(cfg, "sbd", ())
    check_num_classes(cfg, "sbd", len(CLASS_NAMES))
    root = require_root(cfg, "sbd", SBD_ROOT)
    images = require_dir(root / "img", "sbd", SBD_ROOT)
    labels = require_dir(root / "cls", "sbd", SBD_ROOT)
    ids = read_id_list(root / f"{split}.txt", "sbd", SBD_ROOT)
    items = [(images / f"{i}.jpg", labels / f"{i}.mat", i) for i in ids]
    return PairedDataset(items, decode=partial(_decode_sbd, ignore_index=cfg.ignore_index),
                         num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                         transform=transform, dataset="sbd", point_at=SBD_ROOT)


def labelme_voc_class_names(cfg) -> list[str]:
    """The names in ``class_names.txt`` of a labelme2voc folder (``_background_`` is class 0)."""
    root = require_root(cfg, "labelme_voc", LABELME_ROOT)
    path = root / "class_names.txt"
    if not path.is_file():
        raise DataError(f"labelme_voc: {str(path)!r} does not exist; data.root must be {LABELME_ROOT}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and line.strip() != "__ignore__"]
    if not names:
        raise DataError(f"labelme_voc: {str(path)!r} lists no classes; labelme2voc.py writes one per line")
    return names


@reader("labelme_voc", class_names=labelme_voc_class_names)
def build_labelme_voc(cfg, split: str, *, train: bool, transform: Callable | None) -> PairedDataset:
    """labelme2voc.py's output as it comes: JPEGImages/ + SegmentationClassPNG/ + class_names.txt."""
    check_args(cfg, "labelme_voc", ("val_fraction", "seed"))
    names = labelme_voc_class_names(cfg)
    check_num_classes(cfg, "labelme_voc", len(names), f"the classes of class_names.txt: {', '.join(names)}")
    root = require_root(cfg, "labelme_voc", LABELME_ROOT)
    images = require_dir(root / "JPEGImages", "labelme_voc", LABELME_ROOT)
    labels = require_dir(root / "SegmentationClassPNG", "labelme_voc", LABELME_ROOT)
    listed = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if listed.is_file():
        ids = read_id_list(listed, "labelme_voc", LABELME_ROOT)
    else:
        labelled = sorted(p.stem for p in labels.glob("*.png"))
        ids = deterministic_split(labelled, split, val_fraction=arg(cfg, "val_fraction", 0.2, (float, int),
                                                                        "labelme_voc"),
                                  seed=arg(cfg, "seed", 0, (int,), "labelme_voc"), dataset="labelme_voc")
    suffixes = (".jpg", ".jpeg", ".png")
    items = []
    for i in ids:
        image = next((images / f"{i}{s}" for s in suffixes if (images / f"{i}{s}").is_file()), images / f"{i}.jpg")
        items.append((image, labels / f"{i}.png", i))
    return PairedDataset(items, decode=partial(_decode_png, ignore_index=cfg.ignore_index),
                         num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                         transform=transform, dataset="labelme_voc", point_at=LABELME_ROOT)
