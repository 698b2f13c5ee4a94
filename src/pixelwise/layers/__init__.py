"""Small reusable blocks shared by the architectures."""

from .aspp import ASPP, ASPPPooling, SeparableConvNormAct
from .conv import ConvNormAct, DoubleConv, make_norm
from .ppm import PyramidPooling

__all__ = ["ASPP", "ASPPPooling", "ConvNormAct", "DoubleConv", "PyramidPooling", "SeparableConvNormAct", "make_norm"]
