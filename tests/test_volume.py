"""3D volumes (NIfTI / NumPy): reading, layouts, normalisation, patch sampling, augmentation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pixelwise import create_model
from pixelwise.config import DataCfg
from pixelwise.data import build_dataset, class_names
from pixelwise.data.transforms3d import (
    Augment3d,
    crop_or_pad,
    elastic_deform,
    normalize_intensity,
    sample_patch,
)
from pixelwise.data.volume import VolumeDataset, find_cases, read_volume, volume_collate
from pixelwise.errors import DataError

SHAPE_XYZ = (12, 10, 6)  # NIfTI voxel order; (D, H, W) = (6, 10, 12)


def save_nii(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def make_label(seed):
    """A (X, Y, Z) label with a small class-1 box and one class-2 voxel, placed by ``seed``."""
    label = np.zeros(SHAPE_XYZ, np.uint8)
    x = 2 + seed % 6
    label[x:x + 2, 3:5, 1:3] = 1
    label[1, 1, 4] = 2
    return label


@pytest.fixture
def msd_root(tmp_path):
    """MSD layout, two modalities as nnU-Net channel files, and a dataset.json."""
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        for c in range(2):
            save_nii(tmp_path / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz",
                     rng.normal(100.0 * (c + 1), 10.0, SHAPE_XYZ).astype(np.float32))
        save_nii(tmp_path / "labelsTr" / f"case_{i:03d}.nii.gz", make_label(i))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tumour", "2": "cyst"}}))
    return tmp_path


def test_read_volume_axis_order(tmp_path):
    xyz = np.arange(np.prod(SHAPE_XYZ), dtype=np.float32).reshape(SHAPE_XYZ)
    save_nii(tmp_path / "v.nii.gz", xyz)
    volume = read_volume(tmp_path / "v.nii.gz")
    assert volume.shape == (6, 10, 12)
    for z, y, x in [(0, 0, 0), (5, 9, 11), (2, 7, 3)]:
        assert volume[z, y, x] == xyz[x, y, z]
    xyzc = np.stack([xyz, -xyz], axis=-1)
    save_nii(tmp_path / "v4.nii", xyzc)
    v4 = read_volume(tmp_path / "v4.nii")
    assert v4.shape == (2, 6, 10, 12) and v4[1, 2, 7, 3] == -xyz[3, 7, 2]
    np.save(tmp_path / "n.npy", volume)
    np.testing.assert_array_equal(read_volume(tmp_path / "n.npy"), volume)  # NumPy is (D, H, W) as stored
    np.savez(tmp_path / "z.npz", volume)
    np.testing.assert_array_equal(read_volume(tmp_path / "z.npz"), volume)
    np.savez(tmp_path / "two.npz", a=volume, b=volume)
    with pytest.raises(DataError, match="holds 2 arrays"):
        read_volume(tmp_path / "two.npz")
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="bad.nii.gz.*cannot be read"):
        read_volume(tmp_path / "bad.nii.gz")


def test_find_cases_channels_and_errors(msd_root, tmp_path):
    cases = find_cases(msd_root / "imagesTr", msd_root / "labelsTr")
    assert [c[0] for c in cases] == [f"case_{i:03d}" for i in range(8)]
    assert [p.name for p in cases[0][1]] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    (msd_root / "imagesTr" / "case_000_0001.nii.gz").rename(msd_root / "imagesTr" / "case_000_0002.nii.gz")
    with pytest.raises(DataError, match="_0000, _0001"):
        find_cases(msd_root / "imagesTr", msd_root / "labelsTr")
    save_nii(msd_root / "imagesTr" / "orphan.nii.gz", np.zeros(SHAPE_XYZ, np.float32))
    with pytest.raises(DataError, match="orphan.nii.gz.*has no label"):
        find_cases(msd_root / "imagesTr", msd_root / "labelsTr")
    with pytest.raises(DataError, match="does not exist"):
        find_cases(tmp_path / "nope", tmp_path / "nope2")


def test_normalize_against_independent_formulas():
    rng = np.random.default_rng(1)
    image = rng.normal(50.0, 20.0, (2, 4, 5, 6)).astype(np.float32)
    out = normalize_intensity(image, mode="zscore")
    for c in range(2):
        x = torch.from_numpy(image[c]).double().flatten()
        expected = (x - x.sum() / x.numel()) / torch.sqrt(((x - x.mean()) ** 2).sum() / x.numel())
        np.testing.assert_allclose(out[c].ravel(), expected.numpy(), rtol=1e-5, atol=1e-5)
    # CT window: clip to [lo, hi] then min-max -> exactly (x - lo) / (hi - lo) when the window is hit.
    ct = np.array([-2000.0, -1000.0, 0.0, 400.0, 3000.0], np.float32).reshape(1, 1, 1, 5)
    np.testing.assert_allclose(normalize_intensity(ct, mode="minmax", window=(-1000.0, 400.0)).ravel(),
                               [0.0, 0.0, 1000 / 1400, 1.0, 1.0], rtol=1e-6)
    # Percentile clip on 0..100: the 10th/90th percentiles are 10 and 90.
    ramp = np.arange(101, dtype=np.float32).reshape(1, 1, 1, 101)
    clipped = normalize_intensity(ramp, mode="none", clip_percentiles=(10.0, 90.0)).ravel()
    assert clipped.min() == 10.0 and clipped.max() == 90.0 and clipped[50] == 50.0
    # nonzero: statistics from the non-zero voxels, zeros stay zero.
    brain = np.array([0.0, 0.0, 2.0, 4.0, 6.0], np.float32).reshape(1, 1, 1, 5)
    np.testing.assert_allclose(normalize_intensity(brain, mode="zscore", nonzero=True).ravel(),
                               [0.0, 0.0, -np.sqrt(1.5), 0.0, np.sqrt(1.5)], rtol=1e-6)


def test_crop_or_pad_against_full_padding():
    rng = np.random.default_rng(2)
    array = rng.integers(0, 5, (2, 5, 6, 7))
    for origin in [(0, 0, 0), (-3, 2, 4), (3, -2, -7), (4, 5, 6), (-10, 0, 0)]:
        size = (4, 6, 5)
        padded = np.pad(array, ((0, 0), (10, 10), (10, 10), (10, 10)), constant_values=-1)
        z, y, x = (o + 10 for o in origin)
        expected = padded[:, z:z + 4, y:y + 6, x:x + 5]
        np.testing.assert_array_equal(crop_or_pad(array, origin, size, -1), expected)


def test_foreground_patches_contain_foreground_and_are_deterministic():
    label = np.zeros((20, 24, 24), np.int64)
    label[15, 3, 20] = 1  # a single foreground voxel near a corner
    label[2:4, 2:4, 2:4] = 2
    size = (8, 8, 8)
    hits = {1: 0, 2: 0}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        origin = sample_patch(label, size, rng, foreground=True, ignore_index=255)
        assert all(0 <= o <= s - p for o, s, p in zip(origin, label.shape, size))  # volume is larger: inside
        patch = crop_or_pad(label, origin, size, 255)
        present = set(np.unique(patch).tolist()) - {0}
        assert present, f"foreground patch at {origin} has no foreground"
        for c in present:
            hits[c] += 1
        again = sample_patch(label, size, np.random.default_rng(seed), foreground=True, ignore_index=255)
        assert again == origin
    # Classes are drawn uniformly, not by voxel count: the one-voxel class is found often.
    assert hits[1] >= 10 and hits[2] >= 10
    small = np.ones((3, 4, 5), np.int64)
    origin = sample_patch(small, size, np.random.default_rng(0), foreground=False, ignore_index=255)
    assert all(s - p <= o <= 0 for o, s, p in zip(origin, small.shape, size))
    patch = crop_or_pad(small, origin, size, 255)
    assert (patch == 1).sum() == small.size and (patch == 255).sum() == 8 ** 3 - small.size


def test_augment_keeps_image_and_label_aligned():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 4, (6, 8, 8))
    image = np.stack([label.astype(np.float32), label.astype(np.float32) * 10])
    augment = Augment3d(p_flip=0.5, p_rot90=1.0, p_intensity=0.0)
    changed = 0
    for seed in range(12):
        out_image, out_label = augment(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image[0], out_label)
        np.testing.assert_array_equal(out_image[1], out_label * 10)
        changed += not np.array_equal(out_label, label)
    assert changed >= 10
    # Non-square planes only rotate by 180 degrees, so the shape is kept.
    flat = rng.integers(0, 2, (4, 6, 8))
    out_image, out_label = augment(flat[None].astype(np.float32), flat, np.random.default_rng(0))
    assert out_label.shape == (4, 6, 8)
    np.testing.assert_array_equal(out_image[0], out_label)
    scaled, _ = Augment3d(p_flip=0, p_rot90=0, p_intensity=1.0, scale=(2.0, 2.0), shift=(1.0, 1.0))(
        image, label, np.random.default_rng(0))
    np.testing.assert_allclose(scaled, image * 2.0 + 1.0)


def test_elastic_labels_nearest_and_identity_at_zero_sigma():
    rng = np.random.default_rng(4)
    label = rng.integers(1, 4, (10, 12, 14))  # no 0, so a wrong fill value would show
    image = rng.normal(0, 1, (1, 10, 12, 14)).astype(np.float32)
    same_image, same_label = elastic_deform(image, label, rng, grid_spacing=4, sigma=0.0)
    np.testing.assert_allclose(same_image, image, atol=1e-5)
    np.testing.assert_array_equal(same_label, label)
    warped_image, warped_label = elastic_deform(image, label, rng, grid_spacing=4, sigma=2.0, ignore_index=255)
    # Nearest neighbour: only existing labels, plus the ignore index where the field pulls from outside.
    assert warped_label.dtype == np.int64 and set(np.unique(warped_label)) == {1, 2, 3, 255}
    assert not np.array_equal(warped_label, label)
    assert warped_image.shape == image.shape


def test_dataset_eval_train_and_unet3d(msd_root):
    cfg = DataCfg(dataset="volume", root=str(msd_root), num_classes=3,
                  args={"patch_size": [4, 8, 8], "val_fraction": 0.25, "samples_per_volume": 3, "seed": 0,
                        "augment": {"p_elastic": 0.5, "elastic_spacing": 4}})
    assert class_names(cfg) == ["background", "tumour", "cyst"]
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    names = {c[0] for c in train.cases} | {c[0] for c in val.cases}
    assert len(names) == 8 and not {c[0] for c in train.cases} & {c[0] for c in val.cases}
    assert len(train) == 3 * len(train.cases)
    whole = val[0]
    assert whole["image"].shape == (2, 6, 10, 12) and whole["mask"].shape == (6, 10, 12)
    case = int(whole["name"].split("_")[1])
    np.testing.assert_array_equal(whole["mask"].numpy(), make_label(case).transpose(2, 1, 0))
    # z-score per channel: mean 0, std 1 over the volume.
    assert whole["image"].mean(dim=(1, 2, 3)).abs().max() < 1e-4
    assert (whole["image"].std(dim=(1, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    item = train[1]
    assert item["image"].shape == (2, 4, 8, 8) and item["mask"].dtype == torch.int64
    np.testing.assert_array_equal(train[1]["mask"].numpy(), item["mask"].numpy())  # same seed, same patch
    train.set_epoch_seed(1)
    assert any(not torch.equal(train[i]["mask"], build_dataset(cfg, "train", train=True)[i]["mask"])
               for i in range(len(train)))
    # Without a seed the patches follow torch's generator.
    unseeded = build_dataset(DataCfg(dataset="volume", root=str(msd_root), num_classes=3,
                                     args={"patch_size": [4, 8, 8], "val_fraction": 0.25}), "train", train=True)
    torch.manual_seed(5)
    first = [unseeded[i]["mask"] for i in range(len(unseeded))]
    torch.manual_seed(5)
    assert all(torch.equal(m, unseeded[i]["mask"]) for i, m in enumerate(first))
    assert any(not torch.equal(m, unseeded[i]["mask"]) for i, m in enumerate(first))
    batch = volume_collate([train[i] for i in range(2)])
    model = create_model("unet3d", in_channels=2, num_classes=3, base_channels=2, depth=1)
    assert model(batch["image"]).shape == (2, 3, 4, 8, 8)
    logits = model(volume_collate([val[0]])["image"])
    assert logits.shape == (1, 3, 6, 10, 12)


def test_foreground_ratio_in_dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    label = np.zeros((16, 16, 16), np.int64)
    label[12, 12, 12] = 1
    for i in range(4):
        np.save(tmp_path / "images" / f"v{i}.npy", np.random.default_rng(i).normal(size=(16, 16, 16)))
        np.save(tmp_path / "labels" / f"v{i}.npy", label)
    cases = find_cases(tmp_path / "images", tmp_path / "labels")
    ds = VolumeDataset(cases, num_classes=2, train=True, patch_size=(4, 4, 4), foreground_ratio=1 / 3,
                       samples_per_volume=30, seed=0)
    with_fg = sum(int((ds[i]["mask"] == 1).any()) for i in range(len(ds)))
    # 120 patches, each forced with p = 1/3 (40 expected); a random 4^3 patch hits the voxel with p ~ 1/13^3.
    assert 25 <= with_fg <= 55
    none = VolumeDataset(cases, num_classes=2, train=True, patch_size=(4, 4, 4), foreground_ratio=0.0,
                         samples_per_volume=30, seed=0)
    assert sum(int((none[i]["mask"] == 1).any()) for i in range(len(none))) <= 3


def _pair(tmp_path, image, label):
    for d in ("images", "labels"):
        (tmp_path / d).mkdir(exist_ok=True)
    np.save(tmp_path / "images" / "a.npy", image)
    np.save(tmp_path / "labels" / "a.npy", label)
    return VolumeDataset(find_cases(tmp_path / "images", tmp_path / "labels"), num_classes=3)


@pytest.mark.parametrize("image, label, message", [
    (np.zeros((4, 5, 6)), np.zeros((4, 5, 7)), r"is \(4, 5, 6\).*label.*\(4, 5, 7\).*resample"),
    (np.zeros((4, 5)), np.zeros((4, 5)), "labels must be 3D"),
    (np.zeros((4, 5, 6)), np.zeros((4, 5)), "labels must be 3D"),
    (np.zeros((2, 3, 4, 5, 6)), np.zeros((4, 5, 6)), "expected 3D"),
    (np.zeros((4, 5, 6)), np.full((4, 5, 6), 7), r"label\(s\) \[7\].*num_classes is 3"),
    (np.zeros((4, 5, 6)), np.full((4, 5, 6), 0.5), "non-integer"),
])
def test_broken_volumes(tmp_path, image, label, message):
    with pytest.raises(DataError, match=message):
        _pair(tmp_path, image, label)[0]


def test_volume_collate_pads_with_ignore():
    a = {"image": torch.ones(1, 2, 3, 4), "mask": torch.ones(2, 3, 4, dtype=torch.long), "name": "a"}
    b = {"image": torch.ones(1, 3, 2, 4), "mask": torch.zeros(3, 2, 4, dtype=torch.long), "name": "b"}
    batch = volume_collate([a, b], ignore_index=9)
    assert batch["image"].shape == (2, 1, 3, 3, 4) and batch["name"] == ["a", "b"]
    assert batch["mask"][0, 2].eq(9).all() and batch["mask"][1, :, 2].eq(9).all()
    assert batch["image"][0, 0, 2].eq(0).all() and batch["mask"][0, :2, :3].eq(1).all()


def test_separable_spline_field_equals_3d_zoom():
    from scipy import ndimage

    from pixelwise.data.transforms3d import _spline_upsampling

    coarse = np.random.default_rng(5).normal(size=(3, 4, 5))
    target = (10, 17, 23)
    expected = ndimage.zoom(coarse, [t / c for t, c in zip(target, coarse.shape)], order=3, mode="nearest",
                            grid_mode=True)
    weights = [_spline_upsampling(c, t) for c, t in zip(coarse.shape, target)]
    np.testing.assert_allclose(np.einsum("ia,jb,kc,abc->ijk", *weights, coarse), expected, atol=1e-5)
