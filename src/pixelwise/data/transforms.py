"""Augmentation presets (albumentations 2.x, OpenCV-backed) and a padding collate function.

A transform is a callable ``(image uint8 (H, W, 3), mask int (H, W)) -> (image, mask)``
returning an ``(3, H, W)`` float32 tensor normalised with ``mean``/``std`` (on the 0..1
scale) and an ``(H, W)`` int64 tensor. Geometric steps move image and mask together;
masks always use nearest-neighbour interpolation (a blended label is a wrong label),
and every pixel that comes from outside the image (padding, rotation corners) gets
``ignore_index`` in the mask so it is left out of the loss and the metrics.

Presets:

- ``"none"``: normalise only (train and eval).
- ``"standard"``: train = random scale 0.5-2.0, pad to ``crop_size``, random crop,
  horizontal flip, rotation +-15 degrees, brightness/contrast jitter.
- ``"unet"``: ``"standard"`` + elastic deformation, the augmentation that
  Ronneberger et al., "U-Net" (MICCAI 2015) found key for learning from few images:
  smooth random displacement fields (:class:`GridElastic`).

For every preset except ``"none"``, eval pads to at least ``crop_size`` and does not crop:
models take any size, and evaluating on whole images measures what users will get.
"""

from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from ..errors import ConfigError

__all__ = ["PRESETS", "GridElastic", "SegTransform", "EpochSeeded", "build_transform", "pad_collate"]

PRESETS: tuple[str, ...] = ("none", "standard", "unet")


def _mask_dtype(mask: np.ndarray, ignore_index: int) -> np.dtype:
    # OpenCV warps only 8/16-bit integer and float images, not int64: pick the smallest
    # type that holds every label and the fill value exactly.
    low = min(int(mask.min()) if mask.size else 0, ignore_index)
    high = max(int(mask.max()) if mask.size else 0, ignore_index)
    for dtype in (np.uint8, np.uint16, np.int16):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)  # exact for integers below 2**24


class GridElastic(A.DualTransform):
    """Elastic deformation from random displacements on a coarse grid, as in U-Net.

    Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation"
    (MICCAI 2015), Sec. 3.1: displacement vectors on a coarse 3x3 grid drawn from a
    Gaussian (10 px std on their ~570 px tiles), interpolated bicubically to a smooth
    per-pixel field. The std here is ``magnitude`` times the shorter image side so the
    deformation looks the same at any crop size.

    Args:
        grid: coarse grid points per side.
        magnitude: displacement std as a fraction of the shorter side (0.02 ~ the paper's).
        fill: image value for pixels pulled from outside the image.
        fill_mask: mask value for those pixels (the ignore index).
        p: probability of applying.
    """

    def __init__(self, grid: int = 3, magnitude: float = 0.02, fill: float = 0, fill_mask: float = 255,
                 p: float = 0.5) -> None:
        super().__init__(p=p)
        self.grid = grid
        self.magnitude = magnitude
        self.fill = fill
        self.fill_mask = fill_mask

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        std = self.magnitude * min(height, width)
        coarse = self.random_generator.normal(0.0, std, (2, self.grid, self.grid)).astype(np.float32)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        map_x = xx + cv2.resize(coarse[0], (width, height), interpolation=cv2.INTER_CUBIC)
        map_y = yy + cv2.resize(coarse[1], (width, height), interpolation=cv2.INTER_CUBIC)
        return {"map_x": map_x, "map_y": map_y}

    def apply(self, img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params) -> np.ndarray:
        return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=self.fill)

    def apply_to_mask(self, mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params) -> np.ndarray:
        return cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("grid", "magnitude", "fill", "fill_mask")


