"""Data: IO errors, folder pairing and checks, the synthetic set, augmentation alignment."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.config import DataCfg
from pixelwise.data import (
    EpochSeeded,
    FolderDataset,
    SyntheticShapes,
    build_dataset,
    build_transform,
    class_names,
    pad_collate,
    read_image,
    read_mask,
    write_mask,
)
from pixelwise.data.io import colorize, default_palette, overlay
from pixelwise.errors import ConfigError, DataError


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)).save(path)
    return path


# --- IO ---------------------------------------------------------------------------------

def test_corrupt_truncated_and_empty_images_are_named(tmp_path):
    (tmp_path / "random.png").write_bytes(np.random.default_rng(0).bytes(300))
    good = _png(tmp_path / "good.png", np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:40])
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:-50])
    for name in ("random.png", "cut.png", "empty.jpg", "cut.jpg"):
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            read_image(tmp_path / name)
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match=r"random\.png.*re-export"):
        read_mask(tmp_path / "random.png")
    with pytest.raises(DataError, match=r"cut\.png"):
        read_mask(tmp_path / "cut.png")


def test_jpeg_with_data_appended_after_the_image_still_reads(tmp_path):
    # Phone "motion photos" append a video after the JPEG's end marker; that is not truncation.
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "full.jpg")
    (tmp_path / "motion.jpg").write_bytes((tmp_path / "full.jpg").read_bytes() + b"\x00" * 10_000)
    assert abs(int(read_image(tmp_path / "motion.jpg").mean()) - 90) <= 2


def test_read_image_scales_16_bit_to_8_bit(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "deep.png"), np.full((4, 5), 65535, np.uint16))
    cv2.imwrite(str(tmp_path / "mid.png"), np.full((4, 5), 257 * 100, np.uint16))
    assert read_image(tmp_path / "deep.png").dtype == np.uint8
    assert (read_image(tmp_path / "deep.png") == 255).all() and (read_image(tmp_path / "mid.png") == 100).all()


def test_read_image_converts_grey_and_rgba_to_rgb(tmp_path):
    grey = _png(tmp_path / "g.png", np.full((5, 6), 77, np.uint8))
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    _png(tmp_path / "a.png", rgba)
    assert read_image(grey).shape == (5, 6, 3) and (read_image(grey) == 77).all()
    assert (read_image(tmp_path / "a.png")[..., 0] == 200).all()  # RGB order, alpha dropped


def test_palette_masks_read_as_indices_and_rgb_masks_are_rejected(tmp_path):
    idx = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    img = Image.fromarray(idx, mode="L")
    img.putpalette(default_palette().tobytes())
    img = img.convert("P") if img.mode != "P" else img
    img.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as saved:
        assert saved.mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), idx.astype(np.int64))
    _png(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"rgb\.png.*convert the colours to indices"):
        read_mask(tmp_path / "rgb.png")


def test_write_mask_round_trips_and_leaves_no_temp_files(tmp_path):
    mask = np.random.default_rng(1).integers(0, 21, (17, 23))
    write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    with Image.open(tmp_path / "m.png") as saved:
        assert saved.mode == "P"
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    old = np.zeros((4, 4), np.int64)
    write_mask(tmp_path / "m.png", old)

    def crash(src, dst):
        raise KeyboardInterrupt  # as if the process were stopped between write and rename

    monkeypatch.setattr("pixelwise.data.io.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_mask(tmp_path / "m.png", np.ones((4, 4), np.int64))
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), old)


def test_voc_palette_known_colours():
    # The PASCAL VOC colour map: 1 = (128,0,0), 2 = (0,128,0), 3 = (128,128,0), 15 = person (192,128,128).
    pal = default_palette(256)
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0] and pal[3].tolist() == [128, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]


def test_colorize_and_overlay():
    mask = np.array([[0, 1], [255, 2]])
    pal = default_palette(256)
    col = colorize(mask, pal)
    assert col[0, 1].tolist() == [128, 0, 0] and col[1, 0].tolist() == [255, 255, 255]
    image = np.full((2, 2, 3), 100, np.uint8)
    ov = overlay(image, mask, pal, alpha=0.5)
    assert ov[0, 0].tolist() == [100, 100, 100]  # background untouched
    assert ov[0, 1].tolist() == [114, 50, 50]    # (100 + 128) / 2, (100 + 0) / 2


# --- folder dataset ---------------------------------------------------------------------

def _pair(root, stem, size=(16, 20), label=1, image_size=None):
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    mask[2:6, 3:9] = label
    ih, iw = image_size or size
    _png(root / "images" / f"{stem}.png", np.full((ih, iw, 3), 50, np.uint8))
    _png(root / "masks" / f"{stem}.png", mask)


def test_folder_dataset_loads_pairs(tmp_path):
    for i in range(3):
        _pair(tmp_path, f"s{i}")
    ds = FolderDataset(tmp_path, num_classes=2)
    sample = ds[1]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 16, 20)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (16, 20)
    assert sample["name"] == "s1" and len(ds) == 3
    assert int(sample["mask"].sum()) == 4 * 6


def test_build_dataset_reads_the_split_folder_with_the_eval_transform(tmp_path):
    _pair(tmp_path / "val", "x", size=(16, 20))
    cfg = DataCfg(dataset="folder", root=str(tmp_path), num_classes=2, crop_size=24, augment="standard")
    sample = build_dataset(cfg, "val", train=False)[0]
    assert sample["image"].shape == (3, 24, 24) and sample["mask"].shape == (24, 24)  # padded, not cropped
    assert (sample["mask"][16:] == 255).all() and int((sample["mask"] == 1).sum()) == 24


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tmp_path / "nowhere", num_classes=2)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="masks"):
        FolderDataset(tmp_path, num_classes=2)
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="empty dataset folder"):
        FolderDataset(tmp_path, num_classes=2)
    _pair(tmp_path, "a")
    _png(tmp_path / "images" / "lonely.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"1 image\(s\) have no mask: lonely\.jpg"):
        FolderDataset(tmp_path, num_classes=2)
    for i in range(7):
        _png(tmp_path / "images" / f"more{i}.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"8 image\(s\) have no mask: lonely\.jpg, more0\.png.*more3\.png, \.\.\."):
        FolderDataset(tmp_path, num_classes=2)


def test_folder_mask_without_image_only_warns_and_dot_files_are_skipped(tmp_path):
    _pair(tmp_path, "a")
    _png(tmp_path / "masks" / "orphan.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "images" / "._a.png").write_bytes(b"macOS resource fork")
    with pytest.warns(UserWarning, match=r"1 mask\(s\).*orphan"):
        ds = FolderDataset(tmp_path, num_classes=2)
    assert [p[0].name for p in ds.pairs] == ["a.png"]


def test_folder_checks_size_and_labels_per_sample(tmp_path):
    _pair(tmp_path, "ok")
    _pair(tmp_path, "big", size=(16, 20), image_size=(18, 20))
    _pair(tmp_path, "label", label=9)
    _pair(tmp_path, "ignored", label=255)
    ds = FolderDataset(tmp_path, num_classes=3, ignore_index=255)
    by_name = {p[0].stem: i for i, p in enumerate(ds.pairs)}
    with pytest.raises(DataError, match=r"big\.png.*20x16.*20x18"):
        ds[by_name["big"]]
    with pytest.raises(DataError, match=r"label\.png.*\[9\].*num_classes is 3.*set num_classes or ignore_index"):
        ds[by_name["label"]]
    assert int((ds[by_name["ignored"]]["mask"] == 255).sum()) == 24
    assert ds[by_name["ok"]]["mask"].max() == 1


# --- synthetic --------------------------------------------------------------------------

def test_synthetic_is_deterministic_per_index_and_seed():
    a, b = SyntheticShapes(10, image_size=48, seed=3), SyntheticShapes(10, image_size=48, seed=3)
    im1, m1 = a.generate(7)
    im2, m2 = b.generate(7)
    assert np.array_equal(im1, im2) and np.array_equal(m1, m2)
    im3, _ = SyntheticShapes(10, image_size=48, seed=4).generate(7)
    assert not np.array_equal(im1, im3)


def test_synthetic_covers_every_class_with_visible_objects():
    ds = SyntheticShapes(60, image_size=64, seed=0)
    counts = np.zeros(5, np.int64)
    for i in range(60):
        image, mask = ds.generate(i)
        assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
        assert mask.min() >= 0 and mask.max() <= 4
        counts += np.bincount(mask.ravel(), minlength=5)
        for c in np.unique(mask)[1:]:
            region = (mask == c).astype(np.uint8)
            assert region.sum() >= 10
            # visible: the colour inside differs from the pixels just around the region
            ring = cv2.dilate(region, np.ones((5, 5), np.uint8)).astype(bool) & (mask != c)
            inside = image[region.astype(bool)].astype(float).mean(0)
            contrast = np.linalg.norm(inside - image[ring].astype(float).mean(0))
            assert contrast > 60, (i, c, contrast)
    assert (counts > 0).all()
    assert counts[1:].sum() > 0.05 * counts.sum()  # objects are not negligible


def test_build_dataset_and_class_names():
    cfg = DataCfg(train_samples=12, val_samples=4, crop_size=32)
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    assert len(train) == 12 and len(val) == 4
    assert not np.array_equal(train.generate(0)[0], val.generate(0)[0])  # disjoint seeds
    assert class_names(cfg) == ["background", "circle", "rectangle", "triangle", "star"]
    with pytest.raises(ConfigError, match="unknown dataset 'pascal_voc'.*folder.*synthetic.*voc"):
        build_dataset(DataCfg(dataset="pascal_voc"), "train", train=True)
    with pytest.raises(ConfigError, match="3 names but data.num_classes is 5"):
        class_names(DataCfg(class_names=["a", "b", "c"]))
    with pytest.raises(DataError, match="data.root"):
        build_dataset(DataCfg(dataset="folder", num_classes=2), "train", train=True)


# --- transforms -------------------------------------------------------------------------

def _class_coded_image(size=64, seed=0):
    """Mask with blobs of classes 1..3, image whose colour encodes the class."""
    ds = SyntheticShapes(1, image_size=size, seed=seed)
    _, mask = ds.generate(0)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    return colours[mask], mask, colours


@pytest.mark.parametrize("preset", ["standard", "unet"])
def test_train_presets_keep_image_and_mask_aligned(preset):
    mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    t = build_transform(preset, train=True, crop_size=48, mean=mean, std=std, ignore_index=255)
    agree = total = 0
    for seed in range(6):
        image, mask, colours = _class_coded_image(seed=seed)
        t.reseed(seed)
        x, y = t(image, mask)
        assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
        rgb = (x.permute(1, 2, 0).numpy() * 255).round()
        valid = y.numpy() != 255
        # Brightness/contrast jitter changes the colours, so compare the nearest class colour.
        dist = ((rgb[:, :, None, :] - colours[None, None].astype(np.float32)) ** 2).sum(-1)
        nearest = dist.argmin(-1)
        agree += (nearest[valid] == y.numpy()[valid]).sum()
        total += valid.sum()
    assert agree / total > 0.95


def test_unet_elastic_moves_pixels_and_keeps_alignment():
    import albumentations as A

    from pixelwise.data.transforms import GridElastic

    image, mask, colours = _class_coded_image(size=64, seed=2)
    out = A.Compose([GridElastic(magnitude=0.04, fill_mask=255, p=1.0)], seed=0)(image=image, mask=mask.astype(np.uint8))
    warped, y = out["image"], out["mask"].astype(np.int64)
    assert (y != mask).mean() > 0.01  # it did deform
    valid = y != 255
    nearest = ((warped[:, :, None].astype(float) - colours[None, None]) ** 2).sum(-1).argmin(-1)
    assert (nearest[valid] == y[valid]).mean() > 0.97  # image and mask moved together
    # pulled in from outside: mask ignore, image 0 (bar the bilinear seam at the edge of that area)
    assert (y == 255).any() and (warped[y == 255] == 0).all(-1).mean() > 0.8


class _SameSample(torch.utils.data.Dataset):
    """Every index is the same picture, so differences come from augmentation only."""

    def __init__(self, transform):
        self.transform = transform
        self.image, self.mask, _ = _class_coded_image(size=48, seed=1)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        x, y = self.transform(self.image, self.mask)
        return {"image": x, "mask": y, "name": str(i)}


def test_dataloader_workers_do_not_share_one_augmentation_stream():
    # albumentations keeps its own generator; forked workers would copy it and all draw the same
    # augmentations. SegTransform re-seeds per worker.
    t = build_transform("standard", train=True, crop_size=32, mean=[0] * 3, std=[1] * 3, seed=0)
    loader = torch.utils.data.DataLoader(_SameSample(t), batch_size=2, num_workers=2, collate_fn=pad_collate,
                                         multiprocessing_context="fork")
    first, second = list(loader)  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(first["image"], second["image"])


def test_padding_gets_ignore_index_and_eval_does_not_crop():
    image = np.full((20, 30, 3), 128, np.uint8)
    mask = np.ones((20, 30), np.int64)
    t = build_transform("standard", train=False, crop_size=32, mean=[0.5] * 3, std=[0.5] * 3, ignore_index=255)
    x, y = t(image, mask)
    assert y.shape == (32, 32)
    assert (y[:20, :30] == 1).all() and (y[20:, :] == 255).all() and (y[:, 30:] == 255).all()
    big = build_transform("standard", train=False, crop_size=16, mean=[0.5] * 3, std=[0.5] * 3)
    assert big(image, mask)[1].shape == (20, 30)  # never cropped
    with pytest.raises(ConfigError, match="data.augment 'heavy'"):
        build_transform("heavy", train=True, crop_size=16, mean=[0] * 3, std=[1] * 3)


def test_normalisation_matches_the_formula():
    image = np.array([[[0, 128, 255]]], np.uint8)
    t = build_transform("none", train=True, crop_size=1, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    x, _ = t(image, np.zeros((1, 1), np.int64))
    expected = (np.array([0, 128, 255]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, 0, 0].numpy(), expected, rtol=1e-5)


def test_epoch_seeded_replays_augmentations_independently_of_order():
    cfg = DataCfg(train_samples=6, crop_size=32, augment="unet")
    ds = EpochSeeded(build_dataset(cfg, "train", train=True))
    ds.set_epoch_seed(5)
    forward = [ds[i]["image"] for i in range(6)]
    backward = [ds[i]["image"] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    ds.set_epoch_seed(6)
    assert not all(torch.equal(a, ds[i]["image"]) for i, a in enumerate(forward))


def test_pad_collate_pads_masks_with_ignore():
    batch = [{"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long), "name": "a"},
             {"image": torch.ones(3, 6, 3), "mask": torch.ones(6, 3, dtype=torch.long), "name": "b"}]
    out = pad_collate(batch, ignore_index=7)
    assert out["image"].shape == (2, 3, 6, 5) and out["mask"].shape == (2, 6, 5)
    assert (out["mask"][0, 4:] == 7).all() and (out["mask"][1, :, 3:] == 7).all()
    assert out["image"][0, :, 4:].abs().sum() == 0
    assert out["name"] == ["a", "b"]


def test_synthetic_splits_other_than_train_and_val_get_their_own_images():
    from pixelwise.config import DataCfg as _Cfg

    cfg = _Cfg(train_samples=4, val_samples=4, crop_size=32)
    val = build_dataset(cfg, "val", train=False).generate(0)[0]
    test = build_dataset(cfg, "test", train=False).generate(0)[0]
    train = build_dataset(cfg, "train", train=True).generate(0)[0]
    assert not np.array_equal(val, test) and not np.array_equal(train, test)
