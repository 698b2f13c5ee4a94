"""Sliding-window inference for 2D images and 3D volumes larger than a model can take at once.

The input is cut into overlapping tiles, the tiles are run through the model a batch at a
time, and each tile's output is added into one preallocated output buffer, weighted by an
importance map (Gaussian or uniform). Dividing by the summed weights gives a weighted
average wherever tiles overlap. Memory is the output buffer plus one batch of tiles: no
list of tile outputs is ever kept, so a 8192×8192 image costs what its output costs.

The Gaussian importance map follows the convention of nnU-Net (Isensee et al., "nnU-Net:
a self-configuring method for deep learning-based biomedical image segmentation", Nature
Methods 2021): a Gaussian centred on the tile with ``sigma = tile / 8`` per axis, which
down-weights tile borders where the receptive field sees padding instead of context.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

ModelFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["importance_1d", "importance_map", "sliding_window", "tile_starts"]


def _per_axis(value: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    values = (int(value),) * ndim if isinstance(value, (int, float)) else tuple(int(v) for v in value)
    if len(values) != ndim or min(values) < 1:
        raise ConfigError(f"sliding_window: {what}={value!r} must be a positive int or {ndim} positive ints "
                          f"(one per spatial axis)")
    return values


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` (``size >= tile``).

    The number of tiles is the smallest that keeps the step at most ``tile * (1 - overlap)``;
    the tiles are then spread evenly so that the first starts at 0 and the last ends at
    ``size`` (so the real overlap is at least the requested one, never a thin last tile).
    """
    if size <= tile:
        return [0]
    max_step = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((size - tile) / max_step) + 1
    step = (size - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def importance_1d(tile: int, blend: str, *, sigma_scale: float = 0.125) -> torch.Tensor:
    """``(tile,)`` float64 weights along one axis: all ones (``uniform``) or a Gaussian
    ``exp(-(i - c)^2 / (2 sigma^2))`` with ``c = (tile - 1) / 2``, ``sigma = tile * sigma_scale``,
    scaled so that its peak is 1 (``gaussian``)."""
    if blend == "uniform":
        return torch.ones(tile, dtype=torch.float64)
    if blend != "gaussian":
        raise ConfigError(f"sliding_window: blend={blend!r} is not known; use 'gaussian' or 'uniform'")
    i = torch.arange(tile, dtype=torch.float64)
    sigma = max(tile * sigma_scale, 1e-6)
    w = torch.exp(-((i - (tile - 1) / 2) ** 2) / (2 * sigma**2))
    return w / w.max()


def importance_map(tile: Sequence[int], blend: str) -> torch.Tensor:
    """The full importance map of one tile, ``tile`` shaped: the outer product of the per-axis
    weights (a separable Gaussian is the same as the isotropic one in nnU-Net)."""
    out = torch.ones((), dtype=torch.float64)
    for size in tile:
        out = out[..., None] * importance_1d(size, blend)
    return out


def _axis_weight_sums(size: int, tile: int, starts: list[int], blend: str) -> torch.Tensor:
    total = torch.zeros(size, dtype=torch.float64)
    w = importance_1d(tile, blend)
    for s in starts:
        total[s:s + tile] += w
    return total


@torch.no_grad()
def sliding_window(model_fn: ModelFn, x: torch.Tensor, *, tile: int | Sequence[int], overlap: float = 0.25,
                   blend: str = "gaussian", batch_size: int = 4, num_classes: int | None = None,
                   activation: str = "none", pad_value: float = 0.0, out_device: torch.device | str | None = None,
                   out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Run ``model_fn`` over overlapping tiles of ``x`` and blend the outputs.

    Args:
        model_fn: ``(B, C_in, *tile) -> (B, C_out, *tile)``, e.g. a model in eval mode (wrap it
            for autocast / normalisation). It sees at most ``batch_size`` tiles at a time.
        x: ``(N, C_in, H, W)`` images or ``(N, C_in, D, H, W)`` volumes, on the model's device.
        tile: tile size, one int for every axis or one per spatial axis.
        overlap: fraction of a tile shared with its neighbour, ``0 <= overlap < 1``.
        blend: ``"gaussian"`` (nnU-Net importance map) or ``"uniform"`` (plain mean).
        batch_size: tiles per ``model_fn`` call.
        num_classes: ``C_out``; when None it is read from the first batch's output.
        activation: ``"none"`` blends raw outputs (logits, as nnU-Net v2 does), ``"softmax"``
            blends per-tile class probabilities.
        pad_value: value of the padding added where an axis is shorter than the tile
            (0 is the dataset mean once images are normalised).
        out_device, out_dtype: where the ``(N, C_out, ...)`` output buffer lives (default:
            ``x.device``, float32). On a GPU, ``out_device="cpu"`` keeps huge outputs off the card.

    Returns:
        ``(N, C_out, *x.shape[2:])`` blended outputs on ``out_device``.
    """
    ndim = x.dim() - 2
    if ndim not in (2, 3):
        raise ConfigError(f"sliding_window: x must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"sliding_window: overlap={overlap} must be in [0, 1); 0.25 or 0.5 are usual")
    if activation not in ("none", "softmax"):
        raise ConfigError(f"sliding_window: activation={activation!r}; use 'none' or 'softmax'")
    if batch_size < 1:
        raise ConfigError(f"sliding_window: batch_size={batch_size} must be >= 1")
    tile = _per_axis(tile, ndim, "tile")
    size = tuple(x.shape[2:])
    # Axes shorter than the tile are padded (at the end) so every tile has the model's size.
    padded = tuple(max(s, t) for s, t in zip(size, tile))
    if padded != size:
        pads: list[int] = []
        for s, p in zip(reversed(size), reversed(padded)):
            pads += [0, p - s]
        x = F.pad(x, pads, value=pad_value)
    starts = [tile_starts(p, t, overlap) for p, t in zip(padded, tile)]
    out_device = torch.device(out_device) if out_device is not None else x.device
    weight = importance_map(tile, blend).to(x.device, torch.float32)

    # The grid of tiles is a Cartesian product and the importance map is separable, so the
    # summed weight at every voxel factorises into per-axis sums: keep those small vectors
    # instead of a second full-size buffer.
    axis_sums = [_axis_weight_sums(p, t, st, blend) for p, t, st in zip(padded, tile, starts)]

    out: torch.Tensor | None = None
    if num_classes is not None:
        out = torch.zeros((x.shape[0], num_classes, *padded), device=out_device, dtype=out_dtype)
    jobs = [(n, corner) for n in range(x.shape[0]) for corner in itertools.product(*starts)]
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first:first + batch_size]
        slices = [tuple(slice(c, c + t) for c, t in zip(corner, tile)) for _, corner in chunk]
        batch = torch.stack([x[n][(slice(None), *sl)] for (n, _), sl in zip(chunk, slices)])
        pred = model_fn(batch)
        if pred.dim() != ndim + 2 or tuple(pred.shape[2:]) != tile or pred.shape[0] != len(chunk):
            raise ConfigError(f"sliding_window: model_fn returned shape {tuple(pred.shape)} for tiles of "
                              f"{tuple(batch.shape)}; it must return (B, C, *tile) at input resolution")
        pred = pred.float()
        if weight.device != pred.device:  # model_fn may move tiles to its own device
            weight = weight.to(pred.device)
        if activation == "softmax":
            pred = pred.softmax(1)
        pred = (pred * weight).to(out_device, out_dtype)
        if out is None:
            out = torch.zeros((x.shape[0], pred.shape[1], *padded), device=out_device, dtype=out_dtype)
        elif pred.shape[1] != out.shape[1]:
            raise ConfigError(f"sliding_window: model_fn returned {pred.shape[1]} channels but "
                              f"num_classes={out.shape[1]}; pass the model's number of classes")
        for (n, _), sl, p in zip(chunk, slices, pred):
            out[n][(slice(None), *sl)] += p
        del batch, pred
    assert out is not None  # at least one tile always exists
    crop = (slice(None), slice(None), *(slice(0, s) for s in size))
    out = out[crop]
    for axis, sums in enumerate(axis_sums):
        shape = [1] * (ndim + 2)
        shape[axis + 2] = -1
        out /= sums[: size[axis]].to(out_device, torch.float32).view(shape).to(out_dtype)
    return out
