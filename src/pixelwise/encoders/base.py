"""The encoder contract shared by every decoder.

An encoder maps ``(N, C_in, H, W)`` to a list of feature maps, shallow to deep. Feature
``i`` has ``out_channels[i]`` channels and spatial size ``H / reductions[i]``. Decoders are
built from these two lists only, so any encoder fits any decoder that makes sense.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import ConfigError


@runtime_checkable
class Encoder(Protocol):
    """What a decoder may rely on."""

    out_channels: list[int]
    reductions: list[int]

    def __call__(self, x: Tensor) -> list[Tensor]: ...


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a weight file without pickle: ``.safetensors``, or a torch file with ``weights_only=True``.

    Raises ``ConfigError`` naming the file when it is missing or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weight file {str(path)!r} does not exist; pass a local .pth/.safetensors path "
                          f"or 'imagenet' to download (needs a network)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        raise ConfigError(f"weight file {str(path)!r} could not be read as a PyTorch state dict: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"weight file {str(path)!r} does not hold a state dict")
    return state


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Re-shape a pretrained first-conv weight ``(O, 3, k, k)`` for ``in_channels`` inputs.

    One channel gets the sum over RGB (a grey image then activates the filters as a grey
    RGB image would); more channels repeat RGB cyclically, scaled by ``3 / in_channels``
    so the expected activation magnitude is unchanged.
    """
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def check_load(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict`` that fails with the missing/unexpected keys named (first few)."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ConfigError(
            f"weights from {source} do not fit: {len(result.missing_keys)} missing keys, e.g. "
            f"{result.missing_keys[:4]}; is it a file for this architecture?"
        )
