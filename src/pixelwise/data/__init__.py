"""Datasets, IO and augmentation.

``build_dataset(cfg, split, train=...)`` looks ``cfg.dataset`` up in ``registry.DATASETS``
(``synthetic``: the embedded default; ``folder``: image/mask folders) and attaches the
``cfg.augment`` preset. Every sample is ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": str}``
(``(C, H, W)`` with ``data.image_mode: raw``, see :mod:`.intensity`).
"""

from __future__ import annotations

from torch.utils.data import Dataset

from ..config import DataCfg
from ..errors import ConfigError
from ..registry import DATASETS, lookup
from . import ade20k as _ade20k  # registers "ade20k"
from . import camvid as _camvid  # registers "camvid"
from . import cityscapes as _cityscapes  # registers "cityscapes"
from . import coco as _coco  # registers "coco"
from . import coco_instances as _coco_instances  # noqa: F401 - registers "coco_instances"
from . import coco_panoptic as _coco_panoptic  # registers "coco_panoptic"
from . import folder as _folder  # noqa: F401 - registers "folder"
from . import instances as _instances  # noqa: F401 - registers "synthetic_instances"
from . import kitti as _kitti  # registers "kitti_road"
from . import labelme as _labelme  # registers "labelme"
from . import rle as _rle  # noqa: F401 - registers "rle_csv"
from . import synthetic as _synthetic
from . import voc as _voc  # registers "voc", "voc_aug", "sbd"
from . import volume as _volume  # registers "volume"
from .folder import FolderDataset
from .intensity import Preprocess
from .io import (
    colorize,
    default_palette,
    overlay,
    read_image,
    read_mask,
    write_image,
    write_mask,
)
from .synthetic import SyntheticShapes
from .transforms import EpochSeeded, build_transform, pad_collate

__all__ = ["build_dataset", "check_channels", "class_names", "FolderDataset", "SyntheticShapes", "EpochSeeded", "build_transform",
           "pad_collate", "read_image", "read_mask", "write_image", "write_mask", "colorize", "overlay",
           "default_palette"]


def build_dataset(cfg: DataCfg, split: str, *, train: bool) -> Dataset:
    """The ``split`` of the dataset ``cfg`` describes, with the train or eval transform."""
    try:
        builder = lookup(DATASETS, cfg.dataset, "dataset")
    except KeyError as err:
        raise ConfigError(f"data.dataset: {err.args[0]}") from None
    preprocess = Preprocess.from_cfg(cfg)
    if preprocess.raw and not getattr(builder, "raw_images", False):
        readers = ", ".join(sorted(name for name, b in DATASETS.items() if getattr(b, "raw_images", False)))
        raise ConfigError(f"data.image_mode: raw reads stored pixel values, which the {cfg.dataset!r} reader does "
                          f"not support (it reads 8-bit RGB); readers with raw images: {readers}. Set "
                          f"data.image_mode: rgb, or arrange the files as a folder dataset")
    transform = build_transform(cfg.augment, train=train, crop_size=cfg.crop_size, mean=cfg.mean, std=cfg.std,
                                ignore_index=cfg.ignore_index, resize=cfg.resize, preprocess=preprocess)
    return builder(cfg, split, train=train, transform=transform)


def check_channels(dataset: Dataset, in_channels: int, *, split: str) -> None:
    """Refuse, before training starts, a model whose ``in_channels`` differs from what the
    dataset delivers (read from its first sample): the error names both and the fix."""
    if len(dataset) == 0:
        return
    sample = dataset[0]
    image = sample["image"] if isinstance(sample, dict) else sample[0]
    channels = int(image.shape[0])
    if channels != in_channels:
        how = (" (data.image_mode: rgb reads 2D image files as RGB, grey files replicated to 3 channels; "
               "data.image_mode: raw keeps the stored channels)") if channels == 3 else ""
        raise ConfigError(f"model.in_channels is {in_channels} but split {split!r} delivers {channels}-channel images"
                          f"{how}; set model.in_channels: {channels}")


def class_names(cfg: DataCfg) -> list[str]:
    """``cfg.class_names``, else the dataset's own names, else ``class_0 .. class_{n-1}``."""
    if cfg.class_names is not None:
        if len(cfg.class_names) != cfg.num_classes:
            raise ConfigError(f"data.class_names has {len(cfg.class_names)} names but data.num_classes is "
                              f"{cfg.num_classes}; give one name per class")
        return [str(n) for n in cfg.class_names]
    if cfg.dataset == "synthetic":
        return list(_synthetic.CLASS_NAMES)
    if cfg.dataset == "coco":
        return _coco.coco_class_names(cfg)
    if cfg.dataset == "coco_panoptic":
        return _coco_panoptic.panoptic_class_names(cfg)
    if cfg.dataset == "volume" and (names := _volume.volume_class_names(cfg)) is not None:
        return names
    standard = {"voc": _voc.class_names, "voc_aug": _voc.class_names, "sbd": _voc.class_names,
                "cityscapes": _cityscapes.class_names, "camvid": _camvid.class_names, "kitti_road": _kitti.class_names,
                "ade20k": _ade20k.class_names, "labelme": _labelme.class_names,
                "labelme_voc": _voc.labelme_voc_class_names}
    if cfg.dataset in standard:
        return standard[cfg.dataset](cfg)
    return [f"class_{i}" for i in range(cfg.num_classes)]
