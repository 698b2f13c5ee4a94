"""torchvision segmentation weights -> pixelwise: torchvision's models with random weights, saved as .pth,
converted, logits compared (max abs difference < 1e-4) at several sizes, odd ones included."""

import pytest
import torch

from convert_helpers import max_diff, randomise
from pixelwise.convert import convert
from pixelwise.hub import load_model

tvseg = pytest.importorskip("torchvision.models.segmentation")

CASES = [
    ("fcn_resnet50", {"aux_loss": True}),
    ("deeplabv3_resnet50", {"aux_loss": True}),
    ("deeplabv3_resnet101", {}),
    ("deeplabv3_mobilenet_v3_large", {"aux_loss": True}),
    ("lraspp_mobilenet_v3_large", {}),
]


@pytest.mark.parametrize("name,kwargs", CASES)
def test_torchvision_logits_match(name, kwargs, tmp_path):
    torch.manual_seed(0)
    ref = getattr(tvseg, name)(weights=None, weights_backbone=None, num_classes=5, **kwargs)
    ref = randomise(ref, std=0.05)
    torch.save(ref.state_dict(), tmp_path / "peer.pth")
    model, config = load_model(convert(tmp_path / "peer.pth", source="torchvision", out=tmp_path / "out"))
    assert config["data"]["num_classes"] == 5
    for size in [(67, 93), (64, 64), (45, 31)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            diff, scale = max_diff(ref(x)["out"], model(x), size)
        assert scale > 1e-2 and diff < 1e-4, (name, size, diff, scale)
