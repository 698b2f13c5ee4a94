"""The recipe configs in configs/recipes/: each loads, checks its data and trains two steps on a
generated fixture in the dataset's official layout, through the same CLI a user runs.

Only sizes change (crops, batch, patch size, Mask R-CNN's resize) and pretrained weights are
switched off (no network here); the architecture, loss, optimiser and schedule are the recipe's.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fixtures_readers import (
    write_ade20k,
    write_cityscapes,
    write_kitti_road,
    write_voc_aug,
)
from pixelwise import config
from pixelwise.cli import main
from pixelwise.data import build_dataset
from pixelwise.data.rle import rle_encode

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"


def _rle_buildings(tmp: Path) -> Path:
    """ROOT/train.csv (ImageId,EncodedPixels, column-major) + ROOT/train_images/*.png."""
    root = tmp / "buildings"
    (root / "train_images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        image = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, 36, 2)
            mask[y:y + 10, x:x + 8] = 1
            image[y:y + 10, x:x + 8] = 230
        Image.fromarray(image).save(root / "train_images" / f"tile_{i:02d}.png")
        rows.append((f"tile_{i:02d}.png", rle_encode(mask)))
    with open(root / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("ImageId", "EncodedPixels"), *rows])
    return root


def _msd_volumes(tmp: Path) -> Path:
    """Decathlon layout: imagesTr/case_XXX.nii.gz + labelsTr/case_XXX.nii.gz, labels 0..2."""
    root = tmp / "Task04_Hippocampus"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        label = np.zeros((20, 24, 18), np.uint8)
        label[5 + i:12 + i, 6:14, 4:10] = 1
        label[8:11, 15:19, 10:14] = 2
        image = rng.normal(100, 10, label.shape).astype(np.float32) + 40 * label
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"case_{i:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    return root


def _coco(tmp: Path) -> Path:
    """COCO 2017 layout with two categories (ids 1 and 18), polygons, and a crowd RLE."""
    root = tmp / "coco"
    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        images, anns = [], []
        for i in range(4):
            image = rng.integers(0, 120, (64, 80, 3), dtype=np.uint8)
            name = f"{i:012d}.jpg"
            for k, (cat, (x, y)) in enumerate(zip((1, 18), ((8, 8), (40, 30)))):
                image[y:y + 20, x:x + 24] = 200 + 20 * k
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                             "segmentation": [[x, y, x + 24, y, x + 24, y + 20, x, y + 20]],
                             "bbox": [x, y, 24, 20], "area": 480.0})
            Image.fromarray(image).save(root / f"{split}2017" / name, quality=95)
            images.append({"id": i + 1, "file_name": name, "height": 64, "width": 80})
        data = {"images": images, "annotations": anns,
                "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


SMALL = ["data.num_workers=0", "data.batch_size=2", "train.max_steps=2", "model.encoder_weights=null"]
CASES = {
    "fcn8s_kitti_road": (lambda tmp: write_kitti_road(tmp)[0], ["data.resize=[32,96]"]),
    "unet_buildings_rle": (_rle_buildings, ["data.crop_size=32"]),
    "deeplabv3plus_cityscapes": (lambda tmp: write_cityscapes(tmp)[0], ["data.crop_size=32"]),
    "deeplabv3plus_voc": (lambda tmp: write_voc_aug(tmp)[0], ["data.crop_size=32"]),
    "pspnet_ade20k": (lambda tmp: write_ade20k(tmp)[0], ["data.crop_size=32"]),
    "segformer_b0_ade20k": (lambda tmp: write_ade20k(tmp)[0], ["data.crop_size=32", "train.warmup_steps=1"]),
    "segformer_b0_cityscapes": (lambda tmp: write_cityscapes(tmp)[0], ["data.crop_size=32", "train.warmup_steps=1"]),
    "upernet_convnext_ade20k": (lambda tmp: write_ade20k(tmp)[0], ["data.crop_size=32", "train.warmup_steps=1"]),
    "unet3d_nifti": (_msd_volumes, ["data.args.patch_size=[16,16,16]", "model.args.base_channels=8",
                                    "data.args.val_fraction=0.34"]),
    "maskrcnn_coco": (_coco, ["model.args.min_size=64", "model.args.max_size=80", "data.num_classes=3"]),
}


def test_every_recipe_is_tested():
    assert {p.stem for p in RECIPES.glob("*.yaml")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_recipe_trains_two_steps_on_its_layout(name, tmp_path, capsys):
    writer, extra = CASES[name]
    root = writer(tmp_path)
    path = RECIPES / f"{name}.yaml"
    overrides = [f"data.root={root}", f"train.out_dir={tmp_path / 'run'}", *SMALL, *extra]
    cfg = config.load(path, overrides)
    raw = config.load(path)  # the recipe itself: the paper's settings, root left for the user
    assert raw.data.root is None and raw.model.name == cfg.model.name and raw.train.lr == cfg.train.lr
    if cfg.model.name != "maskrcnn":
        sample = build_dataset(cfg.data, cfg.data.train_split, train=True)[0]
        labels = sample["mask"][sample["mask"] != cfg.data.ignore_index]
        assert labels.numel() > 0 and 0 <= labels.min() and labels.max() < cfg.data.num_classes
    assert main(["train", str(path), "--quiet", *sum((["--set", o] for o in overrides), [])]) == 0
    out = capsys.readouterr().out
    assert re.search(r"done: 2 steps", out), out
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "best" / "config.json").is_file()
