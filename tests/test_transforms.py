"""Augmentation presets: label sets, exact image/mask geometry, the fused warp's maths, jitter, TTA."""

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelwise.data.transforms import (
    PRESETS,
    AffineElasticCrop,
    PhotometricJitter,
    build_transform,
    tta_for_preset,
)
from pixelwise.errors import ConfigError

IGNORE = 255


def _apply(transform, image, mask, seed=0):
    import albumentations as A

    out = A.Compose([transform], seed=seed)(image=image, mask=mask)
    return out["image"], out["mask"]


@settings(max_examples=40, deadline=None)
@given(preset=st.sampled_from(PRESETS), train=st.booleans(), h=st.integers(8, 70), w=st.integers(8, 70),
       labels=st.lists(st.integers(0, 6), min_size=1, max_size=4, unique=True),
       ignore=st.sampled_from([255, 300, 6]), seed=st.integers(0, 2**31 - 1))
def test_every_output_label_is_an_input_label_or_ignore(preset, train, h, w, labels, ignore, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.choice(np.array(labels), size=(h, w)).astype(np.int64)
    t = build_transform(preset, train=train, crop_size=32, mean=[0.5] * 3, std=[0.25] * 3, ignore_index=ignore,
                        seed=seed)
    x, y = t(image, mask)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.is_contiguous()
    assert set(torch.unique(y).tolist()) <= set(labels) | {ignore}
    assert torch.isfinite(x).all() and x.shape[1:] == y.shape
    if train and preset != "none":
        assert y.shape == (32, 32)
    elif preset != "none":  # eval pads bottom/right to the crop size and never crops
        assert y.shape == (max(h, 32), max(w, 32)) and torch.equal(y[:h, :w], torch.from_numpy(mask))


# Distinct non-black colours per label: black is the image fill outside the source.
COLOURS = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [200, 200, 10], [10, 200, 200]], np.uint8)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(8, 48), h=st.integers(10, 64), w=st.integers(10, 64),
       scale=st.tuples(st.floats(0.3, 1.0), st.floats(1.0, 2.5)), rotate=st.floats(0, 180),
       elastic_p=st.sampled_from([0.0, 1.0]), hflip_p=st.sampled_from([0.0, 1.0]), seed=st.integers(0, 2**31 - 1))
