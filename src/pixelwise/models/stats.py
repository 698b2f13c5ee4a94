"""Parameter and FLOP counts of the canonical configurations (``models/catalog.py``)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .catalog import CATALOG


def canonical_stats(name: str, *, size: int = 512, flops: bool = True) -> dict:
    """Build ``name`` in its canonical configuration; count parameters and (optionally) the
    FLOPs of one eval-mode forward pass on ``1×C×size×size`` (``1×C×64×128×128`` for 3D
    U-Net). A multiply-add counts as 2 FLOPs (``torch.utils.flop_counter``)."""
    from . import create_model

    kwargs = CATALOG.get(name, {}).get("canonical", {"num_classes": 2})
    model = create_model(name, **kwargs).eval()
    in_ch = kwargs.get("in_channels", 3)
    shape = (1, in_ch, 64, 128, 128) if name == "unet3d" else (1, in_ch, size, size)
    out = {"model": name, "params": sum(p.numel() for p in model.parameters()), "config": kwargs,
           "input": "x".join(map(str, shape))}
    if flops:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(shape))
        out["gflops"] = counter.get_total_flops() / 1e9
    return out
