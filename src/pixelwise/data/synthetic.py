"""The embedded default dataset: textured shapes on textured backgrounds.

Every step of pixelwise (train, evaluate, predict, export, serve) runs on this dataset
with no download. Each sample is a random textured background with 1..``max_objects``
shapes drawn over it; the class of a pixel is the *shape* of the object covering it
(circle, rectangle, triangle, star), never its colour, so a model has to learn shape.
Later objects occlude earlier ones and the mask follows the occlusion.

Sample ``i`` is generated from ``np.random.default_rng([seed, i])``: any index can be
produced on its own, in any worker, in any order, and always gives the same pixels.
"""

from __future__ import annotations

import zlib
from typing import Callable

import cv2
import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError
from .reader import reader
from .transforms import make_sample

__all__ = ["SyntheticShapes", "CLASS_NAMES"]

CLASS_NAMES: tuple[str, ...] = ("background", "circle", "rectangle", "triangle", "star")

# Objects must differ from what they are drawn over by at least this RGB distance
# (0..441), so every boundary is visible and the task stays learnable.
_MIN_CONTRAST = 90.0
# An object keeps at least this fraction of its in-image area after later objects
# occlude it; otherwise the later object is moved (or dropped).
_MIN_VISIBLE = 0.5
# Fixed-point precision for cv2 drawing (coordinates * 2**_SHIFT): smooth sub-pixel outlines.
_SHIFT = 4


def _texture(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A zero-mean ``(size, size)`` float32 texture in about [-1, 1]: noise, stripes or checker."""
    kind = rng.integers(3)
    if kind == 0:
        # Smooth noise at a random scale: a coarse grid upsampled.
        cells = int(rng.integers(3, max(4, size // 3)))
        coarse = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
        return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(0.06, 0.3) * size
    u = (np.cos(angle) * xx + np.sin(angle) * yy) * np.float32(2 * np.pi / period)
    if kind == 1:
        return np.sin(u)
    v = (-np.sin(angle) * xx + np.cos(angle) * yy) * np.float32(2 * np.pi / period)
    return np.sign(np.sin(u) * np.sin(v)).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour at least ``_MIN_CONTRAST`` away from ``under`` (8 tries, then one
    pushed away from it, which is always possible within 0..255)."""
    colour = rng.uniform(0.0, 255.0, 3)
    for _attempt in range(8):
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            return colour
        colour = rng.uniform(0.0, 255.0, 3)
    return np.where(under < 128.0, 255.0 - rng.uniform(0.0, 40.0, 3), rng.uniform(0.0, 40.0, 3))


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """``(size, size, 3)`` float32: a smooth colour gradient plus a tinted texture."""
    corners = rng.uniform(30.0, 225.0, (2, 2, 3)).astype(np.float32)
    image = cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)
    amplitude = rng.uniform(8.0, 30.0)
    tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
    image += (amplitude * _texture(rng, size, yy, xx))[..., None] * tint
    return image


