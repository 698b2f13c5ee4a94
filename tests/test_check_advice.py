"""check's severity and advice: 0/255 masks, classes missing from train, num_classes 1,
failed splits, and a model whose in_channels the images cannot feed."""

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise import config
from pixelwise.cli import main
from pixelwise.config import DataCfg
from pixelwise.data.check import check_dataset
from pixelwise.errors import ConfigError


def _split(root, masks, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i, mask in enumerate(masks):
        Image.fromarray(rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)).save(root / "images" / f"m{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"m{i}.png")


def _blob(value, size=(16, 20)):
    mask = np.zeros(size, np.uint8)
    mask[4:10, 5:12] = value
    return mask


def test_black_and_white_masks_are_an_error_with_the_fix(tmp_path):
    _split(tmp_path / "train", [_blob(255), _blob(255)])
    _split(tmp_path / "val", [_blob(255)])
    report = check_dataset(DataCfg(dataset="folder", root=str(tmp_path), num_classes=2))
    assert not report.ok
    problems = [p for s in report.splits for p in s.problems if p.kind == "binary_255"]
    assert len(problems) == 2 and "mask // 255" in problems[0].message and "foreground pixel" in problems[0].message
    assert "dataset has ERRORS" in report.format()


def test_a_class_in_val_but_never_in_train_is_a_warning(tmp_path):
    _split(tmp_path / "train", [_blob(1), _blob(1)])
    _split(tmp_path / "val", [_blob(2)])
    report = check_dataset(DataCfg(dataset="folder", root=str(tmp_path), num_classes=3))
    [warning] = [p for p in report.splits[1].problems if p.kind == "class_not_in_train"]
    assert warning.severity == "warning"
    assert "class(es) [2] occur in split 'val' but never in 'train'" in warning.message
    assert report.ok  # a warning, not an error


def test_num_classes_one_gets_the_right_hint(tmp_path):
    _split(tmp_path / "train", [_blob(1)])
    report = check_dataset(DataCfg(dataset="folder", root=str(tmp_path), num_classes=1), ["train"])
    hints = report.splits[0].suggestions()
    assert any("num_classes: 2" in h for h in hints) and not any("reduce_zero_label" in h for h in hints)


def test_a_split_that_failed_to_load_prints_no_class_table(tmp_path):
    _split(tmp_path / "train", [_blob(1)])
    report = check_dataset(DataCfg(dataset="folder", root=str(tmp_path), num_classes=2), ["train", "val"])
    text = report.format()
    val_part = text.split("== split 'val'")[1]
    assert "no pairs were read from this split" in val_part and "pixels %" not in val_part


def test_in_channels_that_the_images_cannot_feed_fail_in_check_and_before_training(tmp_path, capsys):
    _split(tmp_path / "data" / "train", [_blob(1)] * 4)
    _split(tmp_path / "data" / "val", [_blob(1)] * 2)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"name": "unet", "in_channels": 1, "args": {"base_channels": 4, "depth": 2}},
        "data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_classes": 2, "crop_size": 16,
                 "batch_size": 2},
        "train": {"max_steps": 1, "out_dir": str(tmp_path / "run")}}))
    assert main(["check", str(cfg_path)]) == 1
    assert "model.in_channels is 1 but the images are read as RGB" in capsys.readouterr().out
    from pixelwise.train.loop import train

    with pytest.raises(ConfigError, match=r"in_channels is 1 but split 'val' delivers 3-channel.*in_channels: 3"):
        train(config.load(cfg_path), progress=False)
    assert not (tmp_path / "run" / "last").exists()


def test_train_checks_the_data_before_step_one_and_can_skip_it(tmp_path, capsys):
    good = [_blob(1)] * 4
    _split(tmp_path / "data" / "train", good)
    _split(tmp_path / "data" / "val", [_blob(1)] * 2)
    bad = np.zeros((16, 20), np.uint8)
    bad[2:5, 2:5] = 9  # label 9 with num_classes 2, in the last file of the epoch's order
    Image.fromarray(bad).save(tmp_path / "data" / "train" / "masks" / "m3.png")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
        "data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_classes": 2, "crop_size": 16,
                 "batch_size": 2},
        "train": {"max_steps": 2, "out_dir": str(tmp_path / "run")}}))
    assert main(["train", str(cfg_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pre-flight data check found 1 error(s) before training started" in err
    assert "m3.png" in err and "[9]" in err and "--no-preflight" in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing lost
    Image.fromarray(_blob(1)).save(tmp_path / "data" / "train" / "masks" / "m3.png")
    assert main(["train", str(cfg_path)]) == 0
    assert "pre-flight: 6 image/mask pairs read in" in capsys.readouterr().out
