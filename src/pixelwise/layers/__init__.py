"""Small reusable blocks shared by the architectures."""

from .aspp import ASPP, ASPPPooling, SeparableConvNormAct
from .attention import AttentionGate
from .conv import ConvNormAct, DoubleConv, make_norm
from .ppm import PyramidPooling
from .scse import SCSE
from .unet_blocks import RecurrentResidualBlock, ResidualDoubleConv, make_block

__all__ = ["SCSE", "ASPP", "ASPPPooling", "AttentionGate", "RecurrentResidualBlock", "ResidualDoubleConv", "make_block", "ConvNormAct", "DoubleConv", "PyramidPooling", "SeparableConvNormAct", "make_norm"]
