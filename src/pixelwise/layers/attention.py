"""Additive attention gate (Oktay et al., Attention U-Net, MIDL 2018, arXiv:1804.03999, Fig. 2).

The skip feature ``x`` is re-weighted by coefficients α ∈ (0, 1) computed from ``x`` and a
coarser gating signal ``g``: α = σ(ψ(ReLU(W_x x' + W_g g))) with x' brought to g's grid by
a strided 1×1 convolution, then α resampled back to x's size. Irrelevant regions of the
skip are suppressed before concatenation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttentionGate(nn.Module):
    """``forward(x, g)``: skip ``(N, C_x, H, W)``, gate ``(N, C_g, h, w)`` -> ``x * α``, same shape as x.

    The coefficients of the last call are kept in ``last_alpha`` ``(N, 1, H, W)`` for inspection.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(1, skip_channels // 2)
        self.theta_x = nn.Conv2d(skip_channels, inter, 1, bias=False)
        self.phi_g = nn.Conv2d(gate_channels, inter, 1)
        self.psi = nn.Conv2d(inter, 1, 1)
        self.last_alpha: Tensor | None = None

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        stride = max(1, x.shape[-2] // g.shape[-2])
        theta = F.conv2d(x, self.theta_x.weight, stride=stride) if stride > 1 else self.theta_x(x)
        phi = F.interpolate(self.phi_g(g), size=theta.shape[-2:], mode="bilinear", align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta + phi)))
        alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
        self.last_alpha = alpha.detach()
        return x * alpha
