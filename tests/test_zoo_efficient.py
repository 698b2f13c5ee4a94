"""ENet, dilated context module, stacked hourglass, Panoptic FPN head and LR-ASPP:
shapes on odd sizes, training extras, learning, and the blocks that make each one special."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelwise import create_model
from pixelwise.data import SyntheticShapes
from pixelwise.models import SegmentationOutput
from pixelwise.models.context import DILATIONS, ContextModule
from pixelwise.models.enet import InitialBlock, UpsamplingBottleneck, max_unpool
from pixelwise.models.fpn import PanopticFPNDecoder
from pixelwise.models.hourglass import Hourglass
from pixelwise.models.lraspp import LRASPPDecoder

TINY = {
    "enet": {"initial_channels": 8, "stage_channels": [16, 32]},
    "dilatednet": {"fc_channels": 16},
    "hourglass": {"channels": 16, "num_stacks": 2, "depth": 2},
    "fpn": {"encoder": "resnet18", "fpn_channels": 16, "head_channels": 16},
    "lraspp": {"width_mult": 0.25, "inter_channels": 16},
}


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TINY))
def test_odd_sizes_backward_and_training_extras(name):
    model = create_model(name, num_classes=3, **TINY[name])
    x = torch.randn(2, 3, 33, 47, requires_grad=True)
    y = model(x)
    if isinstance(y, SegmentationOutput):
        assert len(y.aux) == len(y.aux_weights) >= 1
        assert all(a.shape == (2, 3, 33, 47) for a in y.aux)
        total = y.logits.square().mean() + sum(w * a.square().mean() for w, a in zip(y.aux_weights, y.aux))
        y = y.logits
    else:
        total = y.square().mean()
    assert y.shape == (2, 3, 33, 47)
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        for shape in [(1, 3, 67, 93), (2, 3, 33, 47)]:
            out = model(torch.randn(*shape))
            assert isinstance(out, torch.Tensor) and out.shape == (shape[0], 3, *shape[2:])


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_few_steps_lower_the_loss(name):
    data = SyntheticShapes(2, image_size=32)
    images, masks = zip(*(data.generate(i) for i in range(2)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    target = torch.from_numpy(np.stack(masks)).long()
    model = create_model(name, num_classes=5, **TINY[name])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_of(out):
        if isinstance(out, SegmentationOutput):
            return F.cross_entropy(out.logits, target) + sum(
                w * F.cross_entropy(a, target) for w, a in zip(out.aux_weights, out.aux))
        return F.cross_entropy(out, target)

    losses = []
    for _ in range(5):
        loss = loss_of(model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


# ENet ------------------------------------------------------------------------------------------

def test_enet_initial_block_is_13_conv_filters_plus_the_pooled_input():
    block = InitialBlock(3, 16)
    assert block.conv.out_channels == 13
    assert block(torch.randn(1, 3, 32, 48)).shape == (1, 16, 16, 24)


def test_enet_unpooling_uses_the_stored_indices():
    torch.manual_seed(0)
    block = UpsamplingBottleneck(8, 4, dropout=0.0).eval()
    x = torch.randn(1, 8, 4, 4)
    _, indices = F.max_pool2d(torch.randn(1, 4, 8, 8), 2, return_indices=True)
    permuted = indices.flatten(2)[..., torch.randperm(16)].view_as(indices)
    with torch.no_grad():
        out = block(x, indices)
        assert out.shape == (1, 4, 8, 8)
        assert not torch.allclose(out, block(x, permuted))


def test_enet_unpool_equals_max_unpool2d():
    # ENet scatters instead of calling max_unpool2d, which torch.jit.trace cannot record.
    x = torch.randn(2, 3, 8, 10)
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(max_unpool(pooled, indices), F.max_unpool2d(pooled, indices, 2))


def test_enet_parameter_count_matches_the_paper():
    model = create_model("enet", num_classes=19)
    assert 0.36e6 < _params(model) < 0.38e6  # paper: 0.37 M
    assert len(model.stage23) == 16  # stages 2 and 3: eight bottlenecks each after bottleneck2.0


# Context module --------------------------------------------------------------------------------

def test_context_module_follows_table_1():
    module = ContextModule(21)
    assert DILATIONS == (1, 1, 2, 4, 8, 16, 1)
    assert module.dilations == [1, 1, 2, 4, 8, 16, 1, 1]
    kernels = [m.kernel_size for m in module if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [(3, 3)] * 7 + [(1, 1)]
    assert _params(module) == 64 * 21 ** 2 + 8 * 21  # the paper's 64 C² weights, plus biases
    large = ContextModule(4, variant="large")
    widths = [m.out_channels for m in large if isinstance(m, torch.nn.Conv2d)]
    assert widths == [8, 8, 16, 32, 64, 128, 128, 4]


@pytest.mark.parametrize("variant,tol", [("basic", 1e-6), ("large", 0.1)])
def test_context_identity_init_passes_the_input_through(variant, tol):
    module = ContextModule(5, variant=variant)
    x = torch.rand(2, 5, 40, 40)  # non-negative: the ReLU truncation keeps it
    with torch.no_grad():
        assert (module(x) - x).abs().max() < tol
        exact = ContextModule(5, variant=variant, noise_std=0.0)
        assert torch.allclose(exact(x), x, atol=1e-5)
        random = ContextModule(5, variant=variant, identity_init=False)
        assert not torch.allclose(random(x), x, atol=1e-2)


def test_dilatednet_with_identity_context_equals_its_front_end_at_start():
    torch.manual_seed(0)
    full = create_model("dilatednet", num_classes=3, fc_channels=16).eval()
    torch.manual_seed(0)
    front = create_model("dilatednet", num_classes=3, fc_channels=16, context="none").eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        # The context module copies the non-negative scores; the negative ones are truncated to 0.
        assert torch.allclose(full(x), F.interpolate(
            front.decoder(front.encoder(x)).clamp(min=0), size=(40, 48), mode="bilinear"), atol=1e-5)


# Stacked hourglass -----------------------------------------------------------------------------

def test_hourglass_intermediate_supervision_and_shapes():
    model = create_model("hourglass", num_classes=4, channels=16, num_stacks=3, depth=2)
    out = model(torch.randn(2, 3, 45, 61))
    assert isinstance(out, SegmentationOutput)
    assert out.logits.shape == (2, 4, 45, 61)
    assert [a.shape for a in out.aux] == [(2, 4, 45, 61)] * 2 and out.aux_weights == [1.0, 1.0]
    assert len(model.reinject_features) == len(model.reinject_predictions) == 2
    single = create_model("hourglass", num_classes=4, channels=16, num_stacks=1, depth=2)
    assert isinstance(single(torch.randn(1, 3, 32, 32)), torch.Tensor)


def test_hourglass_is_recursive_and_keeps_the_size():
    block = Hourglass(8, depth=4)
    depth, inner = 1, block.inner
    while isinstance(inner, Hourglass):
        depth, inner = depth + 1, inner.inner
    assert depth == 4
    assert block(torch.randn(1, 8, 32, 48)).shape == (1, 8, 32, 48)


# Panoptic FPN ----------------------------------------------------------------------------------

def test_fpn_semantic_head_upsampling_stages_per_level():
    dec = PanopticFPNDecoder([8, 16, 32, 64, 128], [2, 4, 8, 16, 32], fpn_channels=16, head_channels=8)
    assert [len(b) for b in dec.branches] == [1, 1, 2, 3]
    assert [b[-1].upsample for b in dec.branches] == [False, True, True, True]
    feats = [torch.randn(1, c, 64 // r, 64 // r) for c, r in zip([8, 16, 32, 64, 128], [2, 4, 8, 16, 32])]
    assert dec(feats).shape == (1, 8, 16, 16)
    with pytest.raises(ValueError, match="strides"):
        PanopticFPNDecoder([8, 16, 32], [2, 4, 8])


# LR-ASPP ---------------------------------------------------------------------------------------

def test_lraspp_matches_torchvision_parameters_and_outputs():
    import torchvision

    ref = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                    num_classes=21).eval()
    ours = create_model("lraspp", num_classes=21).eval()
    assert _params(ours) == _params(ref)  # 3,221,538
    assert ours.encoder.out_channels == [40, 960] and ours.encoder.reductions == [8, 16]
    assert isinstance(ours.decoder, LRASPPDecoder)
    renames = {"backbone.": "encoder.features.", "classifier.cbr.": "decoder.reduce.",
               "classifier.scale.": "decoder.gate.", "classifier.low_classifier.": "decoder.classify_low.",
               "classifier.high_classifier.": "decoder.classify_high."}
    state = {}
    for key, value in ref.state_dict().items():
        prefix = next(p for p in renames if key.startswith(p))
        state[renames[prefix] + key[len(prefix):]] = value
    ours.load_state_dict(state)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x)["out"], atol=1e-5)
