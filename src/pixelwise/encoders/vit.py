"""Plain (non-hierarchical) vision transformers from timm as dense encoders at any input size:
ViT, DeiT, DINOv2, EVA/EVA-02, BEiT-style models.

Two problems stop a ViT from being a segmentation encoder: it is built for one image size
(its position embedding has one grid) and it has one stride (the patch size). Here the
input is padded to a multiple of the patch size and the position embedding is resampled to
the token grid of every forward (timm's ``dynamic_img_size``; for ``VisionTransformer``
also with a chosen interpolation, since transformers' DPT uses bilinear where timm uses
bicubic). Tokens from chosen blocks are then *reassembled* into a pyramid at strides
4/8/16/32 as DPT does (Ranftl et al., ICCV 2021, arXiv:2103.13413, Sec. 3): a 1×1
projection per level, then a 4× / 2× transposed convolution, identity, or a stride-2 3×3
convolution. ViTDet's simple pyramid (Li et al., ECCV 2022) is the same recipe on the last
block only (``indices=[-1, -1, -1, -1]``). A patch size other than 16 (DINOv2's 14) is
brought to the stride-16 grid by bilinear resampling of the tokens before reassembly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

# timm modules whose models are plain token transformers with forward_intermediates.
VIT_MODULES = ("vision_transformer", "deit", "eva", "beit", "vision_transformer_sam")


def is_vit(name: str) -> bool:
    """Whether a timm model name is a plain ViT-style model this module wraps."""
    import timm

    if not timm.is_model(name):
        return False
    return timm.models.model_entrypoint(name.split(".")[0]).__module__.rsplit(".", 1)[-1] in VIT_MODULES


class ViTTokens(nn.Module):
    """A timm ViT run on any ``(N, C, H, W)``: returns, for each block in ``indices``, the patch
    tokens as a grid ``(N, D, ceil(H/p), ceil(W/p))`` and the class token ``(N, D)`` (or ``None``).

    Args:
        name: timm model name (``vit_base_patch16_224``, ``vit_small_patch14_dinov2``, ``eva02_tiny_patch14_224``...).
        indices: blocks whose outputs are returned (negative counts from the end).
        pos_interpolation: ``"bicubic"`` (timm's resampling, antialiased) or ``"bilinear"``
            (transformers' DPT); only for ``VisionTransformer`` models.
        timm_kwargs: forwarded to ``timm.create_model`` (``embed_dim``, ``depth``, ``num_heads``, ``img_size``...).
    """

    def __init__(self, name: str, *, in_channels: int = 3, weights: str | None = None,
                 indices: list[int] | None = None, pos_interpolation: str = "bicubic",
                 timm_kwargs: dict | None = None) -> None:
        super().__init__()
        import timm

        if not is_vit(name):
            raise ConfigError(f"{name!r} is not a timm ViT-style model; use e.g. vit_small_patch16_224, "
                              f"deit_tiny_patch16_224, vit_small_patch14_dinov2 or eva02_tiny_patch14_224")
        if pos_interpolation not in ("bicubic", "bilinear"):
            raise ConfigError(f"pos_interpolation must be 'bicubic' or 'bilinear', got {pos_interpolation!r}")
        kwargs = {"num_classes": 0, "in_chans": in_channels, "dynamic_img_size": True, **(timm_kwargs or {})}
        if weights is None:
            kwargs["pretrained"] = False
        elif weights == "imagenet":
            kwargs["pretrained"] = True
        else:
            if not Path(weights).is_file():
                raise ConfigError(f"encoder weight file {weights!r} does not exist; pass a local timm checkpoint "
                                  f"or 'imagenet' to download")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
        self.model = timm.create_model(name, **kwargs)
        depth = len(self.model.blocks)
        indices = list(indices) if indices is not None else [round(depth * k / 4) - 1 for k in (1, 2, 3, 4)]
        self.indices = [i % depth for i in indices]
        # Blocks after the last tapped one and the final norm/head never run: drop them (DDP and the
        # every-parameter-gets-a-gradient test both need that).
        self.model.prune_intermediate_layers(sorted(set(self.indices)), prune_norm=True, prune_head=True)
        self.patch = self.model.patch_embed.patch_size[0]
        self.embed_dim = self.model.embed_dim
        self.pos_interpolation = pos_interpolation
        self.prefix = getattr(self.model, "num_prefix_tokens", 1)
        self._own_path = type(self.model).__name__ == "VisionTransformer" and self.model.pos_embed is not None

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.patch, (-w) % self.patch
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        if self._own_path:
            return self._vit_forward(x)
        wanted = sorted(set(self.indices))
        outs = self.model.forward_intermediates(x, indices=wanted, output_fmt="NCHW", intermediates_only=True,
                                                return_prefix_tokens=self.prefix > 0)
        by_index = dict(zip(wanted, outs))
        result = []
        for i in self.indices:
            grid, prefix = by_index[i] if self.prefix > 0 else (by_index[i], None)
            result.append((grid, prefix[:, 0] if prefix is not None else None))
        return result

    def _vit_forward(self, x: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        m = self.model
        tokens = m.patch_embed(x)  # (N, gh, gw, D) with dynamic_img_size
        n, gh, gw, d = tokens.shape
        tokens = tokens.reshape(n, gh * gw, d)
        pos = m.pos_embed
        prefix_pos = 0 if m.no_embed_class else self.prefix
        grid_pos = pos[:, prefix_pos:]
        old = m.patch_embed.grid_size
        if (gh, gw) != tuple(old):
            grid_pos = grid_pos.reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
            if self.pos_interpolation == "bilinear":
                grid_pos = F.interpolate(grid_pos, size=(gh, gw), mode="bilinear", align_corners=False)
            else:
                grid_pos = F.interpolate(grid_pos.float(), size=(gh, gw), mode="bicubic", antialias=True,
                                         align_corners=False).to(pos.dtype)
            grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, d)
        prefix_tokens = [t.expand(n, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if m.no_embed_class:
            tokens = torch.cat(prefix_tokens + [tokens + grid_pos], dim=1)
        else:
            tokens = torch.cat(prefix_tokens + [tokens], dim=1) + torch.cat([pos[:, :prefix_pos], grid_pos], dim=1)
        tokens = m.norm_pre(m.patch_drop(m.pos_drop(tokens)))
        result: dict[int, tuple[Tensor, Tensor | None]] = {}
        for i, block in enumerate(m.blocks[: max(self.indices) + 1]):
            tokens = block(tokens)
            if i in self.indices:
                grid = tokens[:, self.prefix:].transpose(1, 2).reshape(n, d, gh, gw)
                result[i] = (grid, tokens[:, 0] if m.cls_token is not None else None)
        return [result[i] for i in self.indices]


class Reassemble(nn.Module):
    """DPT's reassemble step for one level: ``(N, D, g_h, g_w)`` at stride 16 -> ``(N, C, ·, ·)`` at
    ``stride`` (4: 4× transposed conv, 8: 2×, 16: identity, 32: 3×3 conv with stride 2)."""

    def __init__(self, dim: int, channels: int, stride: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(dim, channels, 1)
        if stride < 16:
            f = 16 // stride
            self.resize: nn.Module = nn.ConvTranspose2d(channels, channels, f, stride=f)
        elif stride == 16:
            self.resize = nn.Identity()
        else:
            self.resize = nn.Conv2d(channels, channels, 3, stride=stride // 16, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.resize(self.project(x))


def to_stride16(grid: Tensor, patch: int, size: tuple[int, int]) -> Tensor:
    """Resample a token grid of patch size ``patch`` to the stride-16 grid of an input of ``size``."""
    if patch == 16:
        return grid
    target = (math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    return F.interpolate(grid, size=target, mode="bilinear", align_corners=False)


class ViTEncoder(nn.Module):
    """A ViT as a four-level encoder: ``(N, C, H, W)`` -> features at reductions ``[4, 8, 16, 32]``
    with ``out_channels = channels`` (default ``[D/8, D/4, D/2, D]``, DPT-Base's widths for D = 768).

    The class token is dropped (DPT's "ignore" readout); ``models/dpt.py`` offers the others.
    Input sizes that are multiples of 32 (the segmentation model pads to that) give exact strides.
    """

    def __init__(self, name: str, *, in_channels: int = 3, weights: str | None = None,
                 indices: list[int] | None = None, channels: list[int] | None = None,
                 timm_kwargs: dict | None = None) -> None:
        super().__init__()
        self.tokens = ViTTokens(name, in_channels=in_channels, weights=weights, indices=indices,
                                timm_kwargs=timm_kwargs)
        if len(self.tokens.indices) != 4:
            raise ConfigError(f"ViTEncoder needs 4 block indices (one per level), got {self.tokens.indices}")
        d = self.tokens.embed_dim
        self.out_channels: list[int] = list(channels or [d // 8, d // 4, d // 2, d])
        self.reductions: list[int] = [4, 8, 16, 32]
        self.levels = nn.ModuleList(Reassemble(d, c, s) for c, s in zip(self.out_channels, self.reductions))

    def forward(self, x: Tensor) -> list[Tensor]:
        size = x.shape[-2:]
        grids = [to_stride16(g, self.tokens.patch, size) for g, _ in self.tokens(x)]
        return [level(g) for level, g in zip(self.levels, grids)]