def test_image_and_mask_sample_the_same_source_pixels(size, h, w, scale, rotate, elastic_p, hflip_p, seed):
    # With nearest interpolation on the image too, the warped image must be exactly the
    # colour of the warped label wherever the mask is defined, and the fill where it is not.
    rng = np.random.default_rng(seed)
    mask = cv2.resize(rng.integers(0, 5, (4, 5), dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    image = COLOURS[mask]
    t = AffineElasticCrop(size=size, scale=scale, rotate=rotate, rotate_p=1.0, hflip_p=hflip_p,
                          elastic_p=elastic_p, elastic_magnitude=0.05, fill_mask=IGNORE,
                          interpolation=cv2.INTER_NEAREST)
    warped, y = _apply(t, image, mask, seed=seed)
    assert warped.shape == (size, size, 3) and y.shape == (size, size)
    inside = y != IGNORE
    np.testing.assert_array_equal(warped[inside], COLOURS[y[inside]])
    assert (warped[~inside] == 0).all()


@pytest.mark.parametrize("elastic_p", [0.0, 1.0])
def test_mask_takes_the_label_at_the_rounded_source_position(elastic_p):
    # The image is sampled bilinearly at the source position; the mask must take the label
    # of the *nearest* source pixel (rounding, not flooring, which would shift it by half a pixel).
    rng = np.random.default_rng(4)
    mask = rng.integers(0, 5, (30, 40)).astype(np.uint8)
    t = AffineElasticCrop(size=24, rotate=20.0, rotate_p=1.0, elastic_p=elastic_p, fill_mask=IGNORE)
    import albumentations as A

    A.Compose([t], seed=11)
    for _ in range(5):
        params = t.get_params_dependent_on_data({"shape": mask.shape}, {})
        yy, xx = np.mgrid[0:24, 0:24].astype(np.float64)
        if params["maps"] is None:
            m = params["matrix"]
            sx, sy = m[0, 0] * xx + m[0, 1] * yy + m[0, 2], m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
        else:
            sx, sy = (params["maps"][..., i].astype(np.float64) for i in range(2))
        rx, ry = np.floor(sx + 0.5).astype(int), np.floor(sy + 0.5).astype(int)
        inside = (rx >= 0) & (rx < 40) & (ry >= 0) & (ry < 30)
        want = np.full((24, 24), IGNORE)
        want[inside] = mask[ry[inside], rx[inside]]
        got = t.apply_to_mask(mask, **params)
        ties = (np.abs(sx - np.floor(sx) - 0.5) < 1e-3) | (np.abs(sy - np.floor(sy) - 0.5) < 1e-3)
        assert (got != want)[~ties].sum() == 0


def test_scale_one_is_an_exact_crop_and_flip_mirrors_it():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (40, 50)).astype(np.uint8)
    for flip in (0.0, 1.0):
        t = AffineElasticCrop(size=24, scale=(1.0, 1.0), rotate_p=0.0, hflip_p=flip)
        for seed in range(4):
            out, y = _apply(t, image, mask, seed=seed)
            if flip:
                out, y = out[:, ::-1], y[:, ::-1]
            hits = [(r, c) for r in range(17) for c in range(27)
                    if np.array_equal(image[r:r + 24, c:c + 24], out) and np.array_equal(mask[r:r + 24, c:c + 24], y)]
            assert len(hits) == 1, (flip, seed)


def test_scale_two_matches_a_crop_of_cv2_resize():
    # Same pixel-centre convention as cv2.resize: a half-pixel error would be far off on this texture.
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), (3, 3), 0.8)
    big = cv2.resize(image, (40, 40), interpolation=cv2.INTER_LINEAR).astype(int)
    t = AffineElasticCrop(size=16, scale=(2.0, 2.0), rotate_p=0.0, hflip_p=0.0)
    out, _ = _apply(t, image, np.zeros((20, 20), np.uint8), seed=3)
    errors = [np.abs(big[r:r + 16, c:c + 16] - out.astype(int)).max() for r in range(25) for c in range(25)]
    assert min(errors) <= 2  # fixed-point rounding of warpAffine vs resize only
    assert sorted(errors)[1] > 10  # and only one offset fits


def test_the_affine_part_is_rotation_about_the_crop_centre():
    t = AffineElasticCrop(size=33, scale=(1.0, 1.0), rotate=30.0, rotate_p=1.0, hflip_p=0.0)
    import albumentations as A

    A.Compose([t], seed=7)  # seeds the transform's generator
    for _ in range(5):
        matrix = t.get_params_dependent_on_data({"shape": (33, 33)}, {})["matrix"]
        linear = matrix[:, :2]
        np.testing.assert_allclose(linear @ linear.T, np.eye(2), atol=1e-12)  # a rotation, no scaling
        assert abs(np.degrees(np.arctan2(linear[1, 0], linear[0, 0]))) <= 30.0 + 1e-9
        np.testing.assert_allclose(matrix @ [16.0, 16.0, 1.0], [16.0, 16.0], atol=1e-9)  # centre fixed


def test_elastic_field_is_smooth_and_about_the_requested_size():
    t = AffineElasticCrop(size=64, scale=(1.0, 1.0), rotate_p=0.0, hflip_p=0.0, elastic_p=1.0,
                          elastic_magnitude=0.05)
    import albumentations as A

    A.Compose([t], seed=0)
    shifts = []
    for _ in range(20):
        maps = t.get_params_dependent_on_data({"shape": (64, 64)}, {})["maps"]
        map_x, map_y = maps[..., 0], maps[..., 1]
        yy, xx = np.mgrid[0:64, 0:64]
        dx, dy = map_x - xx, map_y - yy
        shifts.append(np.sqrt(dx ** 2 + dy ** 2).mean())
        # Smooth: neighbouring pixels move alike (a 3x3 grid over 64 px; independent
        # per-pixel shifts of this size would differ by ~4.5 px), and no fold-over (< 1).
        assert np.abs(np.diff(dx, axis=1)).max() < 1.0 and np.abs(np.diff(dy, axis=0)).max() < 1.0
    # Mean shift for a 2-D Gaussian of std 3.2 px, shrunk a little by the bicubic interpolation.
    assert 1.0 < np.mean(shifts) < 0.05 * 64 * np.sqrt(np.pi / 2)


