"""How stored pixels become the network's input: one :class:`Preprocess` for training,
evaluation, prediction, serving and the model card.

``data.image_mode: rgb`` (the default) reads every image as 8-bit RGB and normalises
``(x / 255 - mean) / std`` with ``data.mean`` / ``data.std`` on the 0..1 scale: photographs and
ImageNet encoders.

``data.image_mode: raw`` reads the stored values (uint8, uint16, int16, float; 1..N channels:
PNG, TIFF, NumPy) and normalises each channel explicitly, by ``data.normalize``:

- ``dataset``: ``(clip(x) - mean_c) / std_c`` with ``data.mean`` / ``data.std`` on the stored
  value scale (one value per channel), which ``pixelwise check`` measures and prints; optional
  ``data.clip: [low, high]`` first (a CT window, a saturation level, or check's 0.5/99.5
  percentiles). The same intensity means the same thing in every image: use it when the
  acquisition is calibrated (CT, most satellite products, a fixed microscope setup).
- ``zscore``: each channel of each image to zero mean and unit std, as nnU-Net does for MRI
  and MONAI's ``NormalizeIntensity``; robust to a gain that changes from image to image.
- ``minmax``: each channel of each image to 0..1.

``data.clip_percentiles: [low, high]`` (e.g. ``[0.5, 99.5]``) clips each channel of each image
to its own percentiles before ``zscore``/``minmax`` (nnU-Net's rule against hot pixels).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .io import decode_image, decode_raw_image, read_image, read_raw_image

__all__ = ["IMAGE_MODES", "NORMALIZE_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "Preprocess"]

IMAGE_MODES = ("rgb", "raw")
NORMALIZE_MODES = ("dataset", "zscore", "minmax")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _pair(value: Any, key: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or not value[0] < value[1]):
        raise ConfigError(f"data.{key} must be [low, high] with two finite numbers, low < high; got {value!r}")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class Preprocess:
    """Read and normalise images the way a model was trained (module docstring).

    Build it from a config with :meth:`from_cfg` or from a saved model's ``config.json`` data
    section with :meth:`from_dict`; :meth:`to_dict` is what the model folder keeps.
    """

    image_mode: str = "rgb"
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_STD)
    normalize: str = "dataset"
    clip: tuple[float, float] | None = None
    clip_percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.image_mode not in IMAGE_MODES:
            raise ConfigError(f"data.image_mode is {self.image_mode!r}; valid: {', '.join(IMAGE_MODES)}")
        if self.normalize not in NORMALIZE_MODES:
            raise ConfigError(f"data.normalize is {self.normalize!r}; valid: {', '.join(NORMALIZE_MODES)}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "clip", _pair(self.clip, "clip"))
        object.__setattr__(self, "clip_percentiles", _pair(self.clip_percentiles, "clip_percentiles"))
        if self.clip_percentiles is not None and not 0 <= self.clip_percentiles[0] < self.clip_percentiles[1] <= 100:
            raise ConfigError(f"data.clip_percentiles must lie in 0..100, got {list(self.clip_percentiles)}")
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise ConfigError(f"data.mean and data.std need one value per channel and std > 0; got "
                              f"{list(self.mean)} and {list(self.std)}")
        if self.image_mode == "rgb":
            if self.normalize != "dataset" or self.clip is not None or self.clip_percentiles is not None:
                raise ConfigError("data.normalize, data.clip and data.clip_percentiles apply to data.image_mode: raw "
                                  "(stored values); RGB images are normalised by data.mean / data.std on the 0..1 "
                                  "scale: set data.image_mode: raw or remove those keys")
            if len(self.mean) not in (1, 3):
                raise ConfigError(f"data.mean and data.std need 3 values (R, G, B) with data.image_mode: rgb, got "
                                  f"{list(self.mean)}; for other channel counts set data.image_mode: raw")
        elif self.normalize == "dataset" and list(self.mean) == IMAGENET_MEAN and list(self.std) == IMAGENET_STD:
            raise ConfigError("data.image_mode: raw with data.normalize: dataset needs data.mean and data.std on the "
                              "stored value scale (one value per channel), not ImageNet's 0..1 RGB values: run "
                              "`pixelwise check CONFIG`, which measures them and prints the two lines to paste, or "
                              "set data.normalize: zscore to normalise each image by its own statistics")

    @classmethod
    def from_cfg(cls, data) -> Preprocess:
        """From a :class:`~pixelwise.config.DataCfg` (or anything with its attributes)."""
        return cls(image_mode=getattr(data, "image_mode", "rgb"), mean=data.mean, std=data.std,
                   normalize=getattr(data, "normalize", "dataset"), clip=getattr(data, "clip", None),
                   clip_percentiles=getattr(data, "clip_percentiles", None))

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        """From a saved ``config.json`` ``data`` section (folders saved before raw mode are RGB)."""
        return cls(image_mode=data.get("image_mode", "rgb"), mean=data.get("mean") or IMAGENET_MEAN,
                   std=data.get("std") or IMAGENET_STD, normalize=data.get("normalize", "dataset"),
                   clip=data.get("clip"), clip_percentiles=data.get("clip_percentiles"))

    def to_dict(self) -> dict:
        """The ``config.json`` keys: ``image_mode``, ``mean``, ``std`` (+ the raw-mode keys)."""
        out: dict[str, Any] = {"image_mode": self.image_mode, "mean": list(self.mean), "std": list(self.std)}
        if self.image_mode == "raw":
            out.update(normalize=self.normalize, clip=None if self.clip is None else list(self.clip),
                       clip_percentiles=None if self.clip_percentiles is None else list(self.clip_percentiles))
        return out

    @property
    def raw(self) -> bool:
        return self.image_mode == "raw"

    @property
    def channels(self) -> int | None:
        """Channels every image must have: 3 (RGB), ``len(mean)`` (raw + dataset), else None (any)."""
        if not self.raw:
            return 3
        return len(self.mean) if self.normalize == "dataset" else None

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """Read a file: ``(H, W, 3)`` uint8 RGB, or in raw mode ``(H, W, C)`` as stored."""
        return read_raw_image(path) if self.raw else read_image(path)

    def decode(self, data: bytes, name: str = "<uploaded bytes>") -> np.ndarray:
        """:meth:`read` for encoded bytes (uploads)."""
        return decode_raw_image(data, name) if self.raw else decode_image(data, name)

    def array(self, image: np.ndarray) -> np.ndarray:
        """Normalise an ``(H, W, C)`` image (as :meth:`read` returns it) to float32 ``(H, W, C)``."""
        x = np.asarray(image)
        if x.ndim == 2:
            x = x[:, :, None]
        if not self.raw:
            if x.dtype != np.uint8:
                raise DataError(f"RGB preprocessing takes uint8 pixels, got {x.dtype}")
            scale = np.float32(1.0 / 255.0)
            return (x.astype(np.float32) * scale - np.float32(self.mean)) / np.float32(self.std)
        x = x.astype(np.float32, copy=True)
        if self.clip is not None:
            np.clip(x, self.clip[0], self.clip[1], out=x)
        if self.clip_percentiles is not None:
            flat = x.reshape(-1, x.shape[2])
            low, high = np.percentile(flat, self.clip_percentiles, axis=0)
            np.clip(x, low.astype(np.float32), high.astype(np.float32), out=x)
        if self.normalize == "dataset":
            if x.shape[2] != len(self.mean):
                raise DataError(f"image has {x.shape[2]} channel(s) but data.mean/data.std have {len(self.mean)}")
            return (x - np.float32(self.mean)) / np.float32(self.std)
        flat = x.reshape(-1, x.shape[2]).astype(np.float64)  # float64 sums: exact enough on big tiles
        if self.normalize == "zscore":
            centre, spread = flat.mean(axis=0), flat.std(axis=0)
        else:
            centre = flat.min(axis=0)
            spread = flat.max(axis=0) - centre
        return ((x - centre.astype(np.float32)) / np.maximum(spread, 1e-8).astype(np.float32)).astype(np.float32)

    def tensor(self, image: np.ndarray) -> torch.Tensor:
        """:meth:`array` as a ``(C, H, W)`` float32 tensor."""
        return torch.from_numpy(np.ascontiguousarray(self.array(image).transpose(2, 0, 1)))

    def describe(self) -> str:
        """One sentence for the model card: how to turn an image into this model's input."""
        if not self.raw:
            return (f"RGB pixels scaled to 0..1, then `(x - mean) / std` with mean `{list(self.mean)}`, "
                    f"std `{list(self.std)}`.")
        steps = ["the stored pixel values (any dtype), every channel kept (`data.image_mode: raw`)"]
        if self.clip is not None:
            steps.append(f"clipped to `{list(self.clip)}`")
        if self.clip_percentiles is not None:
            steps.append(f"each channel clipped to its own percentiles `{list(self.clip_percentiles)}`")
        if self.normalize == "dataset":
            steps.append(f"then `(x - mean) / std` per channel with mean `{list(self.mean)}`, std `{list(self.std)}`")
        elif self.normalize == "zscore":
            steps.append("then each channel of each image to zero mean and unit std")
        else:
            steps.append("then each channel of each image to 0..1 (min-max)")
        return ", ".join(steps) + "."

