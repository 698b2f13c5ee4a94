"""Sliding-window inference, test-time augmentation, autocast and channels_last."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal.windows import gaussian as scipy_gaussian

from pixelwise import create_model
from pixelwise.errors import ConfigError
from pixelwise.infer.runtime import model_function, predict_image
from pixelwise.infer.sliding import importance_1d, sliding_window, tile_starts
from pixelwise.infer.tta import parse_tta, predict_probs, tta_variants


def _pointwise(in_ch: int, out_ch: int, dims: int = 2) -> torch.nn.Module:
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(in_ch, out_ch, 1)
    return conv.eval()


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize("shape,tile,overlap", [((2, 3, 70, 50), 32, 0.5), ((1, 3, 33, 97), (16, 40), 0.25),
                                                ((1, 3, 20, 12), 32, 0.25)])  # last: smaller than the tile
def test_tiling_a_pointwise_model_changes_nothing(shape, tile, overlap, blend):
    # A 1x1 convolution sees one pixel at a time, so any weighted average of tile outputs
    # that cover a pixel is that pixel's untiled output.
    model = _pointwise(3, 4)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
    got = sliding_window(model, x, tile=tile, overlap=overlap, blend=blend, batch_size=3)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_tiling_a_volume_with_a_pointwise_model_changes_nothing():
    model = _pointwise(2, 3, dims=3)
    x = torch.randn(1, 2, 19, 23, 9)
    with torch.no_grad():
        expected = model(x)
    got = sliding_window(model, x, tile=(8, 16, 16), overlap=0.5, batch_size=5, num_classes=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_blended_value_is_the_hand_computed_gaussian_weighted_average():
    # 1 x W "image" whose pixel value is its column; the model paints every tile with the
    # column of its first pixel, i.e. its start offset s_k. The blend at column j must be
    # sum_k s_k g(j - s_k) / sum_k g(j - s_k) with g the Gaussian of sigma = tile / 8.
    width, t = 20, 8
    x = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    calls = []

    def model_fn(tiles):
        calls.append(tiles.shape[0])
        return tiles[..., :1].expand_as(tiles).clone()

    got = sliding_window(model_fn, x, tile=(1, t), overlap=0.5, blend="gaussian", batch_size=3)[0, 0, 0].numpy()
    starts = [0, 4, 8, 12]  # step 8 * (1 - 0.5) = 4, last tile ends at 20
    sigma = t / 8
    expected = []
    for j in range(width):
        num = den = 0.0
        for s in starts:
            if s <= j < s + t:
                g = math.exp(-((j - s) - (t - 1) / 2) ** 2 / (2 * sigma**2))
                num += s * g
                den += g
        expected.append(num / den)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert calls == [3, 1]  # 4 tiles in batches of at most 3


def test_uniform_blend_is_the_plain_mean_of_covering_tiles():
    x = torch.arange(10, dtype=torch.float32).view(1, 1, 1, 10)
    got = sliding_window(lambda t: t[..., :1].expand_as(t).clone(), x, tile=(1, 4), overlap=0.5,
                         blend="uniform")[0, 0, 0]
    # tiles start at 0, 2, 4, 6: columns 2-3 are covered by tiles 0 and 2, etc.
    expected = [0, 0, 1, 1, 3, 3, 5, 5, 6, 6]
    assert got.tolist() == expected


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 0.25), (21, 8, 0.5), (1000, 256, 0.5), (7, 7, 0.9)])
def test_tile_starts_cover_the_axis_evenly(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] == size - tile
    steps = np.diff(starts)
    assert (steps >= 1).all() and (steps <= tile * (1 - overlap) + 1).all()
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()
    # the fewest tiles that keep every step within tile * (1 - overlap)
    assert len(starts) == 1 or len(starts) - 1 == math.ceil((size - tile) / max(1, int(tile * (1 - overlap))))


@pytest.mark.parametrize("tile", [8, 64, 129])
def test_gaussian_importance_matches_scipy_window_with_sigma_tile_over_8(tile):
    ours = importance_1d(tile, "gaussian").numpy()
    theirs = scipy_gaussian(tile, std=tile / 8)
    np.testing.assert_allclose(ours, theirs / theirs.max(), rtol=1e-10)


def test_sliding_window_rejects_bad_settings():
    model = _pointwise(3, 2)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window(model, x, tile=8, overlap=1.0)
    with pytest.raises(ConfigError, match="blend"):
        sliding_window(model, x, tile=8, blend="cosine")
    with pytest.raises(ConfigError, match="num_classes"):
        sliding_window(model, x, tile=8, num_classes=5)
    with pytest.raises(ConfigError, match="must return"):
        sliding_window(lambda t: t[..., ::2, ::2], x, tile=8)


class _ColumnBiased(torch.nn.Module):
    """1x1 conv plus a fixed ramp over columns: not flip-equivariant."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        ramp = torch.linspace(-2, 2, x.shape[-1]).view(1, 1, 1, -1)
        return self.conv(x) + ramp * torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)


