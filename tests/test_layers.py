"""Blocks: shapes and behaviour checked against what the paper says they compute."""

import pytest
import torch

from pixelwise.layers import ASPP, ConvNormAct, PyramidPooling, SeparableConvNormAct


def _impulse_response(module, size=25):
    x = torch.zeros(1, 1, size, size)
    x[..., size // 2, size // 2] = 1.0
    module.eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.fill_(0.0 if name.endswith("bias") else 1.0)  # every tap the impulse reaches shows up
        return module(x)[0, 0]


def test_atrous_branch_samples_at_the_dilation_rate():
    for rate in (2, 5):
        response = _impulse_response(ConvNormAct(1, 1, 3, dilation=rate, norm="none"))
        nz = torch.nonzero(response).tolist()
        c = 12
        expected = sorted([c + dy, c + dx] for dy in (-rate, 0, rate) for dx in (-rate, 0, rate))
        assert sorted(nz) == expected


def test_aspp_shapes_and_image_pooling_branch_is_spatially_constant():
    aspp = ASPP(8, 16, rates=(1, 2, 3)).eval()
    x = torch.randn(2, 8, 13, 17)
    assert aspp(x).shape == (2, 16, 13, 17)
    assert len(aspp.branches) == 5  # 1x1, three atrous, image pooling
    pooled = aspp.branches[-1](x)
    assert torch.allclose(pooled, pooled[..., :1, :1].expand_as(pooled), atol=1e-6)


def test_separable_conv_has_depthwise_then_pointwise():
    block = SeparableConvNormAct(8, 16, dilation=2)
    depthwise, pointwise = block[0], block[2]
    assert depthwise.groups == 8 and depthwise.dilation == (2, 2)
    assert pointwise.kernel_size == (1, 1)
    full = 8 * 16 * 9
    assert sum(p.numel() for p in block.parameters() if p.ndim == 4) == 8 * 9 + 8 * 16 < full
    assert block(torch.randn(1, 8, 10, 10)).shape == (1, 16, 10, 10)


def test_pyramid_pooling_bins_average_sub_regions():
    ppm = PyramidPooling(8, bins=(1, 2, 3, 6)).eval()
    x = torch.randn(2, 8, 12, 18)
    y = ppm(x)
    assert y.shape == (2, 8 + 4 * 2, 12, 18) and ppm.out_channels == 16
    assert torch.equal(y[:, :8], x)  # the input is passed through unchanged
    pooled2 = ppm.stages[1][0](x)  # 2x2 bins: the mean of each quadrant
    quadrant = x[:, :, :6, 9:].mean(dim=(2, 3))
    assert torch.allclose(pooled2[:, :, 0, 1], quadrant, atol=1e-6)
    global_branch = y[:, 8:10]
    assert torch.allclose(global_branch, global_branch[..., :1, :1].expand_as(global_branch), atol=1e-6)


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_avg_pool_equals_torch_at_every_size(bins):
    from pixelwise.layers.ppm import AdaptiveAvgPool

    torch.manual_seed(0)
    pool = AdaptiveAvgPool(bins)
    for h, w in [(1, 1), (1, 7), (5, 3), (13, 17), (64, 64), (33, 97)]:  # bins > size included
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        assert torch.allclose(pool(x), torch.nn.functional.adaptive_avg_pool2d(x, bins), atol=1e-12)
    x = torch.randn(1, 2, 19, 23)
    assert pool(x).dtype == torch.float32 and pool(x.to(memory_format=torch.channels_last)).shape == (1, 2, bins, bins)