def _outline(cls: int, rng: np.random.Generator, radius: float) -> np.ndarray:
    """Unrotated polygon vertices ``(K, 2)`` around the origin for class ``cls`` (2, 3 or 4)."""
    if cls == 2:  # rectangle, aspect ratio 1:1 .. 1:2
        half_w, half_h = radius * np.sqrt(0.5), radius * np.sqrt(0.5) * rng.uniform(0.5, 1.0)
        return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    if cls == 3:  # triangle, close to equilateral so it does not look like a sliver
        angles = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-12.0, 12.0, 3))
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    # five-pointed star: alternate outer and inner radius
    angles = np.deg2rad(90.0 + 36.0 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _draw(cls: int, rng: np.random.Generator, size: int, layer: np.ndarray) -> None:
    """Draw one object of class ``cls`` (1..4) filled with 1 into the zeroed uint8 ``layer``."""
    # Size is the object's diameter, 12%..45% of the image side.
    radius = 0.5 * size * rng.uniform(0.12, 0.45)
    # Centre inside the image, so at most about half an object is cut by the border.
    centre = rng.uniform(0.0, size, 2)
    scale = 1 << _SHIFT
    if cls == 1:
        c = tuple(int(round((v - 0.5) * scale)) for v in centre)
        cv2.circle(layer, c, int(round(radius * scale)), 1, thickness=-1, lineType=cv2.LINE_8, shift=_SHIFT)
        return
    points = _outline(cls, rng, radius)
    angle = rng.uniform(0.0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = points @ rotation.T + centre
    # Pixel centres sit at integer coordinates in cv2, hence the -0.5.
    cv2.fillPoly(layer, [np.round((points - 0.5) * scale).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_SHIFT)


class SyntheticShapes(Dataset):
    """Deterministic, generated segmentation dataset with 5 classes.

    Classes (``CLASS_NAMES``): background, circle, rectangle, triangle, star.

    Args:
        num_samples: dataset length.
        image_size: side of the square images in pixels.
        seed: dataset seed; sample ``i`` comes from ``np.random.default_rng([seed, i])``.
        transform: ``(image uint8 (H, W, 3), mask int64 (H, W)) -> (image (3, H, W), mask (H, W))``
            tensors, e.g. from :func:`pixelwise.data.transforms.build_transform`. Without it
            the image is scaled to 0..1 and not normalised.
        max_objects: at most this many shapes per image (at least 1).

    Each item is ``{"image": FloatTensor (3, H, W), "mask": LongTensor (H, W), "name": str}``.
    """

    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(
        self,
        num_samples: int,
        image_size: int = 64,
        seed: int = 0,
        transform: Callable | None = None,
        max_objects: int = 4,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"SyntheticShapes: num_samples must be >= 0, got {num_samples}")
        if image_size < 16:
            raise ValueError(f"SyntheticShapes: image_size must be >= 16 pixels, got {image_size}")
        if max_objects < 1:
            raise ValueError(f"SyntheticShapes: max_objects must be >= 1, got {max_objects}")
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.transform = transform
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.num_samples

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Make sample ``index`` (no transform).

        Returns:
            image ``(S, S, 3)`` uint8 RGB and mask ``(S, S)`` int64 with values in 0..4.
        """
        size = self.image_size
        rng = np.random.default_rng([self.seed, index])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        image = _background(rng, size, yy, xx)
        mask = np.zeros((size, size), dtype=np.int64)
        # owner[p] = which object covers pixel p (0 = none); lets us check occlusion.
        owner = np.zeros((size, size), dtype=np.int64)
        areas = [0]  # in-image area of each object as drawn, by owner id
        layer = np.zeros((size, size), dtype=np.uint8)
        for _ in range(int(rng.integers(1, self.max_objects + 1))):
            cls = int(rng.integers(1, len(CLASS_NAMES)))
            for _attempt in range(4):
                layer[:] = 0
                _draw(cls, rng, size, layer)
                inside = layer.astype(bool)
                area = int(inside.sum())
                if area < 0.5 * (0.06 * size) ** 2 * np.pi:
                    continue  # mostly outside the image: too small to learn from
                remaining = np.bincount(owner[~inside], minlength=len(areas))
                if np.all(remaining[1:] >= _MIN_VISIBLE * np.array(areas[1:])):
                    break
            else:
                continue  # no placement keeps the earlier objects visible: skip this one
            under = image[inside].mean(axis=0)
            colour = _contrasting_colour(rng, under)
            fill = np.empty((area, 3), dtype=np.float32)
            fill[:] = colour
            style = rng.integers(3)  # solid / stripes / noise
            if style > 0:
                texture = _texture(rng, size, yy, xx) if style == 1 else rng.uniform(-1.0, 1.0, (size, size))
                fill += (rng.uniform(10.0, 25.0) * texture[inside])[:, None].astype(np.float32)
            image[inside] = fill
            mask[inside] = cls
            owner[inside] = len(areas)
            areas.append(area)
        image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        return np.clip(image, 0.0, 255.0).astype(np.uint8), mask

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"SyntheticShapes index {index} out of range for {self.num_samples} samples")
        image, mask = self.generate(index)
        return make_sample(image, mask, f"synthetic_{index:05d}", self.transform)

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(num_samples={self.num_samples}, image_size={self.image_size}, "
            f"seed={self.seed}, max_objects={self.max_objects})"
        )


@reader("synthetic", class_names=CLASS_NAMES, preflight=False)
def build_synthetic(cfg, split: str, *, train: bool, transform: Callable | None) -> SyntheticShapes:
    """Registry builder: the train split and every other split get disjoint seeds.

    ``cfg`` is a :class:`pixelwise.config.DataCfg`; ``train`` (augment or not) is already
    folded into ``transform`` and does not change which images are generated.
    """
    if cfg.num_classes != len(CLASS_NAMES):
        raise ConfigError(
            f"data.num_classes is {cfg.num_classes} but the synthetic dataset has "
            f"{len(CLASS_NAMES)} classes {CLASS_NAMES}; set data.num_classes={len(CLASS_NAMES)}"
        )
    is_train_split = split == cfg.train_split
    if is_train_split:
        seed = cfg.seed
    elif split == cfg.val_split:
        seed = cfg.seed + 1_000_003  # a large odd offset keeps validation out of the training stream
    else:  # any other split (e.g. "test") gets its own stream, derived from its name
        seed = cfg.seed + 2_000_003 + zlib.crc32(split.encode()) % 1_000_000
    return SyntheticShapes(
        num_samples=cfg.train_samples if is_train_split else cfg.val_samples,
        image_size=cfg.crop_size,
        seed=seed,
        transform=transform,
    )