class SegTransform:
    """An albumentations pipeline applied to an (image, mask) pair, returning tensors.

    Each DataLoader worker re-seeds the pipeline from its own torch seed on first use:
    albumentations keeps a private random generator that forked workers would otherwise
    share, giving every worker the same sequence of augmentations. ``reseed`` fixes the
    generator explicitly (see :class:`EpochSeeded`) and takes precedence.

    Args:
        compose: the albumentations pipeline (ending in ``Normalize`` + ``ToTensorV2``).
        ignore_index: mask fill value, used to choose a mask dtype OpenCV can warp.
    """

    def __init__(self, compose: A.Compose, *, ignore_index: int) -> None:
        self.compose = compose
        self.ignore_index = ignore_index
        self._worker_seed: int | None = None

    def reseed(self, seed: int) -> None:
        """Restart the augmentation generator from ``seed`` (a non-negative int)."""
        self.compose.set_random_seed(seed)
        # An explicit seed wins over the automatic per-worker one.
        info = get_worker_info()
        self._worker_seed = info.seed if info is not None else None

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.compose.set_random_seed(info.seed % 2**32)
        mask = np.asarray(mask)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
            raise ValueError(f"transform expects image (H, W, 3) and mask (H, W), got {image.shape} and {mask.shape}")
        out = self.compose(image=image, mask=mask.astype(_mask_dtype(mask, self.ignore_index), copy=False))
        return out["image"].float(), out["mask"].long()

    def __repr__(self) -> str:
        return f"SegTransform({self.compose!r})"


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list:
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def build_transform(
    preset: str,
    *,
    train: bool,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
    seed: int | None = None,
) -> SegTransform:
    """Build a preset transform.

    Args:
        preset: ``"none"``, ``"standard"`` or ``"unet"`` (see the module docstring).
        train: random augmentation (True) or deterministic eval padding (False).
        crop_size: side of the square training crop; eval pads up to it.
        mean, std: per-channel normalisation on the 0..1 scale.
        ignore_index: mask value for padded and out-of-image pixels.
        seed: seed for the augmentation generator (workers re-seed from torch anyway).

    Returns:
        callable ``(image uint8 (H, W, 3), mask int (H, W)) -> (FloatTensor (3, H, W),
        LongTensor (H, W))``; with ``train=True`` and a geometric preset, H = W = crop_size.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown data.augment {preset!r}; valid presets: {', '.join(PRESETS)}")
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"data.mean and data.std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
    if crop_size < 1:
        raise ConfigError(f"data.crop_size must be positive, got {crop_size}")
    pad = A.PadIfNeeded(
        min_height=crop_size,
        min_width=crop_size,
        # Train: random placement so objects are not always centred. Eval: bottom/right,
        # like pad_collate, so the image keeps its top-left origin.
        position="random" if train else "top_left",
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=ignore_index,
    )
    steps: list = []
    if preset != "none" and not train:
        steps = [pad]
    elif preset != "none":
        steps = [
            # scale factor = 1 + U(-0.5, 1.0), i.e. 0.5x .. 2x
            A.RandomScale(scale_limit=(-0.5, 1.0), interpolation=cv2.INTER_LINEAR,
                          mask_interpolation=cv2.INTER_NEAREST, p=1.0),
            pad,
            A.RandomCrop(height=crop_size, width=crop_size),
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=15, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                     border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index, p=0.5),
        ]
        if preset == "unet":
            steps.append(GridElastic(grid=3, magnitude=0.02, fill_mask=ignore_index, p=0.5))
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5))
    compose = A.Compose(steps + _normalise(mean, std), seed=seed)
    return SegTransform(compose, ignore_index=ignore_index)


class EpochSeeded(Dataset):
    """Wrap a dataset so sample ``i``'s augmentation depends only on (epoch seed, ``i``).

    Before reading sample ``i`` the wrapped dataset's transform is re-seeded from
    ``(epoch_seed, i)``, so the augmentations are the same whatever the order, the batch
    size or the number of workers, and a resumed run replays them exactly. Call
    ``set_epoch_seed`` before creating each epoch's iterator: workers copy the dataset
    when the iterator starts (so it has no effect on ``persistent_workers=True`` loaders).

    Args:
        dataset: a dataset whose ``transform`` attribute is a :class:`SegTransform`
            (anything else, or no transform, is read unchanged).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch_seed = 0

    def set_epoch_seed(self, seed: int) -> None:
        """Use ``seed`` (non-negative int) for the augmentations of the coming epoch."""
        if seed < 0:
            raise ValueError(f"EpochSeeded.set_epoch_seed needs a non-negative seed, got {seed}")
        self.epoch_seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        transform = getattr(self.dataset, "transform", None)
        if isinstance(transform, SegTransform):
            index = index + len(self) if index < 0 else index
            # SeedSequence mixes (epoch, index) so neighbouring pairs give unrelated streams.
            transform.reseed(int(np.random.SeedSequence([self.epoch_seed, index]).generate_state(1)[0]))
        return self.dataset[index]

    def __repr__(self) -> str:
        return f"EpochSeeded({self.dataset!r}, epoch_seed={self.epoch_seed})"


def make_sample(image: np.ndarray, mask: np.ndarray, name: str, transform=None) -> dict:
    """The sample dict every dataset returns: ``transform(image, mask)``, or without a
    transform the image scaled to 0..1, as ``{"image": (3, H, W), "mask": (H, W), "name"}``."""
    if transform is not None:
        image_t, mask_t = transform(image, mask)
    else:
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        mask_t = torch.from_numpy(np.asarray(mask, dtype=np.int64))
    return {"image": image_t, "mask": mask_t, "name": name}


def pad_collate(batch: list[dict], ignore_index: int = 255) -> dict:
    """Collate samples of different sizes by padding to the largest H and W in the batch.

    Padding goes bottom/right: images get 0, masks get ``ignore_index`` so padded pixels
    count in neither loss nor metrics. ``"name"`` stays a list; other keys use
    ``default_collate``. Use ``functools.partial(pad_collate, ignore_index=...)`` as a
    DataLoader ``collate_fn``.

    Args:
        batch: list of ``{"image": (C, H_i, W_i), "mask": (H_i, W_i), "name": str, ...}``.

    Returns:
        ``{"image": (N, C, H, W), "mask": (N, H, W) int64, "name": list[str], ...}``.
    """
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    height = max(s["image"].shape[-2] for s in batch)
    width = max(s["image"].shape[-1] for s in batch)
    first = batch[0]["image"]
    images = first.new_zeros((len(batch), first.shape[0], height, width))
    masks = torch.full((len(batch), height, width), ignore_index, dtype=torch.long)
    for i, sample in enumerate(batch):
        h, w = sample["image"].shape[-2:]
        if tuple(sample["mask"].shape) != (h, w):
            raise ValueError(
                f"pad_collate: sample {sample.get('name', i)!r} has image {tuple(sample['image'].shape)} "
                f"but mask {tuple(sample['mask'].shape)}; they must have the same H, W"
            )
        images[i, :, :h, :w] = sample["image"]
        masks[i, :h, :w] = sample["mask"]
    out = {"image": images, "mask": masks}
    for key in batch[0]:
        if key in ("image", "mask"):
            continue
        values = [sample[key] for sample in batch]
        out[key] = values if key == "name" else default_collate(values)
    return out
