"""Volumetric patch sampling, normalisation and augmentation for 3D segmentation.

Arrays are numpy: images ``(C, D, H, W)`` float32, labels ``(D, H, W)`` int64. Every
random step takes an explicit ``numpy.random.Generator``, so a sample is reproducible
from its seed and independent of worker count and order.

Patch sampling follows nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for
deep learning-based biomedical image segmentation", Nature Methods 2021): a fraction of
patches is forced to contain foreground, centred on a voxel of a randomly chosen present
class, because with small foreground structures random patches would be almost all
background. The elastic deformation is the one of the 3D U-Net (Çiçek et al., MICCAI 2016):
random displacement vectors on a coarse grid, smoothly interpolated to every voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["normalize_intensity", "crop_or_pad", "sample_patch", "elastic_deform", "Augment3d", "NORMALIZE_MODES"]

NORMALIZE_MODES: tuple[str, ...] = ("zscore", "minmax", "none")


def normalize_intensity(image: np.ndarray, *, mode: str = "zscore", window: tuple[float, float] | None = None,
                        clip_percentiles: tuple[float, float] | None = None, nonzero: bool = False) -> np.ndarray:
    """Per-volume, per-channel intensity normalisation of ``(C, D, H, W)``.

    Steps, in order: clip to the fixed ``window`` (a CT window in Hounsfield units, e.g.
    ``(-1000, 400)`` for lung), clip to the channel's ``clip_percentiles`` (e.g. ``(0.5, 99.5)``,
    nnU-Net's CT rule, robust to metal and air), then ``mode``: ``"zscore"`` (zero mean, unit
    std), ``"minmax"`` (0..1) or ``"none"``. With ``nonzero`` the statistics come from non-zero
    voxels only and zero voxels stay 0 (skull-stripped MRI, where 0 is outside the brain).

    Returns:
        float32 ``(C, D, H, W)``.
    """
    if mode not in NORMALIZE_MODES:
        raise ConfigError(f"data.args.normalize is {mode!r}; valid: {', '.join(NORMALIZE_MODES)}")
    out = image.astype(np.float32, copy=True)
    for c in range(out.shape[0]):
        channel = out[c]
        region = channel != 0 if nonzero else np.ones(channel.shape, dtype=bool)
        if window is not None:
            np.clip(channel, window[0], window[1], out=channel)
        values = channel[region]
        if values.size == 0:
            continue
        if clip_percentiles is not None:
            low, high = np.percentile(values, clip_percentiles)
            np.clip(channel, low, high, out=channel)
            values = channel[region]
        if mode == "zscore":
            # float64 statistics: a float32 sum over 10^8 voxels loses digits.
            mean, std = values.mean(dtype=np.float64), values.std(dtype=np.float64)
            channel[region] = (values - mean) / max(std, 1e-8)
        elif mode == "minmax":
            low, high = float(values.min()), float(values.max())
            channel[region] = (values - low) / max(high - low, 1e-8)
    return out


def crop_or_pad(array: np.ndarray, origin: tuple[int, ...], size: tuple[int, ...], fill: float) -> np.ndarray:
    """The box ``[origin, origin + size)`` of the last ``len(size)`` axes of ``array``.

    Parts of the box outside the array are ``fill`` (image 0, labels the ignore index).
    Only the overlap is copied, never a padded copy of the whole volume.
    """
    lead = array.shape[: array.ndim - len(size)]
    spatial = array.shape[array.ndim - len(size):]
    out = np.full(lead + tuple(size), fill, dtype=array.dtype)
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for o, s, n in zip(origin, size, spatial):
        lo, hi = max(o, 0), min(o + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    out[tuple(dst)] = array[tuple(src)]
    return out


def sample_patch(label: np.ndarray, patch_size: tuple[int, int, int], rng: np.random.Generator, *,
                 foreground: bool, ignore_index: int) -> tuple[int, int, int]:
    """Origin ``(z, y, x)`` of a patch of ``patch_size`` in a ``(D, H, W)`` label volume.

    Along each axis the origin lies in ``[min(0, S - P), max(0, S - P)]``: the patch stays
    inside the volume where the volume is large enough, and a smaller volume lands at a
    random offset inside the patch (the rest is padding). With ``foreground`` the patch is
    centred on a random voxel of a class drawn uniformly from the foreground classes present
    (labels other than 0 and ``ignore_index``), then shifted by the least amount that keeps it
    in that range, so the voxel is always inside the patch. Without foreground in the
    volume it falls back to a uniform random patch.
    """
    shape = label.shape
    low = [min(0, s - p) for s, p in zip(shape, patch_size)]
    high = [max(0, s - p) for s, p in zip(shape, patch_size)]
    if foreground:
        # bincount, not np.unique: no sort of millions of voxels. Labels are checked non-negative.
        counts = np.bincount(label.ravel())
        counts[0] = 0
        if ignore_index < len(counts):
            counts[ignore_index] = 0
        classes = np.flatnonzero(counts)
        if classes.size:
            voxels = np.flatnonzero(label == rng.choice(classes))
            centre = np.unravel_index(voxels[rng.integers(voxels.size)], shape)
            return tuple(int(np.clip(c - p // 2, lo, hi)) for c, p, lo, hi in zip(centre, patch_size, low, high))
    return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high))


def _spline_upsampling(coarse: int, size: int) -> np.ndarray:
    """``(size, coarse)`` matrix that cubic-spline-upsamples a length-``coarse`` signal to ``size``.

    It is ``scipy.ndimage.zoom`` applied to the identity, so ``W @ v`` equals zooming ``v``;
    a 3D zoom is separable, i.e. the product of one such matrix per axis.
    """
    from scipy import (
        ndimage,  # on first use, so that `import pixelwise` does not load scipy
    )

    return ndimage.zoom(np.eye(coarse, dtype=np.float64), (size / coarse, 1.0), order=3, mode="nearest",
                        grid_mode=True).astype(np.float32)


def elastic_deform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, grid_spacing: int = 32,
                   sigma: float = 4.0, ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random 3D deformation of ``image (C, D, H, W)`` and ``label (D, H, W)``.

    Çiçek et al. (3D U-Net), Sec. 2: displacement vectors drawn from ``N(0, sigma^2)`` voxels
    on a grid with ``grid_spacing`` voxel spacing, interpolated to every voxel (cubic spline
    here). Images are resampled linearly (outside -> 0), labels with nearest neighbour
    (``order=0``: an interpolated label is a wrong label; outside -> ``ignore_index``).
    """
    from scipy import ndimage

    shape = label.shape
    coarse = [max(2, int(np.ceil(s / grid_spacing)) + 1) for s in shape]
    weights = [_spline_upsampling(c, s) for c, s in zip(coarse, shape)]
    coords = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    for axis in range(3):
        vectors = rng.normal(0.0, sigma, coarse).astype(np.float32)
        # Tensor-product spline: three small matrix products instead of a 3D zoom (about 40x faster).
        coords[axis] += np.einsum("ia,jb,kc,abc->ijk", *weights, vectors, optimize=True)
    warped = np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="constant", cval=0.0) for ch in image])
    warped_label = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=ignore_index)
    return warped.astype(np.float32), warped_label.astype(np.int64)


