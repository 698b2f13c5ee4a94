"""Dense CRF: the filters and mean field against brute-force O(N^2) computations.

The references below are written independently of pixelwise.postprocess: dense
pairwise kernel matrices in float64 NumPy, symmetric normalisation, explicit Potts
matrix. The permutohedral lattice is an approximation; the tolerances are documented in
docs/crf.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pixelwise.errors import PixelwiseError
from pixelwise.postprocess import (
    CRFasRNN,
    CRFRefinedModel,
    DenseCRF,
    PermutohedralLattice,
    dense_crf,
    gaussian_blur_2d,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # These are tiny problems: on a shared, oversubscribed CPU the OpenMP hand-off of
    # 2 threads costs 10-40x more than the work itself.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blocks_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3): four flat colour quadrants plus mild noise."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.float64)
    image[: h // 2, : w // 2] = (200, 40, 40)
    image[: h // 2, w // 2 :] = (40, 180, 60)
    image[h // 2 :, : w // 2] = (50, 60, 210)
    image[h // 2 :, w // 2 :] = (220, 220, 90)
    image += rng.normal(0.0, 6.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _kernel(features: np.ndarray) -> np.ndarray:
    """Dense ``exp(-|f_i - f_j|^2 / 2)``, written with explicit broadcasting."""
    delta = features[:, None, :] - features[None, :, :]
    return np.exp(-0.5 * np.einsum("ijk,ijk->ij", delta, delta))


def _brute_mean_field(image: np.ndarray, logits: np.ndarray, *, iterations: int, sxy_g: float, w_g: float,
                      sxy_b: float, srgb: float, w_b: float, mu: np.ndarray | None = None) -> np.ndarray:
    """Exact mean field, O(N^2): returns Q (C, H, W)."""
    h, w, _ = image.shape
    c = logits.shape[0]
    yy, xx = np.mgrid[0:h, 0:w]
    pos = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    rgb = image.reshape(-1, 3).astype(np.float64)
    kernels = []
    for k in (_kernel(pos / sxy_g), _kernel(np.concatenate([pos / sxy_b, rgb / srgb], 1))):
        d = 1.0 / np.sqrt(k.sum(1))
        kernels.append(d[:, None] * k * d[None, :])  # D^-1/2 K D^-1/2
    mu = 1.0 - np.eye(c) if mu is None else mu
    unary = logits.reshape(c, -1).T.astype(np.float64)  # (N, C)

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q = softmax(unary)
    for _ in range(iterations):
        message = w_g * kernels[0] @ q + w_b * kernels[1] @ q  # (N, C)
        q = softmax(unary - message @ mu.T)
    return q.T.reshape(c, h, w)


def test_lattice_filter_close_to_exact_gaussian():
    image = _blocks_image(16, 16)
    yy, xx = np.mgrid[0:16, 0:16]
    features = np.concatenate([np.stack([yy, xx], -1) / 4.0, image / 20.0], -1).reshape(-1, 5)
    values = np.random.default_rng(1).uniform(0, 1, (256, 3))
    exact = _kernel(features)
    lattice = PermutohedralLattice(torch.from_numpy(features))
    approx = lattice.filter(torch.from_numpy(values)).numpy()
    ones = lattice.filter(torch.ones(256, 1, dtype=torch.float64)).numpy()
    # Compare the normalised (weighted mean) filters: the lattice's overall gain differs.
    ref = exact @ values / exact.sum(1, keepdims=True)
    got = approx / ones
    relative = np.abs(got - ref) / np.abs(ref)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.98
    assert relative.mean() < 0.03 and relative.max() < 0.2
    # And it is not a trivial smoother: a much wider Gaussian fits clearly worse.
    wide = _kernel(features / 3.0)
    assert np.abs(wide @ values / wide.sum(1, keepdims=True) - ref).mean() > 3 * np.abs(got - ref).mean()


@pytest.mark.parametrize("dim", [1, 3])
def test_lattice_low_dimensions(dim):
    points = np.random.default_rng(dim).uniform(0, 5, (300, dim))
    values = np.random.default_rng(7).uniform(0, 1, (300, 2))
    exact = _kernel(points)
    lattice = PermutohedralLattice(torch.from_numpy(points))
    got = (lattice.filter(torch.from_numpy(values)) / lattice.filter(torch.ones(300, 1, dtype=torch.float64))).numpy()
    ref = exact @ values / exact.sum(1, keepdims=True)
    assert np.abs(got - ref).max() < 0.05


@pytest.mark.parametrize("sigma", [1.5, 17.0])  # separable convolution / 2-D lattice path
def test_gaussian_blur_matches_dense_sum(sigma):
    h, w = 13, 37
    values = torch.rand(1, 2, h, w, dtype=torch.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    pos = np.stack([yy.ravel(), xx.ravel()], 1) / sigma
    exact = (_kernel(pos) @ values[0].reshape(2, -1).numpy().T).T.reshape(2, h, w)
    got = gaussian_blur_2d(values, sigma)[0].numpy()
    if sigma < 5:
        np.testing.assert_allclose(got, exact, rtol=1e-3)
    else:
        # The lattice's gain is not 1; its normalised output is what the CRF uses.
        norm = gaussian_blur_2d(torch.ones(1, 1, h, w, dtype=torch.float64), sigma)[0].numpy()
        ref = exact / _kernel(pos).sum(1).reshape(h, w)
        assert np.abs(got / norm - ref).max() < 0.02


def test_spatial_mean_field_is_exact():
    # With the bilateral weight at 0 only the exact separable filter is used.
    image = _blocks_image(12, 12)
    logits = torch.randn(3, 12, 12, dtype=torch.float64)
    mu = np.random.default_rng(3).uniform(-1, 2, (3, 3))
    crf = DenseCRF(iterations=4, compat_gaussian=2.0, compat_bilateral=0.0, compat=torch.from_numpy(mu))
    got = torch.softmax(crf(logits[None], torch.from_numpy(image).permute(2, 0, 1)[None].double())[0], 0)
    ref = _brute_mean_field(image, logits.numpy(), iterations=4, sxy_g=3.0, w_g=2.0, sxy_b=80.0,
                            srgb=13.0, w_b=0.0, mu=mu)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)


_KWARGS = {"sxy_gaussian": 2.0, "compat_gaussian": 3.0, "sxy_bilateral": 5.0, "srgb_bilateral": 13.0,
               "compat_bilateral": 10.0}
_BRUTE = {"sxy_g": 2.0, "w_g": 3.0, "sxy_b": 5.0, "srgb": 13.0, "w_b": 10.0}


def test_one_mean_field_step_close_to_brute_force():
    # Random unaries keep Q far from saturation, so this measures the filter's error.
    image = _blocks_image(12, 12, seed=4)
    probs = torch.softmax(2.0 * torch.randn(3, 12, 12, dtype=torch.float64), 0)
    got = dense_crf(image, probs, iterations=1, **_KWARGS).double().numpy()
    ref = _brute_mean_field(image, probs.log().numpy(), iterations=1, **_BRUTE)
    error = np.abs(got - ref)
    assert error.mean() < 0.015 and error.max() < 0.15
    assert (got.argmax(0) == ref.argmax(0)).mean() > 0.95
    # The step changed the input a lot, so the agreement above is not the identity.
    assert np.abs(ref - probs.numpy()).mean() > 5 * error.mean()


def test_five_mean_field_steps_close_to_brute_force():
    image = _blocks_image(12, 12, seed=4)
    labels = np.zeros((12, 12), np.int64)
    labels[:6, 6:], labels[6:, :6], labels[6:, 6:] = 1, 2, 1
    logits = torch.from_numpy(np.eye(3)[labels].transpose(2, 0, 1)) + torch.randn(3, 12, 12, dtype=torch.float64)
    probs = torch.softmax(logits, 0)
    got = dense_crf(image, probs, iterations=5, **_KWARGS).double().numpy()
    ref = _brute_mean_field(image, probs.log().numpy(), iterations=5, **_BRUTE)
    assert np.abs(got - ref).max() < 0.01
    assert (got.argmax(0) == ref.argmax(0)).all()
    assert (probs.numpy().argmax(0) == labels).mean() < 0.8 and (ref.argmax(0) == labels).mean() > 0.95


def test_potts_compat_matrix_forms_agree():
    image = torch.from_numpy(_blocks_image(16, 16)).permute(2, 0, 1)[None].float()
    logits = torch.randn(1, 4, 16, 16)
    eye = torch.eye(4)
    default = torch.softmax(DenseCRF()(logits, image), 1)
    potts = torch.softmax(DenseCRF(compat=1.0 - eye)(logits, image), 1)
    reward = torch.softmax(DenseCRF(compat=-eye)(logits, image), 1)  # densecrf's form
    torch.testing.assert_close(potts, default, atol=1e-5, rtol=0)
    torch.testing.assert_close(reward, default, atol=1e-5, rtol=0)


def _noisy_two_regions(size: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    truth[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = 1
    image = np.where(truth[..., None] == 1, (200, 60, 50), (40, 90, 190)).astype(np.float64)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    p1 = np.clip(np.where(truth == 1, 0.62, 0.38) + rng.normal(0, 0.25, truth.shape), 0.02, 0.98)
    probs = torch.from_numpy(np.stack([1 - p1, p1])).float()
    return image, probs, torch.from_numpy(truth)


def test_crf_cleans_noisy_probabilities():
    image, probs, truth = _noisy_two_regions()
    before = (probs.argmax(0) == truth).float().mean()
    refined = dense_crf(image, probs)
    after = (refined.argmax(0) == truth).float().mean()
    assert before < 0.9 and after > 0.98
    torch.testing.assert_close(refined.sum(0), torch.ones(40, 40))


def test_zero_iterations_returns_input_and_formats_agree():
    image, probs, _ = _noisy_two_regions(24)
    torch.testing.assert_close(dense_crf(image, probs, iterations=0), probs, atol=1e-6, rtol=1e-5)
    as_float = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    torch.testing.assert_close(dense_crf(image, probs), dense_crf(as_float, probs.numpy()), atol=1e-5, rtol=0)


def test_bad_inputs_name_the_fix():
    image, probs, _ = _noisy_two_regions(24)
    with pytest.raises(PixelwiseError, match="softmax"):
        dense_crf(image, probs * 3)
    with pytest.raises(PixelwiseError, match="normalisation"):
        dense_crf((torch.from_numpy(image).permute(2, 0, 1).float() - 128) / 60, probs)
    with pytest.raises(PixelwiseError, match="resize"):
        dense_crf(image[:20], probs)
    with pytest.raises(PixelwiseError, match="sxy_bilateral"):
        dense_crf(image, probs, sxy_bilateral=0)
    with pytest.raises(PixelwiseError, match="num_classes"):
        CRFasRNN(3)(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 8, 8))


def test_module_batch_matches_function():
    images, probs = [], []
    for seed in range(2):
        image, p, _ = _noisy_two_regions(24, seed)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        probs.append(p)
    logits = torch.stack(probs).log()
    batch = torch.softmax(DenseCRF(iterations=3)(logits, torch.stack(images)), 1)
    for i in range(2):
        single = dense_crf(images[i].permute(1, 2, 0).numpy(), probs[i], iterations=3)
        torch.testing.assert_close(batch[i], single, atol=1e-5, rtol=0)


def test_crf_as_rnn_starts_as_dense_crf_and_learns():
    torch.manual_seed(0)
    image, probs, truth = _noisy_two_regions(24)
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    logits = probs.log()[None]
    layer = CRFasRNN(2, iterations=3)
    torch.testing.assert_close(layer(logits, rgb), DenseCRF(iterations=3)(logits, rgb), atol=1e-4, rtol=0)
    # Adversarial start: the CRF smooths far too little to fix the noise.
    with torch.no_grad():
        layer.spatial_weight.mul_(0.05)
        layer.bilateral_weight.mul_(0.05)
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.2)
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(layer(logits, rgb), truth[None])
        optimiser.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_refined_model_passes_gradients_to_the_network():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    net = nn.Conv2d(3, 2, 3, padding=1)
    model = CRFRefinedModel(net, CRFasRNN(2, iterations=2, sxy_bilateral=10.0), mean=mean, std=std)
    image, _, truth = _noisy_two_regions(16)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 - 0.5) / 0.25
    out = model(x)
    assert out.shape == (1, 2, 16, 16)
    nn.functional.cross_entropy(out, truth[None]).backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    # The CRF saw the un-normalised image: same as calling it on the RGB directly.
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    torch.testing.assert_close(out, model.crf(net(x), rgb), atol=1e-4, rtol=0)