def test_flip_tta_of_a_flip_equivariant_model_equals_the_plain_prediction():
    model = _pointwise(3, 4)
    x = torch.randn(1, 3, 24, 30)
    with torch.no_grad():
        plain = model(x).softmax(1)
    for tta in ("flip", {"flips": "hv"}):
        torch.testing.assert_close(predict_probs(model, x, tta=tta), plain, atol=1e-6, rtol=1e-5)
    # and through the sliding window
    torch.testing.assert_close(predict_probs(model, x, tta="flip", tile=16, overlap=0.5), plain,
                               atol=1e-5, rtol=1e-5)


def test_flip_tta_averages_the_unflipped_probabilities():
    model = _ColumnBiased().eval()
    x = torch.randn(2, 3, 10, 14)
    with torch.no_grad():
        plain = torch.softmax(model(x), dim=1)
        mirrored = torch.softmax(model(torch.flip(x, dims=[3])), dim=1)
        updown = torch.softmax(model(torch.flip(x, dims=[2])), dim=1)
        both = torch.softmax(model(torch.flip(x, dims=[2, 3])), dim=1)
    expected_h = (plain + torch.flip(mirrored, dims=[3])) / 2
    torch.testing.assert_close(predict_probs(model, x, tta="flip"), expected_h)
    expected_hv = (plain + torch.flip(mirrored, dims=[3]) + torch.flip(updown, dims=[2])
                   + torch.flip(both, dims=[2, 3])) / 4
    torch.testing.assert_close(predict_probs(model, x, tta={"flips": ["h", "v"]}), expected_hv)
    assert not torch.allclose(expected_h, plain, atol=1e-3)  # the test can tell the difference


def test_multiscale_tta_averages_resized_predictions():
    model = _ColumnBiased().eval()
    x = torch.randn(1, 3, 16, 20)
    expected = torch.zeros(1, 3, 16, 20)
    with torch.no_grad():
        for scale in (0.5, 1.0, 1.5):
            small = F.interpolate(x, size=(int(16 * scale), int(20 * scale)), mode="bilinear")
            logits = F.interpolate(model(small), size=(16, 20), mode="bilinear")
            expected += logits.softmax(1) / 3
    torch.testing.assert_close(predict_probs(model, x, tta={"scales": [0.5, 1, 1.5]}), expected)


def test_multiscale_tta_of_a_constant_image_with_a_pointwise_model_is_exact():
    model = _pointwise(3, 4)
    x = torch.randn(1, 3, 1, 1).expand(1, 3, 24, 24).contiguous()
    with torch.no_grad():
        plain = model(x).softmax(1)
    got = predict_probs(model, x, tta="flip+scales", tile=16, overlap=0.25)
    torch.testing.assert_close(got, plain, atol=1e-6, rtol=1e-5)


def test_tta_spec_parsing():
    assert len(tta_variants(parse_tta(False))) == 1
    assert len(tta_variants(parse_tta("flip"))) == 2
    assert len(tta_variants(parse_tta("flip+scales"))) == 6
    assert len(tta_variants(parse_tta({"flips": "hv", "scales": [1, 2]}))) == 8
    for bad in ("rotate", {"flips": "x"}, {"scales": [0]}, {"flip": "h"}):
        with pytest.raises(ConfigError):
            parse_tta(bad)
    with pytest.raises(ConfigError, match="3D"):
        predict_probs(_pointwise(3, 2), torch.randn(1, 3, 8, 8), tta={"flips": "d"})


def test_3d_flip_tta_with_sliding_window():
    model = _pointwise(1, 2, dims=3)
    x = torch.randn(1, 1, 10, 12, 12)
    with torch.no_grad():
        plain = model(x).softmax(1)
    got = predict_probs(model, x, tta={"flips": "dhv"}, tile=8, overlap=0.5)
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_and_channels_last_agree_with_fp32(real_bf16):
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, base_channels=4, depth=2, norm="batch").eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    kw = {"mean": [0.5] * 3, "std": [0.25] * 3}
    labels, probs = predict_image(model, image, **kw)
    _, probs_cl = predict_image(model.to(memory_format=torch.channels_last), image, channels_last=True, **kw)
    np.testing.assert_allclose(probs_cl, probs, atol=1e-4)
    labels_bf, probs_bf = predict_image(model, image, amp="bf16", **kw)
    assert probs_bf.dtype == np.float32
    assert np.abs(probs_bf - probs).max() < 0.05  # bf16 keeps ~3 significant digits
    assert (labels_bf == labels).mean() > 0.9
    with pytest.raises(ValueError, match="fp16"):
        model_function(model, device="cpu", amp="fp16")


def test_model_function_hands_channels_last_tensors_to_the_model():
    seen = []

    def probe(x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return x[:, :2]

    model_function(probe, channels_last=True)(torch.randn(1, 3, 8, 8))
    model_function(probe, channels_last=False)(torch.randn(1, 3, 8, 8))
    assert seen == [True, False]


def test_predict_image_with_tile_and_tta_matches_a_manual_pipeline():
    model = _pointwise(3, 2)
    image = np.random.default_rng(1).integers(0, 256, (30, 26, 3), dtype=np.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    x = (image.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    x = torch.from_numpy(x.transpose(2, 0, 1)).float()[None]
    with torch.no_grad():
        expected = model(x).softmax(1)[0].numpy()
    labels, probs = predict_image(model, image, mean=mean, std=std, tile=16, overlap=0.5, tta="flip")
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert labels.dtype == np.int64 and (labels == expected.argmax(0)).all()
