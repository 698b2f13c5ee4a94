"""Augmentation presets (albumentations 2.x, OpenCV-backed) and a padding collate function.

A transform is a callable ``(image uint8 (H, W, 3), mask int (H, W)) -> (image, mask)``
returning an ``(3, H, W)`` float32 tensor normalised with ``mean``/``std`` (on the 0..1
scale) and an ``(H, W)`` int64 tensor. With ``data.image_mode: raw`` the image is
``(H, W, C)`` of any dtype, normalised first by :class:`~pixelwise.data.intensity.Preprocess`,
and the result is ``(C, H, W)``; the photometric jitter (an RGB operation) is then skipped. Geometric steps move image and mask together;
masks always use nearest-neighbour interpolation (a blended label is a wrong label),
and every pixel that comes from outside the image (padding, rotation corners) gets
``ignore_index`` in the mask so it is left out of the loss and the metrics.

Presets:

- ``"none"``: normalise only (train and eval).
- ``"scale_crop"``: train = random scale 0.5-2.0, random ``crop_size`` crop (padded
  with ignore where the scaled image is smaller), horizontal flip: the DeepLab recipe.
- ``"standard"``: ``"scale_crop"`` + rotation +-15 degrees (p=0.5) + photometric jitter
  (brightness, contrast, saturation +-20 %, p=0.8; :class:`PhotometricJitter`).
- ``"unet"``: ``"standard"`` + elastic deformation (p=0.5), the augmentation that
  Ronneberger et al., "U-Net" (MICCAI 2015) found key for learning from few images:
  smooth random displacement fields on a coarse grid.

The geometric steps of a train preset run as one resampling
(:class:`~pixelwise.data.warp.AffineElasticCrop`), so their cost depends on the crop
size only. For every preset except ``"none"``, eval pads to at least ``crop_size`` and
does not crop: models take any size, and evaluating on whole images measures what users
will get. :func:`tta_for_preset` names the test-time augmentation that stays within what
a preset trained on (the flips and the scale range it saw).

``resize=(H, W)`` (``data.resize``) first resizes every image (bilinear) and mask
(nearest) to a fixed size, in training and evaluation, before the preset: recipes that
train at one resolution, such as FCN-8s on KITTI Road at 160x576, use it with ``"none"``.
Metrics are then computed at that resolution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from ..errors import ConfigError, DataError
from .intensity import Preprocess

if TYPE_CHECKING:
    import albumentations as A

# albumentations (and the transforms built on it) load on first use: ``import pixelwise`` for
# inference, export or serving never needs them (see augment_ops.py).
_LAZY = {"AffineElasticCrop": ".warp", "GridElastic": ".augment_ops", "PhotometricJitter": ".augment_ops"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["PRESETS", "TTA_FOR_PRESET", "AffineElasticCrop", "GridElastic", "PhotometricJitter", "SegTransform",
           "EpochSeeded", "build_transform", "tta_for_preset", "pad_collate"]

PRESETS: tuple[str, ...] = ("none", "scale_crop", "standard", "unet")
# Test-time augmentation (infer.tta's names) consistent with each preset: only the flips
# the model was trained with, and scales inside the 0.5-2.0 training range.
TTA_FOR_PRESET: dict[str, str] = {"none": "none", "scale_crop": "flip+scales", "standard": "flip+scales",
                                  "unet": "flip+scales"}


def _mask_dtype(mask: np.ndarray, ignore_index: int) -> np.dtype:
    # OpenCV warps only 8/16-bit integer and float images, not int64: pick the smallest
    # type that holds every label and the fill value exactly.
    if mask.dtype == np.uint8 and 0 <= ignore_index <= 255:
        return mask.dtype  # already warpable: skip the two passes over the mask
    low = min(int(mask.min()) if mask.size else 0, ignore_index)
    high = max(int(mask.max()) if mask.size else 0, ignore_index)
    for dtype, smallest, largest in _MASK_TYPES:
        if smallest <= low and high <= largest:
            return np.dtype(dtype)
    return np.dtype(np.float32)  # exact for integers below 2**24


_MASK_TYPES = ((np.uint8, 0, 255), (np.uint16, 0, 65535), (np.int16, -32768, 32767))


class SegTransform:
    """An albumentations pipeline applied to an (image, mask) pair, returning tensors.

    Each DataLoader worker re-seeds the pipeline from its own torch seed on first use:
    albumentations keeps a private random generator that forked workers would otherwise
    share, giving every worker the same sequence of augmentations. ``reseed`` fixes the
    generator explicitly (see :class:`EpochSeeded`) and takes precedence.

    Args:
        compose: the albumentations pipeline, ending in ``Normalize`` (float32 HWC out; a
            final ``ToTensorV2`` is accepted too).
        ignore_index: mask fill value, used to choose a mask dtype OpenCV can warp.
        channels: channels every image must have (None: any; ``data.image_mode: raw`` with
            per-image normalisation).
    """

    def __init__(self, compose: A.Compose, *, ignore_index: int, channels: int | None = 3) -> None:
        self.compose = compose
        self.ignore_index = ignore_index
        self.channels = channels
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
        if (image.ndim != 3 or image.shape[:2] != mask.shape
                or (self.channels is not None and image.shape[2] != self.channels)):
            want = "C" if self.channels is None else self.channels
            raise ValueError(f"transform expects image (H, W, {want}) and mask (H, W), got {image.shape} and "
                             f"{mask.shape}")
        out = self.compose(image=image, mask=mask.astype(_mask_dtype(mask, self.ignore_index), copy=False))
        x, y = out["image"], out["mask"]
        # HWC -> CHW and the label widening in numpy: torch would spread these small copies
        # over its OpenMP threads, which fight OpenCV's pool (measured 5x slower on 2 cores).
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
        if isinstance(y, np.ndarray):
            y = torch.from_numpy(y.astype(np.int64))
        return x.float(), y.long()

    def __repr__(self) -> str:
        return f"SegTransform({self.compose!r})"


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list:
    import albumentations as A

    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)]


def build_transform(
    preset: str,
    *,
    train: bool,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
    seed: int | None = None,
    resize: Sequence[int] | None = None,
    preprocess: Preprocess | None = None,
) -> SegTransform:
    """Build a preset transform.

    Args:
        preset: ``"none"``, ``"scale_crop"``, ``"standard"`` or ``"unet"`` (module docstring).
        train: random augmentation (True) or deterministic eval padding (False).
        crop_size: side of the square training crop; eval pads up to it.
        mean, std: per-channel normalisation on the 0..1 scale.
        ignore_index: mask value for padded and out-of-image pixels.
        seed: seed for the augmentation generator (workers re-seed from torch anyway).
        resize: optional ``(height, width)`` every pair is resized to first.
        preprocess: how stored pixels are normalised (:class:`~pixelwise.data.intensity.Preprocess`);
            None is RGB with ``mean``/``std``. In raw mode the image is normalised first, so
            padding and out-of-image pixels get 0 (the normalised mean), and the photometric
            jitter (an RGB operation) is left out: N-channel images get geometric augmentation.

    Returns:
        callable ``(image uint8 (H, W, 3), mask int (H, W)) -> (FloatTensor (3, H, W),
        LongTensor (H, W))``; with ``train=True`` and a geometric preset, H = W = crop_size.
    """
    import albumentations as A
    import cv2

    from .augment_ops import ChannelNormalize, PhotometricJitter
    from .warp import AffineElasticCrop

    if preset not in PRESETS:
        raise ConfigError(f"unknown data.augment {preset!r}; valid presets: {', '.join(PRESETS)}")
    if preprocess is None:
        preprocess = Preprocess(mean=mean, std=std)
    if not preprocess.raw and (len(preprocess.mean) != 3 or len(preprocess.std) != 3):
        raise ConfigError(f"data.mean and data.std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
    if crop_size < 1:
        raise ConfigError(f"data.crop_size must be positive, got {crop_size}")
    steps: list = [ChannelNormalize(preprocess)] if preprocess.raw else []
    if resize is not None:
        if len(resize) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resize):
            raise ConfigError(f"data.resize must be [height, width] with two positive integers, got {resize!r}")
        steps.append(A.Resize(int(resize[0]), int(resize[1]), interpolation=cv2.INTER_LINEAR,
                              mask_interpolation=cv2.INTER_NEAREST))
    if preset != "none" and not train:
        # Bottom/right padding, like pad_collate, so the image keeps its top-left origin.
        steps += [A.PadIfNeeded(min_height=crop_size, min_width=crop_size, position="top_left",
                                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index)]
    elif preset != "none":
        steps += [AffineElasticCrop(size=crop_size, scale=(0.5, 2.0), hflip_p=0.5, rotate=15.0,
                                    rotate_p=0.0 if preset == "scale_crop" else 0.5,
                                    elastic_p=0.5 if preset == "unet" else 0.0, elastic_grid=3,
                                    elastic_magnitude=0.02, fill=0, fill_mask=ignore_index)]
        if preset != "scale_crop" and not preprocess.raw:
            steps.append(PhotometricJitter(brightness=0.2, contrast=0.2, saturation=0.2, p=0.8))
    if not preprocess.raw:
        steps += _normalise(preprocess.mean, preprocess.std)
    compose = A.Compose(steps, seed=seed)
    return SegTransform(compose, ignore_index=ignore_index, channels=preprocess.channels)


def tta_for_preset(preset: str) -> str:
    """The test-time augmentation (an ``infer.tta.parse_tta`` name) consistent with a
    training preset: horizontal flip and scales 0.75-1.25 for the presets that train with
    flips and 0.5-2.0 scaling, none for ``"none"`` (the model never saw a flipped image)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown data.augment {preset!r}; valid presets: {', '.join(PRESETS)}")
    return TTA_FOR_PRESET[preset]


