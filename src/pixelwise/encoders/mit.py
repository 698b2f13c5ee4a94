"""Mix Transformer (MiT-B0 ... B5), the SegFormer encoder (Xie et al., NeurIPS 2021, arXiv:2105.15203, Sec. 3.1).

What is special here: four stages, each an *overlapping* patch embedding (a strided
convolution with kernel 7/3/3/3, stride 4/2/2/2 and padding k//2, so neighbouring patches
share pixels and any input size works) followed by transformer blocks whose self-attention
is *efficient*: keys and values come from the token grid shrunk by a stride-R convolution
(reduction ratios 8/4/2/1), which cuts the cost from O(N²) to O(N²/R²). There is no
position embedding; the Mix-FFN (Linear -> 3×3 depthwise conv -> GELU -> Linear) leaks
position through the convolution's zero padding. The features at strides 4/8/16/32 feed
any decoder (SegFormer's all-MLP head, U-Net, FPN, UPerNet ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import ENCODERS, register
from .base import check_load, load_state_file

# Table 6 of the paper: channels, blocks per stage; heads 1/2/5/8 and R 8/4/2/1 for every size.
MIT_SIZES: dict[str, dict] = {
    "mit_b0": {"dims": [32, 64, 160, 256], "depths": [2, 2, 2, 2]},
    "mit_b1": {"dims": [64, 128, 320, 512], "depths": [2, 2, 2, 2]},
    "mit_b2": {"dims": [64, 128, 320, 512], "depths": [3, 4, 6, 3]},
    "mit_b3": {"dims": [64, 128, 320, 512], "depths": [3, 4, 18, 3]},
    "mit_b4": {"dims": [64, 128, 320, 512], "depths": [3, 8, 27, 3]},
    "mit_b5": {"dims": [64, 128, 320, 512], "depths": [3, 6, 40, 3]},
}


class OverlapPatchEmbed(nn.Module):
    """Strided ``k×k`` convolution (padding ``k // 2``) + LayerNorm: ``(N, C, H, W)`` -> tokens
    ``(N, h·w, D)`` with ``h = ceil(H / stride)`` (for k = 7, s = 4 and k = 3, s = 2), and ``(h, w)``."""

    def __init__(self, in_channels: int, dim: int, *, kernel: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from the grid reduced by a stride-``ratio``
    convolution + LayerNorm (Eq. 2): tokens ``(N, h·w, D)`` -> ``(N, h·w, D)``.

    A grid smaller than ``ratio`` (tiny inputs) is zero-padded up to ``ratio`` first so the
    reduction still yields one key; on every larger grid the result is the reference's.
    """

    def __init__(self, dim: int, heads: int, *, ratio: int, eps: float) -> None:
        super().__init__()
        self.heads, self.ratio = heads, ratio
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        if ratio > 1:
            self.sr = nn.Conv2d(dim, dim, ratio, stride=ratio)
            self.sr_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        n, length, dim = x.shape
        kv = x
        if self.ratio > 1:
            grid = x.transpose(1, 2).reshape(n, dim, h, w)
            if h < self.ratio or w < self.ratio:
                grid = F.pad(grid, (0, max(0, self.ratio - w), 0, max(0, self.ratio - h)))
            kv = self.sr_norm(self.sr(grid).flatten(2).transpose(1, 2))
        split = lambda t: t.reshape(n, -1, self.heads, dim // self.heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(kv)), split(self.v(kv)))
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class MixFFN(nn.Module):
    """Linear -> 3×3 depthwise conv on the token grid -> GELU -> Linear (Eq. 3): ``(N, h·w, D)`` -> same."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = self.fc1(x)
        n, _, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(n, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MixFFN(LN(x))`` (stochastic depth in training)."""

    def __init__(self, dim: int, heads: int, *, ratio: int, mlp_ratio: int, eps: float, drop_path: float,
                 sr_eps: float | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, heads, ratio=ratio, eps=sr_eps if sr_eps is not None else eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = drop_path

    def _drop(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype) >= self.drop_path
        return x * keep / (1.0 - self.drop_path)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self._drop(self.attn(self.norm1(x), h, w))
        return x + self._drop(self.ffn(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """Overlapping patch embedding, ``depth`` blocks, LayerNorm: ``(N, C, H, W)`` -> ``(N, D, h, w)``."""

    def __init__(self, in_channels: int, dim: int, *, depth: int, heads: int, ratio: int, kernel: int, stride: int,
                 mlp_ratio: int, eps: float, embed_eps: float, drop_paths: list[float]) -> None:
        super().__init__()
        self.embed = OverlapPatchEmbed(in_channels, dim, kernel=kernel, stride=stride, eps=embed_eps)
        self.blocks = nn.ModuleList(MiTBlock(dim, heads, ratio=ratio, mlp_ratio=mlp_ratio, eps=eps, sr_eps=embed_eps,
                                             drop_path=p) for p in drop_paths)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x, h, w = self.embed(x)
        for block in self.blocks:
            x = block(x, h, w)
        return self.norm(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)


class MixTransformer(nn.Module):
    """The MiT encoder: ``(N, C, H, W)`` -> 4 features at reductions ``[4, 8, 16, 32]`` (ceil-rounded sizes)
    with ``out_channels = dims``.

    Args:
        dims, depths, heads, ratios: per stage (Table 6: heads 1/2/5/8, ratios 8/4/2/1).
        layer_norm_eps: 1e-6 as in the paper's code and MMSegmentation; 1e-5 in transformers' port.
        embed_eps: epsilon of the patch-embedding and key/value-reduction LayerNorms (default
            ``layer_norm_eps``); the paper's code (and smp, which ports it) leaves those at 1e-5.
        drop_path_rate: stochastic depth, rising linearly over all blocks (0.1 in the paper's training).
    """

    def __init__(self, *, in_channels: int = 3, dims: list[int], depths: list[int], heads: list[int] = (1, 2, 5, 8),
                 ratios: list[int] = (8, 4, 2, 1), mlp_ratio: int = 4, layer_norm_eps: float = 1e-6,
                 drop_path_rate: float = 0.0, embed_eps: float | None = None) -> None:
        super().__init__()
        if not (len(dims) == len(depths) == len(heads) == len(ratios) == 4):
            raise ConfigError(f"MiT needs 4 stages: dims {dims}, depths {depths}, heads {heads}, ratios {ratios}")
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, start, channels = [], 0, in_channels
        for i in range(4):
            stages.append(MiTStage(channels, dims[i], depth=depths[i], heads=heads[i], ratio=ratios[i],
                                   kernel=7 if i == 0 else 3, stride=4 if i == 0 else 2, mlp_ratio=mlp_ratio,
                                   eps=layer_norm_eps, embed_eps=embed_eps if embed_eps is not None else layer_norm_eps,
                                   drop_paths=rates[start:start + depths[i]]))
            start += depths[i]
            channels = dims[i]
        self.stages = nn.ModuleList(stages)
        self.out_channels: list[int] = list(dims)
        self.reductions: list[int] = [4, 8, 16, 32]
        self.min_input_size = _min_side(ratios)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def build_mit(size: str, *, in_channels: int = 3, weights: str | None = None, output_stride: int = 32,
              layer_norm_eps: float = 1e-6, drop_path_rate: float = 0.0, **overrides) -> MixTransformer:
    """MiT-B0 ... B5 by name; ``weights`` a local file in pixelwise's MiT layout (``convert`` writes them)."""
    if output_stride != 32:
        raise ConfigError(f"MiT encoders have output stride 32 only, got output_stride={output_stride}")
    if weights == "imagenet":
        raise ConfigError(f"no download for {size}; convert a SegFormer/MiT checkpoint with `pixelwise convert` "
                          f"and pass the model folder as model.init_from, or a local state-dict file as weights")
    enc = MixTransformer(in_channels=in_channels, layer_norm_eps=layer_norm_eps, drop_path_rate=drop_path_rate,
                         **{**MIT_SIZES[size], **overrides})
    if weights is not None:
        check_load(enc, load_state_file(weights), weights)
    return enc


def _register(size: str) -> None:
    def build(*, in_channels: int = 3, weights: str | None = None, output_stride: int = 32) -> MixTransformer:
        return build_mit(size, in_channels=in_channels, weights=weights, output_stride=output_stride)

    build.__name__ = size
    build.__doc__ = f"{size.upper()} Mix Transformer encoder (SegFormer, Xie et al. 2021)."
    register(ENCODERS, size)(build)


for _size in MIT_SIZES:
    _register(_size)


def _min_side(ratios: list[int]) -> int:
    """Smallest image side at which every key/value reduction keeps at least 2x2 tokens.

    Smaller images work (the grid is padded up to the ratio), but a 1-token side is a size that
    torch.export specialises on, so a dynamic ONNX export declares this as its minimum size."""
    for side in range(1, 4096):
        size, ok = (side - 1) // 4 + 1, True  # stage 1: 7x7 conv, stride 4, padding 3
        for i, ratio in enumerate(ratios):
            if i:
                size = (size - 1) // 2 + 1  # 3x3 conv, stride 2, padding 1
            ok = ok and (ratio == 1 or size >= 2 * ratio)
        if ok:
            return side
    return 4096