def test_photometric_jitter_matches_torchvision_definitions():
    import torchvision.transforms.functional as TF

    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, (16, 20, 3), dtype=np.uint8)
    jitter = PhotometricJitter()
    for b, c, s in [(1.15, 0.85, 1.2), (0.85, 1.2, 0.8), (1.0, 1.0, 1.0)]:
        ours = jitter.apply(image, b=b, c=c, s=s).astype(float)
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s)
        ref = ref.permute(1, 2, 0).numpy() * 255
        assert np.abs(ours - ref).max() <= 2.5, (b, c, s)
    assert np.array_equal(jitter.apply(image, b=1.0, c=1.0, s=1.0), image)


@pytest.mark.parametrize("preset", PRESETS)
def test_tta_stays_within_what_the_preset_trained_on(preset):
    from pixelwise.infer.tta import parse_tta

    spec = parse_tta(tta_for_preset(preset))
    warp = [s for s in build_transform(preset, train=True, crop_size=16, mean=[0] * 3, std=[1] * 3).compose
            if isinstance(s, AffineElasticCrop)]
    flips = {"h"} if warp and warp[0].hflip_p > 0 else set()
    assert set(spec.flips) <= flips
    low, high = warp[0].scale if warp else (1.0, 1.0)
    assert all(low <= s <= high for s in spec.scales)
    if preset != "none":
        assert spec.flips == ("h",) and len(spec.scales) > 1


def test_same_seed_same_augmentation_and_presets_differ():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (64, 64))
    outs = {}
    for preset in ("scale_crop", "standard", "unet"):
        a = build_transform(preset, train=True, crop_size=32, mean=[0] * 3, std=[1] * 3, seed=5)
        b = build_transform(preset, train=True, crop_size=32, mean=[0] * 3, std=[1] * 3, seed=5)
        runs = [(a(image, mask), b(image, mask)) for _ in range(3)]
        assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in runs)
        outs[preset] = torch.stack([r[0][0] for r in runs])
    assert not torch.equal(outs["scale_crop"], outs["standard"])


def test_resize_sets_a_fixed_non_square_size_with_nearest_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (37, 90, 3), dtype=np.uint8)
    mask = np.zeros((37, 90), np.int64)
    mask[:, 45:] = 1  # two labels: nearest resizing may not invent a third
    for preset, train in (("none", True), ("none", False), ("standard", False)):
        tf = build_transform(preset, train=train, crop_size=16, mean=[0.5] * 3, std=[0.5] * 3, resize=[20, 60])
        out_image, out_mask = tf(image, mask)
        assert out_image.shape == (3, 20, 60) and out_mask.shape == (20, 60), preset
        assert set(out_mask.unique().tolist()) == {0, 1}
        assert (out_mask[:, :29] == 0).all() and (out_mask[:, 31:] == 1).all()
    with pytest.raises(ConfigError, match=r"data.resize must be \[height, width\]"):
        build_transform("none", train=True, crop_size=16, mean=[0.5] * 3, std=[0.5] * 3, resize=[20])


def test_import_pixelwise_does_not_load_albumentations_or_scipy_ndimage():
    """Inference, export and serving never augment: `import pixelwise` and building a model must not
    pay for albumentations (~1.5 s, ~45 MiB) or scipy.ndimage; building a transform loads them."""
    import subprocess
    import sys

    code = ("import sys, pixelwise; from pixelwise import create_model, Segmenter; "
            "create_model('unet', num_classes=2, base_channels=4, depth=2); "
            "print(sorted(m for m in ('albumentations', 'scipy.ndimage') if m in sys.modules)); "
            "from pixelwise.data import build_transform; "
            "build_transform('unet', train=True, crop_size=32, mean=(0.5,) * 3, std=(0.2,) * 3); "
            "print('albumentations' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"
