"""Datasets, IO and augmentation.

``build_dataset(cfg, split, train=...)`` looks ``cfg.dataset`` up in ``registry.DATASETS``
(``synthetic``: the embedded default; ``folder``: image/mask folders), whose entries follow
the :class:`~pixelwise.data.reader.Reader` protocol, and attaches the ``cfg.augment`` preset. Every sample is ``{"image": (3, H, W) float, "mask": (H, W) int64, "name": str}``
(``(C, H, W)`` with ``data.image_mode: raw``, see :mod:`.intensity`).
"""

from __future__ import annotations

from torch.utils.data import Dataset

from ..config import DataCfg
from ..errors import ConfigError
from ..registry import DATASETS
# Each import registers its readers in registry.DATASETS.
from . import ade20k as _ade20k  # noqa: F401 - "ade20k"
from . import camvid as _camvid  # noqa: F401 - "camvid"
from . import cityscapes as _cityscapes  # noqa: F401 - "cityscapes"
from . import coco as _coco  # noqa: F401 - "coco"
from . import coco_instances as _coco_instances  # noqa: F401 - "coco_instances", "coco_keypoints"
from . import coco_panoptic as _coco_panoptic  # noqa: F401 - "coco_panoptic"
from . import folder as _folder  # noqa: F401 - "folder"
from . import instances as _instances  # noqa: F401 - "synthetic_instances"
from . import kitti as _kitti  # noqa: F401 - "kitti_road"
from . import labelme as _labelme  # noqa: F401 - "labelme"
from . import rle as _rle  # noqa: F401 - "rle_csv"
from . import synthetic as _synthetic  # noqa: F401 - "synthetic"
from . import voc as _voc  # noqa: F401 - "voc", "voc_aug", "sbd", "labelme_voc"
from . import volume as _volume  # noqa: F401 - "volume"
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
from .reader import Reader, as_reader, get_reader
from .synthetic import SyntheticShapes
from .transforms import EpochSeeded, build_transform, pad_collate

__all__ = ["build_dataset", "check_channels", "class_names", "get_reader", "Reader", "FolderDataset", "SyntheticShapes", "EpochSeeded", "build_transform",
           "pad_collate", "read_image", "read_mask", "write_image", "write_mask", "colorize", "overlay",
           "default_palette"]


def build_dataset(cfg: DataCfg, split: str, *, train: bool) -> Dataset:
    """The ``split`` of the dataset ``cfg`` describes, with the train or eval transform."""
    builder = get_reader(cfg.dataset)
    preprocess = Preprocess.from_cfg(cfg)
    if preprocess.raw and not builder.raw_images:
        readers = ", ".join(sorted(name for name, r in DATASETS.items() if as_reader(name, r).raw_images))
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
    """``cfg.class_names``, else the names the dataset's reader gives (:meth:`Reader.class_names
    <pixelwise.data.reader.Reader.class_names>`), else ``class_0 .. class_{n-1}``."""
    if cfg.class_names is not None:
        if len(cfg.class_names) != cfg.num_classes:
            raise ConfigError(f"data.class_names has {len(cfg.class_names)} names but data.num_classes is "
                              f"{cfg.num_classes}; give one name per class")
        return [str(n) for n in cfg.class_names]
    reader = DATASETS.get(cfg.dataset)  # an unknown name fails where the dataset is built, with the list
    names = None if reader is None else as_reader(cfg.dataset, reader).class_names(cfg)
    return names if names is not None else [f"class_{i}" for i in range(cfg.num_classes)]
