"""Test-time augmentation (TTA): average class probabilities over flipped and rescaled inputs.

Every variant is a flip combination times a scale. The input is transformed, predicted
(whole or with :func:`~pixelwise.infer.sliding.sliding_window` when a tile is given), the
logits are transformed back to the input's grid and turned into softmax probabilities, and
the probabilities of all variants are averaged. Flips and multi-scale inputs are the
standard TTA of semantic segmentation (e.g. DeepLab, Chen et al. 2017, "Rethinking Atrous
Convolution for Semantic Image Segmentation", which averages scales 0.5-1.75 and flips).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .sliding import ModelFn, sliding_window

__all__ = ["TTA", "parse_tta", "predict_probs", "tta_variants"]

# Flip names -> axis counted from the end: h mirrors left/right (W), v up/down (H), d the depth (D).
FLIP_AXES = {"h": -1, "v": -2, "d": -3}


@dataclass(frozen=True)
class TTA:
    """Which augmentations to average: ``flips`` from ``{"h", "v", "d"}`` (every combination
    of them is used, including none) and ``scales`` (resize factors; 1 is the original)."""

    flips: tuple[str, ...] = ()
    scales: tuple[float, ...] = (1.0,)


def parse_tta(tta: bool | str | dict[str, Any] | TTA | None) -> TTA:
    """``False``/``None``/``"none"`` -> no TTA; ``True``/``"flip"`` -> horizontal flip;
    ``"flip+scales"`` -> horizontal flip and scales 0.75, 1, 1.25; a dict
    ``{"flips": "hv" or ["h", "v"], "scales": [0.75, 1, 1.25]}``; or a :class:`TTA`."""
    if isinstance(tta, TTA):
        spec = tta
    elif tta is None or tta is False or tta == "none":
        spec = TTA()
    elif tta is True or tta == "flip":
        spec = TTA(flips=("h",))
    elif tta == "flip+scales":
        spec = TTA(flips=("h",), scales=(0.75, 1.0, 1.25))
    elif isinstance(tta, dict):
        unknown = set(tta) - {"flips", "scales"}
        if unknown:
            raise ConfigError(f"tta: unknown key(s) {sorted(unknown)}; use 'flips' and 'scales'")
        flips = tta.get("flips", ())
        flips = tuple(flips) if not isinstance(flips, bool) else (("h",) if flips else ())
        spec = TTA(flips=flips, scales=tuple(float(s) for s in tta.get("scales", (1.0,))))
    else:
        raise ConfigError(f"tta={tta!r} is not understood; use False, 'flip', 'flip+scales' or "
                          f"dict(flips='hv', scales=[0.75, 1, 1.25])")
    bad = [f for f in spec.flips if f not in FLIP_AXES]
    if bad or len(set(spec.flips)) != len(spec.flips):
        raise ConfigError(f"tta flips {spec.flips!r}: each must appear once and be one of {sorted(FLIP_AXES)}")
    if not spec.scales or min(spec.scales) <= 0:
        raise ConfigError(f"tta scales {spec.scales!r} must be a non-empty list of positive factors")
    return spec


def tta_variants(spec: TTA) -> list[tuple[tuple[int, ...], float]]:
    """Every ``(flip axes, scale)`` pair: all subsets of the flips times all scales."""
    axes = [FLIP_AXES[f] for f in spec.flips]
    subsets = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    return [(subset, scale) for scale in spec.scales for subset in subsets]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    # In place along the class axis: a full-size softmax copy would double the peak memory
    # of a huge sliding-window output; the temporaries here are (N, 1, ...) only.
    logits.sub_(logits.amax(1, keepdim=True)).exp_()
    return logits.div_(logits.sum(1, keepdim=True))


@torch.no_grad()
def predict_probs(model_fn: ModelFn, x: torch.Tensor, *, tta: bool | str | dict | TTA | None = None,
                  tile: int | Sequence[int] | None = None, overlap: float = 0.25, blend: str = "gaussian",
                  batch_size: int = 4, num_classes: int | None = None,
                  out_device: torch.device | str | None = None, activation: str = "softmax") -> torch.Tensor:
    """Probabilities of ``x`` (softmax over classes, or ``activation="sigmoid"`` per class for
    binary and multilabel models), averaged over the TTA variants.

    Args:
        model_fn: ``(B, C_in, ...) -> (B, C, ...)`` logits at input resolution.
        x: ``(N, C_in, H, W)`` or ``(N, C_in, D, H, W)`` normalised input.
        tta: see :func:`parse_tta`.
        tile: when given, every variant goes through :func:`sliding_window` with this tile,
            ``overlap``, ``blend`` and ``batch_size``; when None the model sees the whole input.
        num_classes: output channels, if known (saves nothing but a check).
        out_device: where probabilities accumulate (default ``x.device``).

    Returns:
        ``(N, C, *x.shape[2:])`` float32 probabilities on ``out_device``.
    """
    if activation not in ("softmax", "sigmoid"):
        raise ConfigError(f"predict_probs: activation={activation!r}; use 'softmax' or 'sigmoid'")
    spec = parse_tta(tta)
    size = tuple(x.shape[2:])
    out_device = torch.device(out_device) if out_device is not None else x.device
    if any(FLIP_AXES[f] < -(x.dim() - 2) for f in spec.flips):
        raise ConfigError(f"tta flip 'd' needs a 3D input (N, C, D, H, W); got shape {tuple(x.shape)}")
    total: torch.Tensor | None = None
    variants = tta_variants(spec)
    for axes, scale in variants:
        xv = x
        if scale != 1.0:
            xv = _resize(xv, [max(1, round(s * scale)) for s in size])
        if axes:
            xv = xv.flip(axes)
        if tile is None:
            logits = model_fn(xv).float().to(out_device)
        else:
            logits = sliding_window(model_fn, xv, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size,
                                    num_classes=num_classes, out_device=out_device)
        del xv
        if axes:
            logits = logits.flip(axes)
        if tuple(logits.shape[2:]) != size:
            logits = _resize(logits, size)
        # The sliding-window buffer is ours to overwrite; a plain model_fn output might alias x.
        if activation == "sigmoid":
            probs = logits.sigmoid_() if tile is not None else logits.sigmoid()
        else:
            probs = _softmax_(logits) if tile is not None else logits.softmax(1)
        del logits
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return total.div_(len(variants))
