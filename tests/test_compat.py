"""smp-style constructors: a typical segmentation_models.pytorch script with only the import changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pixelwise
from pixelwise.compat import smp_encoder_name
from pixelwise.data import SyntheticShapes
from pixelwise.errors import ConfigError


def _gray_batches(n_batches: int, batch: int, size: int = 64):
    """Grayscale images + 3-class masks (background, round shapes, angular shapes)."""
    ds = SyntheticShapes(n_batches * batch, image_size=size, seed=3)
    merge = torch.tensor([0, 1, 2, 2, 1])  # circle/star -> 1, rectangle/triangle -> 2
    out = []
    for b in range(n_batches):
        items = [ds[b * batch + i] for i in range(batch)]
        x = torch.stack([it["image"].mean(0, keepdim=True) for it in items])
        y = torch.stack([merge[it["mask"]] for it in items])
        out.append((x, y))
    return out


def test_smp_training_snippet_runs_unchanged_and_learns():
    import pixelwise as smp  # the only changed line: was `import segmentation_models_pytorch as smp`

    torch.manual_seed(0)
    model = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=3)
    loss_fn = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, from_logits=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    data = _gray_batches(4, 4)
    epoch_loss = []
    for epoch in range(6):
        model.train()
        losses = []
        for x, y in data:
            optimizer.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_loss.append(np.mean(losses))
    assert logits.shape == (4, 3, 64, 64)
    assert epoch_loss[-1] < 0.88 * epoch_loss[0], epoch_loss
    pred = model.predict(data[0][0])
    assert not model.training  # predict() switches to eval like smp's
    torch.testing.assert_close(pred, model(data[0][0]))


def test_constructors_map_smp_arguments():
    for ctor in (pixelwise.Unet, pixelwise.FPN, pixelwise.DeepLabV3Plus):
        model = ctor(encoder_name="resnet18", encoder_weights=None, in_channels=2, classes=4).eval()
        assert model(torch.randn(1, 2, 64, 64)).shape == (1, 4, 64, 64)
        assert model.encoder is model.net.encoder and model.segmentation_head is model.net.head
    # PSPNet / DeepLabV3 lose the aux head, so training mode still returns one tensor as in smp.
    for ctor in (pixelwise.PSPNet, pixelwise.DeepLabV3):
        out = ctor(encoder_name="resnet18", classes=2).train()(torch.randn(2, 3, 64, 64))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 64, 64)


def test_activation_is_applied_and_save_load_round_trips(tmp_path):
    torch.manual_seed(0)
    model = pixelwise.Unet(encoder_name="resnet18", classes=3, activation="softmax2d").eval()
    x = torch.randn(1, 3, 64, 64)
    probs = model(x)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 64))
    torch.testing.assert_close(probs, model.net(x).softmax(1))
    pixelwise.save(model, tmp_path / "m")
    loaded = pixelwise.load(tmp_path / "m")  # the smp-style interface comes back, activation included
    torch.testing.assert_close(loaded(x), probs)
    assert loaded.saved_config["card"]["interface"] == {"kind": "smp", "activation": "softmax2d"}
    with pytest.raises(ConfigError, match="activation 'relu6' is unknown"):
        pixelwise.Unet(encoder_name="resnet18", activation="relu6")


@pytest.mark.parametrize("smp_name, ours", [("resnet34", "resnet34"), ("tu-regnety_004", "regnety_004"),
                                            ("efficientnet-b3", "efficientnet_b3"),
                                            ("timm-efficientnet-b0", "tf_efficientnet_b0")])
def test_encoder_names_translate(smp_name, ours):
    assert smp_encoder_name(smp_name) == ours


def test_losses_accept_mode_positionally_like_smp():
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    for cls in (pixelwise.losses.DiceLoss, pixelwise.losses.JaccardLoss, pixelwise.losses.FocalLoss,
                pixelwise.losses.LovaszLoss, pixelwise.losses.TverskyLoss):
        torch.testing.assert_close(cls(pixelwise.losses.MULTICLASS_MODE)(logits, target),
                                   cls(mode="multiclass")(logits, target))


@pytest.mark.parametrize("ctor,kwargs", [
    (pixelwise.Segformer, {"encoder_name": "mit_b0", "decoder_segmentation_channels": 32}),
    (pixelwise.UPerNet, {"encoder_name": "resnet18", "decoder_channels": 32}),
    (pixelwise.DPT, {"encoder_name": "tu-deit_tiny_patch16_224.fb_in1k", "decoder_intermediate_channels": [8, 16, 32, 32],
                     "decoder_fusion_channels": 16}),
])
def test_transformer_era_constructors(ctor, kwargs):
    model = ctor(encoder_weights=None, in_channels=3, classes=2, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)


def test_encoder_depth_aux_params_and_scse():
    model = pixelwise.Unet("resnet18", encoder_depth=3, decoder_attention_type="scse", classes=2,
                           aux_params={"classes": 4, "dropout": 0.5}).eval()
    assert model.encoder.reductions == [2, 4, 8]
    with torch.no_grad():
        masks, labels = model(torch.randn(2, 3, 64, 64))
    assert masks.shape == (2, 2, 64, 64) and labels.shape == (2, 4)
    assert any(type(m).__name__ == "SCSE" for m in model.modules())
    with pytest.raises(ConfigError, match="encoder_depth"):
        pixelwise.FPN("resnet18", encoder_depth=4)


def test_smp_own_encoder_names():
    assert smp_encoder_name("mobilenet_v2") == "tv:mobilenet_v2"
    assert smp_encoder_name("timm-regnetx_002") == "regnetx_002"
    model = pixelwise.Unet("mobilenet_v2", classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
