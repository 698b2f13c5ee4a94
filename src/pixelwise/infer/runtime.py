"""The inference runtime: normalisation and the model as a function of a batch.

:func:`normalize` turns uint8 pixels into the network's input, :func:`model_function` wraps a
network with device transfer, autocast and channels_last into the ``ModelFn`` that
:mod:`.sliding` and :mod:`.tta` call, and :func:`predict_image` is the two together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..runtime import autocast
from .sliding import ModelFn
from .tta import TTA, predict_probs


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W, C)`` uint8 -> ``(C, H, W)`` float32, ``(x / 255 - mean) / std``."""
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays (PIL, np.broadcast_to)
        image = image.copy()
    x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
    return x.sub_(torch.tensor(mean).view(-1, 1, 1)).div_(torch.tensor(std).view(-1, 1, 1))


def model_function(model: nn.Module, *, device: torch.device | str = "cpu", amp: str = "none",
                   channels_last: bool = False) -> ModelFn:
    """``model`` as a function ``(N, C, H, W) -> (N, K, H, W)`` float32 logits that moves its
    input to ``device``, runs under autocast (``amp`` = none | bf16 | fp16) and, with
    ``channels_last``, hands the network NHWC (NDHWC for volumes) tensors.

    The model itself should already be on ``device`` (and in channels_last, if asked).
    """
    device = torch.device(device)
    autocast(device, amp)  # fail now, not at the first tile, on a bad amp/device pair

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
        with autocast(device, amp):
            out = model(x)
        return out.float()

    return run


@torch.no_grad()
def predict_image(model: nn.Module, image: np.ndarray, *, mean: Sequence[float], std: Sequence[float],
                  device: torch.device | str = "cpu", amp: str = "none", channels_last: bool = False,
                  tile: int | None = None, overlap: float = 0.25, tta: bool | str | dict | TTA | None = None,
                  batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Segment one ``(H, W, 3)`` uint8 RGB image (optionally tiled and with TTA).

    Returns ``(labels (H, W) int64, probabilities (C, H, W) float32)``.
    """
    device = torch.device(device)
    x = normalize(image, mean, std)[None].to(device)
    fn = model_function(model, device=device, amp=amp, channels_last=channels_last)
    probs = predict_probs(fn, x, tta=tta, tile=tile, overlap=overlap, batch_size=batch_size)[0]
    return probs.argmax(0).cpu().numpy(), probs.cpu().numpy()
