"""Shared by the converter tests: randomise a peer model and compare logits with the converted one."""

import torch
import torch.nn.functional as F


def randomise(model, seed=0, std=0.2):
    """Every parameter and BN statistic random (a freshly initialised peer has zeros and ones that hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def max_diff(peer_logits, ours, size):
    """Max |peer - ours| after bringing the peer's logits to the input size as pixelwise does (bilinear)."""
    if tuple(peer_logits.shape[-2:]) != tuple(size):
        peer_logits = F.interpolate(peer_logits, size=size, mode="bilinear", align_corners=False)
    assert ours.shape == peer_logits.shape
    return float((peer_logits - ours).abs().max()), float(peer_logits.abs().max())