@dataclass
class Augment3d:
    """Training augmentation for volumes; each step has its own probability.

    Steps: flip along each spatial axis (``p_flip`` per axis), in-plane (H, W) rotation by a
    multiple of 90 degrees (``p_rot90``; only 180 degrees when H != W so the patch keeps its
    shape and batches stack), the elastic deformation (``p_elastic``, off by default: it is
    the slowest step, about a map_coordinates pass per channel), then per-channel intensity
    ``x * scale + shift`` (``p_intensity``; ranges ``scale`` and ``shift`` on the normalised values).
    """

    p_flip: float = 0.5
    p_rot90: float = 0.5
    p_elastic: float = 0.0
    elastic_spacing: int = 32
    elastic_sigma: float = 4.0
    p_intensity: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    shift: tuple[float, float] = (-0.1, 0.1)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *,
                 ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
        """``image (C, D, H, W)``, ``label (D, H, W)`` -> augmented copies of the same shapes."""
        for axis in range(3):
            if rng.random() < self.p_flip:
                image, label = np.flip(image, axis + 1), np.flip(label, axis)
        if rng.random() < self.p_rot90:
            k = int(rng.integers(1, 4)) if label.shape[1] == label.shape[2] else 2
            image, label = np.rot90(image, k, axes=(2, 3)), np.rot90(label, k, axes=(1, 2))
        if rng.random() < self.p_elastic:
            image, label = elastic_deform(image, label, rng, grid_spacing=self.elastic_spacing,
                                          sigma=self.elastic_sigma, ignore_index=ignore_index)
        image = np.ascontiguousarray(image, dtype=np.float32)
        if rng.random() < self.p_intensity:
            channels = image.shape[0]
            scale = rng.uniform(*self.scale, channels).astype(np.float32)
            shift = rng.uniform(*self.shift, channels).astype(np.float32)
            image = image * scale[:, None, None, None] + shift[:, None, None, None]
        return image, np.ascontiguousarray(label)
