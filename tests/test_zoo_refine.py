"""RefineNet, FastFCN and Gated-SCNN: shapes on odd sizes, backward, training extras,
a few optimisation steps, and the blocks (RCU/MRF/CRP, JPU, GCL) checked against formulas."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pixelwise.models.fastfcn  # registers "fastfcn"
import pixelwise.models.gscnn  # registers "gscnn"
import pixelwise.models.refinenet  # noqa: F401 - registers "refinenet"
from pixelwise import create_model
from pixelwise.data import SyntheticShapes
from pixelwise.errors import ConfigError
from pixelwise.layers.jpu import JointPyramidUpsampling
from pixelwise.layers.refine import (
    ChainedResidualPooling,
    MultiResolutionFusion,
    RefineNetBlock,
    ResidualConvUnit,
)
from pixelwise.losses.gscnn_loss import (
    DualTaskLoss,
    dual_task_losses,
    gscnn_loss,
    mask_boundaries,
)
from pixelwise.models import SegmentationOutput
from pixelwise.models.gscnn import GatedConv, sobel_magnitude
from pixelwise.models.refinenet import RefineNetDecoder

TINY = {
    "refinenet": {"encoder": "resnet18", "channels": 16, "coarse_channels": 32, "crp_stages": 2},
    "fastfcn": {"encoder": "resnet18", "jpu_channels": 16, "head_channels": 32},
    "gscnn": {"encoder": "resnet18", "channels": 32},
}
CASES = [("refinenet", {}), ("fastfcn", {}), ("fastfcn", {"head": "psp", "aux": False}), ("gscnn", {"aux": True})]


def _build(name, extra, num_classes=3):
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, **TINY[name], **extra)


@pytest.mark.parametrize("name,extra", CASES)
def test_forward_odd_sizes_backward_and_training_extras(name, extra):
    model = _build(name, extra)
    model.eval()
    with torch.no_grad():
        for shape in [(1, 3, 67, 93), (2, 3, 33, 47)]:
            assert model(torch.randn(*shape)).shape == (shape[0], 3, *shape[2:])
    model.train()
    x = torch.randn(2, 3, 33, 47, requires_grad=True)
    y = model(x)
    if isinstance(y, SegmentationOutput):
        assert y.logits.shape == (2, 3, 33, 47)
        assert len(y.aux) == len(y.aux_weights)
        assert all(a.shape == (2, 3, 33, 47) for a in y.aux)
        if name == "gscnn":
            assert y.boundary is not None and y.boundary.shape == (2, 1, 33, 47)
        total = y.logits.square().mean() + sum(a.square().mean() for a in y.aux)
        if y.boundary is not None:
            total = total + y.boundary.square().mean()
    else:  # no training extras: RefineNet, or FastFCN without its aux head
        assert name == "refinenet" or extra.get("aux") is False
        assert y.shape == (2, 3, 33, 47)
        total = y.square().mean()
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def _batch():
    ds = SyntheticShapes(2, image_size=64)
    images, masks = zip(*(ds.generate(i) for i in range(2)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25, torch.from_numpy(np.stack(masks)).long()


def _loss(name, out, target):
    if name == "gscnn":
        # Train on the whole dual-task loss but track its smooth part: the attention and
        # consistency terms average over pixel sets that change as the boundary map sharpens,
        # so their sum can jump up between steps while the model improves.
        parts = dual_task_losses(out, target)
        return sum(parts.values()), parts["segmentation"] + parts["boundary"]
    if isinstance(out, SegmentationOutput):
        loss = F.cross_entropy(out.logits, target) + sum(
            w * F.cross_entropy(a, target) for a, w in zip(out.aux, out.aux_weights))
        return loss, loss
    loss = F.cross_entropy(out, target)
    return loss, loss


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_few_adam_steps_lower_the_loss(name):
    x, target = _batch()
    model = _build(name, {}, num_classes=5).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, tracked = _loss(name, model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(tracked.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


# --- RefineNet blocks -------------------------------------------------------------------

def test_rcu_is_the_preactivation_residual_formula():
    rcu = ResidualConvUnit(4)
    x = torch.randn(1, 4, 9, 7)
    expected = x + rcu.conv2(F.relu(rcu.conv1(F.relu(x))))
    assert torch.allclose(rcu(x), expected, atol=1e-6)


def test_crp_with_one_pool_equals_the_formula():
    crp = ChainedResidualPooling(3, stages=1)
    x = torch.randn(2, 3, 11, 13)
    r = x.clamp(min=0)
    w = crp.convs[0].weight
    expected = r + F.conv2d(F.max_pool2d(r, 5, stride=1, padding=2), w, padding=1)
    assert torch.allclose(crp(x), expected, atol=1e-6)
    # Two stages chain: the second pool works on the first stage's output.
    crp2 = ChainedResidualPooling(3, stages=2)
    p1 = F.conv2d(F.max_pool2d(r, 5, 1, 2), crp2.convs[0].weight, padding=1)
    p2 = F.conv2d(F.max_pool2d(p1, 5, 1, 2), crp2.convs[1].weight, padding=1)
    assert torch.allclose(crp2(x), r + p1 + p2, atol=1e-5)
    with pytest.raises(ValueError, match="stages"):
        ChainedResidualPooling(3, stages=0)


def test_mrf_is_the_sum_of_upsampled_convolutions():
    mrf = MultiResolutionFusion([4, 6], 5)
    fine, coarse = torch.randn(2, 4, 12, 10), torch.randn(2, 6, 6, 5)
    a = F.conv2d(fine, mrf.convs[0].weight, mrf.convs[0].bias, padding=1)
    b = F.interpolate(F.conv2d(coarse, mrf.convs[1].weight, mrf.convs[1].bias, padding=1), size=(12, 10),
                      mode="bilinear", align_corners=False)
    assert torch.allclose(mrf([fine, coarse]), a + b, atol=1e-6)
    single = MultiResolutionFusion([5], 5)
    assert single([coarse[:, :5]]) is not None and torch.equal(single([coarse[:, :5]]), coarse[:, :5])
    with pytest.raises(ValueError, match="out_channels=6"):
        MultiResolutionFusion([6], 5)


def test_refinenet_block_shapes_and_decoder_parameter_count():
    block = RefineNetBlock([8, 16], 8, crp_stages=4)
    assert block([torch.randn(1, 8, 16, 12), torch.randn(1, 16, 8, 6)]).shape == (1, 8, 16, 12)

    def conv(cin, cout, k, bias=True):
        return cin * cout * k * k + (cout if bias else 0)

    def rcu(c):
        return 2 * conv(c, c, 3)

    def block_params(ins, out, stages=4):
        mrf = sum(conv(c, out, 3) for c in ins) if len(ins) > 1 else 0
        return sum(2 * rcu(c) for c in ins) + mrf + stages * conv(out, out, 3, bias=False) + rcu(out)

    enc = [64, 256, 512, 1024, 2048]  # ResNet-101 stage widths
    c, cc = 256, 512
    expected = (conv(256, c, 3, False) + conv(512, c, 3, False) + conv(1024, c, 3, False) + conv(2048, cc, 3, False)
                + block_params([cc], cc) + block_params([c, cc], c) + 2 * block_params([c, c], c) + 2 * rcu(c))
    dec = RefineNetDecoder(enc, channels=c, coarse_channels=cc)
    assert sum(p.numel() for p in dec.parameters()) == expected
    with pytest.raises(ConfigError, match="4 or more stages"):
        RefineNetDecoder([8, 16, 32])


def test_refinenet_output_is_at_stride_4():
    model = _build("refinenet", {}).eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert model.decoder(model.encoder(x)).shape[-2:] == (8, 16)


# --- JPU / FastFCN ----------------------------------------------------------------------

def test_jpu_channels_stride_and_dilations():
    jpu = JointPyramidUpsampling([8, 16, 32], 6)
    xs = [torch.randn(2, 8, 12, 10), torch.randn(2, 16, 6, 5), torch.randn(2, 32, 3, 3)]
    y = jpu(xs)
    assert y.shape == (2, 24, 12, 10) and jpu.out_channels == 24
    assert jpu.dilations == (1, 2, 4, 8)
    for branch, rate in zip(jpu.branches, (1, 2, 4, 8)):
        depthwise, pointwise = branch[0], branch[2]
        assert depthwise.dilation == (rate, rate) and depthwise.padding == (rate, rate)
        assert depthwise.groups == depthwise.in_channels == 18  # separable over the 3 × 6 joint channels
        assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == 6
    # The concatenation order is the order of the dilations: branch k fills channels [6k, 6k+6).
    jpu.eval()
    with torch.no_grad():
        feats = [r(x) for r, x in zip(jpu.reduce, xs)]
        joint = torch.cat([feats[0]] + [F.interpolate(f, size=(12, 10), mode="bilinear", align_corners=False)
                                        for f in feats[1:]], dim=1)
        assert torch.allclose(jpu(xs)[:, 12:18], jpu.branches[2](joint), atol=1e-5)


def test_fastfcn_runs_jpu_at_stride_8_on_a_stride_32_encoder():
    model = _build("fastfcn", {}).eval()
    assert max(model.encoder.reductions) == 32
    with torch.no_grad():
        feats = model.encoder(torch.randn(1, 3, 32, 64))
        assert model.decoder.jpu(feats[-3:]).shape == (1, 64, 4, 8)
    with pytest.raises(ConfigError, match="unknown FastFCN head"):
        create_model("fastfcn", num_classes=3, encoder="resnet18", head="enc")


# --- Gated-SCNN -------------------------------------------------------------------------

def _force_gate(gcl, alpha_logit):
    with torch.no_grad():
        gcl.gate[1].weight.zero_()
        gcl.gate[1].bias.fill_(alpha_logit)
        gcl.conv.weight.copy_(torch.eye(gcl.conv.in_channels).view_as(gcl.conv.weight))


def test_gcl_alpha_zero_blocks_and_alpha_one_passes():
    s, r = torch.randn(2, 4, 5, 6), torch.randn(2, 1, 5, 6)
    hard = GatedConv(4, residual=False).eval()
    _force_gate(hard, -100.0)
    assert torch.allclose(hard.attention(s, r), torch.zeros(2, 1, 5, 6), atol=1e-6)
    assert torch.allclose(hard(s, r), torch.zeros_like(s), atol=1e-6)
    _force_gate(hard, 100.0)
    assert torch.allclose(hard(s, r), s, atol=1e-6)
    # The paper's residual form (ŝ = s ⊙ α + s): α = 0 passes s, α = 1 doubles it.
    paper = GatedConv(4, residual=True).eval()
    _force_gate(paper, -100.0)
    assert torch.allclose(paper(s, r), s, atol=1e-6)
    _force_gate(paper, 100.0)
    assert torch.allclose(paper(s, r), 2 * s, atol=1e-6)


def test_sobel_magnitude_marks_a_step_edge():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 5.0
    g = sobel_magnitude(x)
    assert g.shape == (1, 1, 8, 8) and float(g.max()) == pytest.approx(1.0, abs=1e-5)
    assert torch.all(g[..., [3, 4]] > 0.4) and torch.all(g[..., :2] == 0) and torch.all(g[..., 6:] == 0)


def test_mask_boundaries_and_the_dual_task_loss():
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[:, :, 3:] = 2
    target[:, 0, 0] = 255
    edges, valid = mask_boundaries(target, 3)
    assert edges[0, 0, 1:, 2].eq(1).all() and edges[0, 0].sum() == 6  # column 2 (next to column 3)
    assert not valid[0, 0, 0, 0]
    logits = torch.randn(1, 3, 6, 6, requires_grad=True)
    boundary = torch.randn(1, 1, 6, 6, requires_grad=True)
    parts = dual_task_losses(SegmentationOutput(logits, boundary=boundary), target)
    assert set(parts) == {"segmentation", "boundary", "consistency", "attention"}
    assert all(torch.isfinite(v) and v >= 0 for v in parts.values())
    total = DualTaskLoss()(SegmentationOutput(logits, boundary=boundary), target)
    assert torch.allclose(total, sum(parts.values()))
    total.backward()
    assert logits.grad is not None and boundary.grad is not None
    # Perfect predictions leave only the boundary BCE's floor and nothing else.
    onehot = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50
    perfect = dual_task_losses(SegmentationOutput(onehot, boundary=(edges * 2 - 1) * 50), target)
    assert all(v < 1e-4 for v in perfect.values())
    with pytest.raises(ValueError, match="boundary"):
        gscnn_loss(SegmentationOutput(logits), target)
