"""SegFormer (Xie, Wang, Yu, Anandkumar, Alvarez & Luo, NeurIPS 2021, arXiv:2105.15203).

What is special here: a hierarchical Mix Transformer encoder (``encoders/mit.py``: overlapping
patch embeddings, efficient self-attention with reduction ratios, Mix-FFN, no position
embedding) and an *all-MLP* decoder (Sec. 3.2, Eq. 4): each of the four features goes
through one linear layer to C channels, is upsampled to 1/4, the four maps are concatenated
(deepest first, as the reference code does), fused by a 1×1 conv + BN + ReLU and classified
by a 1×1 convolution at 1/4, then bilinearly upsampled. C is 256 for B0/B1 and 768 for B2-B5.
The network has no global stride constraint: the input is not padded (``pad_multiple=1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import build_encoder
from ..encoders.mit import MIT_SIZES, build_mit
from ..errors import ConfigError
from ..registry import MODELS, register
from .model import SegmentationModel


class AllMLPDecoder(nn.Module):
    """Eq. 4: features ``[F1..F4]`` -> ``(N, channels, H/4, W/4)`` (before dropout and the classifier).

    ``proj_norm=True`` puts BN + ReLU after each per-level projection, as MMSegmentation's
    ``SegformerHead`` does (its ConvModule); the paper and transformers use a plain linear layer.
    """

    def __init__(self, encoder_channels: list[int], *, channels: int = 256, proj_norm: bool = False) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, 1, bias=not proj_norm),
                          *((nn.BatchNorm2d(channels), nn.ReLU(inplace=True)) if proj_norm else ()))
            for c in encoder_channels)
        n = len(encoder_channels)
        self.fuse = nn.Sequential(nn.Conv2d(n * channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True))
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        maps = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
                for i, (p, f) in enumerate(zip(self.proj, features))]
        return self.fuse(torch.cat(maps[::-1], dim=1))


@register(MODELS, "segformer")
def segformer(*, num_classes: int, in_channels: int = 3, encoder: str = "mit_b0", encoder_weights: str | None = None,
              decoder_channels: int | None = None, dropout: float = 0.1, layer_norm_eps: float = 1e-6,
              drop_path_rate: float = 0.1, proj_norm: bool = False,
              encoder_config: dict | None = None, pad_multiple: int = 1,
              upsample_align_corners: bool = False) -> SegmentationModel:
    """SegFormer (Xie et al. 2021): MiT-B0...B5 encoder + all-MLP decoder (256 channels for B0/B1, 768 for B2-B5).

    ``encoder`` is ``mit_b0`` ... ``mit_b5`` or any other encoder with four levels (then
    ``decoder_channels`` defaults to 256). ``encoder_config`` overrides MiT's ``dims``, ``depths``,
    ``heads``, ``ratios`` (tiny test networks). ``layer_norm_eps`` is the MiT LayerNorm epsilon.
    ``upsample_align_corners=True`` is smp's final 4× upsampling.
    """
    if encoder in MIT_SIZES:
        enc = build_mit(encoder, in_channels=in_channels, weights=encoder_weights, layer_norm_eps=layer_norm_eps,
                        drop_path_rate=drop_path_rate, **(encoder_config or {}))
        default = 256 if encoder in ("mit_b0", "mit_b1") else 768
    else:
        if encoder_config:
            raise ConfigError(f"encoder_config only applies to MiT encoders (mit_b0..mit_b5), not {encoder!r}")
        enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
        default = 256
    dec = AllMLPDecoder(enc.out_channels, channels=decoder_channels or default, proj_norm=proj_norm)
    head = nn.Sequential(nn.Dropout(dropout) if dropout else nn.Identity(), nn.Conv2d(dec.out_channels, num_classes, 1))
    return SegmentationModel(enc, dec, head, pad_multiple=pad_multiple if encoder in MIT_SIZES else None,
                             upsample_align_corners=upsample_align_corners)
