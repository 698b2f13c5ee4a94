"""Small reusable blocks shared by the architectures."""

from .conv import ConvNormAct, DoubleConv, make_norm

__all__ = ["ConvNormAct", "DoubleConv", "make_norm"]
