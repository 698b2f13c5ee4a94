"""The base of every reader of labelled 2D image/mask pairs: it checks each pair once.

A reader says where pair ``index`` is (:meth:`LabelledDataset.files`), what it is called
(:meth:`~LabelledDataset.sample_name`) and how to decode it
(:meth:`~LabelledDataset.load_raw`); :meth:`~LabelledDataset.load` then checks the pair
(channels, sizes, label values) with one set of messages, each naming the file and the
fix, and ``__getitem__`` transforms it. ``pixelwise check`` reads the same
``load_raw`` / ``files`` pair (see :mod:`pixelwise.data.check`), so it reports what
``load`` would raise on without stopping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from ..errors import DataError
from .transforms import make_sample

__all__ = ["LabelledDataset", "check_pair"]


def check_pair(image: np.ndarray, mask: np.ndarray, *, image_path: Path, mask_path: Path, num_classes: int,
               ignore_index: int, channels: int | None = None, prefix: str = "", mask_word: str = "mask",
               size_fix: str, label_fix: str) -> None:
    """Raise :class:`~pixelwise.errors.DataError` unless ``image`` ``(H, W, C)`` and ``mask``
    ``(H, W)`` belong together: ``C == channels`` (when given), the same ``H, W``, and every
    label in ``[0, num_classes)`` or equal to ``ignore_index``.

    Messages start with ``prefix`` (e.g. ``"voc: "``), call the mask file ``mask_word`` and
    end with ``size_fix`` / ``label_fix``, the reader's advice for its own layout.
    """
    if channels is not None and image.shape[2] != channels:
        raise DataError(f"{prefix}image {str(image_path)!r} has {image.shape[2]} channel(s) but the model's input "
                        f"takes {channels} (data.mean/data.std have one value per channel); give every image the "
                        f"same channels, or measure the statistics again with pixelwise check")
    if image.shape[:2] != mask.shape:
        raise DataError(f"{prefix}{mask_word} {str(mask_path)!r} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image "
                        f"{str(image_path)!r} is {image.shape[1]}x{image.shape[0]}; {size_fix}")
    bad = ((mask >= num_classes) | (mask < 0)) & (mask != ignore_index)
    if bad.any():
        values = np.unique(mask[bad])[:10].tolist()
        raise DataError(f"{prefix}{mask_word} {str(mask_path)!r} has label(s) {values} but num_classes is "
                        f"{num_classes} (labels 0..{num_classes - 1}, ignore_index {ignore_index}); {label_fix}")


class LabelledDataset(Dataset):
    """Labelled image/mask pairs, checked once per read.

    Subclasses implement ``__len__``, :meth:`files`, :meth:`sample_name` and
    :meth:`load_raw`, and may override the class attributes that shape the messages:
    ``mask_word`` (what the mask file is called), ``size_fix`` and ``label_fix`` (the
    advice), and set ``self.dataset`` (the reader's name, prefixed to every message;
    ``""`` when the file path says enough).

    Args:
        num_classes: labels must lie in ``[0, num_classes)`` or equal ``ignore_index``.
        ignore_index: label of pixels left out of loss and metrics.
        transform: ``(image, mask) -> (FloatTensor (C, H, W), LongTensor (H, W))``; its
            ``channels`` attribute, when set, is the channel count every image must have.
        dataset: reader name for messages.

    Each item is ``{"image": FloatTensor (C, H, W), "mask": LongTensor (H, W), "name": str}``.
    """

    mask_word = "mask"
    size_fix = "masks must have their image's size: re-export the mask or resize it with nearest-neighbour"
    label_fix = "set num_classes or ignore_index, or fix the mask"

    def __init__(self, *, num_classes: int, ignore_index: int, transform: Callable | None, dataset: str = "") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.transform = transform
        self.dataset = dataset

    def __len__(self) -> int:
        raise NotImplementedError

    def files(self, index: int) -> tuple[Path, Path]:
        """``(image file, mask file)`` of pair ``index``."""
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        """The ``"name"`` of sample ``index`` (the file stem or the dataset's id)."""
        raise NotImplementedError

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` decoded but unchecked: image ``(H, W, C)``, mask ``(H, W)`` int64."""
        raise NotImplementedError

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and check pair ``index`` (see :func:`check_pair`)."""
        image, mask = self.load_raw(index)
        image_path, mask_path = self.files(index)
        check_pair(image, mask, image_path=image_path, mask_path=mask_path, num_classes=self.num_classes,
                   ignore_index=self.ignore_index, channels=getattr(self.transform, "channels", None),
                   prefix=f"{self.dataset}: " if self.dataset else "", mask_word=self.mask_word,
                   size_fix=self.size_fix, label_fix=self.label_fix)
        return image, mask

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(index)
        return make_sample(image, mask, self.sample_name(index), self.transform)
