"""Convolution blocks: conv -> norm -> activation, and the U-Net double convolution."""

from __future__ import annotations

from torch import nn

NORMS = ("none", "batch", "instance", "group")


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer by name: ``none``, ``batch``, ``instance`` or ``group`` (8 groups or fewer)."""
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


class ConvNormAct(nn.Sequential):
    """``Conv2d(k×k) -> norm -> ReLU``; (N, C_in, H, W) -> (N, C_out, H', W').

    The convolution has no bias when a normalisation follows (the norm's shift makes it redundant).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm: str = "batch",
        act: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class DoubleConv(nn.Sequential):
    """Two 3×3 ``ConvNormAct`` as in every U-Net level (Ronneberger et al. 2015, Fig. 1).

    The paper uses unpadded convolutions; here they are padded so H×W is preserved,
    which removes the overlap-tile cropping while keeping the receptive field.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "none") -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, norm=norm),
            ConvNormAct(out_channels, out_channels, 3, norm=norm),
        )
