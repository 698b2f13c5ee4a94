"""Small reusable blocks shared by the architectures."""

from .aspp import ASPP, ASPPPooling, SeparableConvNormAct
from .conv import ConvNormAct, DoubleConv, make_norm

__all__ = ["ASPP", "ASPPPooling", "ConvNormAct", "DoubleConv", "SeparableConvNormAct", "make_norm"]