class EpochSeeded(Dataset):
    """Wrap a dataset so sample ``i``'s augmentation depends only on (epoch seed, ``i``).

    Before reading sample ``i`` the wrapped dataset's transform is re-seeded from
    ``(epoch_seed, i)``, so the augmentations are the same whatever the order, the batch
    size or the number of workers, and a resumed run replays them exactly. Call
    ``set_epoch_seed`` before creating each epoch's iterator: workers copy the dataset
    when the iterator starts (so it has no effect on ``persistent_workers=True`` loaders).

    Args:
        dataset: a dataset whose ``transform`` attribute has ``reseed(seed)`` (a
            :class:`SegTransform`, an instance transform; anything else is read unchanged).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.epoch_seed = 0

    def set_epoch_seed(self, seed: int) -> None:
        """Use ``seed`` (non-negative int) for the augmentations of the coming epoch; a
        wrapped dataset that seeds itself (3D patch sampling) gets the seed too."""
        if seed < 0:
            raise ValueError(f"EpochSeeded.set_epoch_seed needs a non-negative seed, got {seed}")
        self.epoch_seed = seed
        if hasattr(self.dataset, "set_epoch_seed"):
            self.dataset.set_epoch_seed(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        transform = getattr(self.dataset, "transform", None)
        # Any transform with reseed(seed): SegTransform, InstanceTransform, ...
        if callable(getattr(transform, "reseed", None)):
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
    """Collate samples of different sizes by padding every spatial axis to the largest in
    the batch: (H, W) for images, (D, H, W) for volumes.

    Padding goes at the far end (bottom/right/back): images get 0, masks get
    ``ignore_index`` so padded pixels count in neither loss nor metrics. ``"name"`` stays a
    list; other keys use ``default_collate``. Use ``functools.partial(pad_collate,
    ignore_index=...)`` as a DataLoader ``collate_fn``.

    Args:
        batch: list of ``{"image": (C, *S_i), "mask": S_i, "name": str, ...}`` with
            ``S_i`` = (H, W) or (D, H, W).

    Returns:
        ``{"image": (N, C, *S), "mask": (N, *S) int64, "name": list[str], ...}``.
    """
    if not batch:
        raise ValueError("pad_collate got an empty batch")
    first = batch[0]["image"]
    for i, sample in enumerate(batch):
        if tuple(sample["mask"].shape) != tuple(sample["image"].shape[1:]) or sample["image"].dim() != first.dim():
            raise ValueError(
                f"pad_collate: sample {sample.get('name', i)!r} has image {tuple(sample['image'].shape)} "
                f"but mask {tuple(sample['mask'].shape)}; the mask must match the image's spatial size"
            )
        if sample["image"].shape[0] != first.shape[0]:
            raise DataError(f"image {sample.get('name', i)!r} has {sample['image'].shape[0]} channel(s) but "
                            f"{batch[0].get('name', 0)!r} in the same batch has {first.shape[0]}: every image of a "
                            f"dataset needs the same channels (pixelwise check lists each image's channels)")
    size = tuple(max(s["image"].shape[1 + a] for s in batch) for a in range(first.dim() - 1))
    images = first.new_zeros((len(batch), first.shape[0]) + size)
    masks = torch.full((len(batch),) + size, ignore_index, dtype=torch.long)
    for i, sample in enumerate(batch):
        region = tuple(slice(0, n) for n in sample["mask"].shape)
        images[(i, slice(None)) + region] = sample["image"]
        masks[(i,) + region] = sample["mask"]
    out = {"image": images, "mask": masks}
    for key in batch[0]:
        if key in ("image", "mask"):
            continue
        values = [sample[key] for sample in batch]
        out[key] = values if key == "name" else default_collate(values)
    return out
