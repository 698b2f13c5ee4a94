"""COCO panoptic annotations read as semantic masks (dataset: coco_panoptic), on a generated folder in
COCO 2017's layout and in a Cityscapes-like one (images in per-city folders); errors name the file."""

import json

import numpy as np
import pytest
from PIL import Image

from pixelwise import config
from pixelwise.cli import main
from pixelwise.data import build_dataset, class_names
from pixelwise.errors import DataError
from pixelwise.metrics.panoptic import id_to_rgb

# Non-contiguous ids, as COCO's are: classes follow the id order.
CATEGORIES = [{"id": 23, "name": "road", "isthing": 0}, {"id": 1, "name": "person", "isthing": 1},
              {"id": 17, "name": "sky", "isthing": 0}, {"id": 3, "name": "car", "isthing": 1}]
LABEL = {1: 0, 3: 1, 17: 2, 23: 3}  # person, car, sky, road


def _write(root, *, split="val", n=3, nested=False):
    """A panoptic folder; returns the expected semantic masks (crowd labelled, void 255)."""
    rng = np.random.default_rng(0)
    ann_dir = root / "annotations" / f"panoptic_{split}2017"
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, expected = [], [], []
    for i in range(n):
        h, w = 40, 48
        ids = np.zeros((h, w), np.int64)
        truth = np.full((h, w), 255, np.int64)
        ids[: h // 2], truth[: h // 2] = 6, LABEL[17]
        ids[h // 2:], truth[h // 2:] = 5, LABEL[23]
        y, x = rng.integers(2, 20, 2)
        ids[y:y + 10, x:x + 8], truth[y:y + 10, x:x + 8] = 300_000 + i, LABEL[1]  # an id above 2^16
        ids[30:36, 30:44], truth[30:36, 30:44] = 77, LABEL[3]  # a crowd of cars
        ids[:, :3], truth[:, :3] = 0, 255  # void
        segments = [{"id": 6, "category_id": 17, "iscrowd": 0}, {"id": 5, "category_id": 23, "iscrowd": 0},
                    {"id": 300_000 + i, "category_id": 1, "iscrowd": 0}, {"id": 77, "category_id": 3, "iscrowd": 1}]
        name = f"{i:012d}"
        Image.fromarray(id_to_rgb(ids)).save(ann_dir / f"{name}.png")
        folder = root / f"{split}2017" / (f"city{i % 2}" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.jpg", quality=95)
        images.append({"id": i, "file_name": f"{name}.jpg", "height": h, "width": w})
        annotations.append({"image_id": i, "file_name": f"{name}.png", "segments_info": segments})
        expected.append(truth)
    (root / "annotations" / f"panoptic_{split}2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return expected


def _cfg(root, **data):
    return config.from_dict({"data": {"dataset": "coco_panoptic", "root": str(root), "num_classes": 4,
                                                    "val_split": "val", "train_split": "val", "augment": "none",
                                                    **data}})


@pytest.mark.parametrize("nested", [False, True])
def test_semantic_masks_from_panoptic_pngs(tmp_path, nested):
    expected = _write(tmp_path, nested=nested)
    cfg = _cfg(tmp_path)
    dataset = build_dataset(cfg.data, "val", train=False)
    assert len(dataset) == 3
    for i, truth in enumerate(expected):
        sample = dataset[i]
        assert sample["name"] == f"{i:012d}"
        np.testing.assert_array_equal(sample["mask"].numpy(), truth)
    assert class_names(cfg.data) == ["person", "car", "sky", "road"]
    ignored = build_dataset(_cfg(tmp_path, args={"crowd": "ignore"}).data, "val", train=False)
    crowd = ignored[0]["mask"].numpy()[30:36, 30:44]
    assert (crowd == 255).all()


def test_errors_name_the_file_and_the_fix(tmp_path):
    _write(tmp_path)
    with pytest.raises(DataError, match="set data.num_classes to 4"):
        build_dataset(_cfg(tmp_path, num_classes=5).data, "val", train=False)
    ann = tmp_path / "annotations" / "panoptic_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][1]["segments_info"] = data["annotations"][1]["segments_info"][1:]
    ann.write_text(json.dumps(data))
    dataset = build_dataset(_cfg(tmp_path).data, "val", train=False)
    with pytest.raises(DataError, match=r"000000000001.png.*segment id\(s\) \[6\]"):
        dataset[1]
    (tmp_path / "annotations" / "panoptic_val2017" / "000000000002.png").unlink()
    with pytest.raises(DataError, match="000000000002.png.*does not exist; set data.args.png_dir"):
        dataset[2]
    with pytest.raises(DataError, match="unknown data.args"):
        build_dataset(_cfg(tmp_path, args={"png_folder": "x"}).data, "val", train=False)


def test_trains_from_a_config(tmp_path):
    _write(tmp_path / "data")
    path = tmp_path / "cfg.yaml"
    path.write_text(f"""
model: {{name: unet, args: {{base_channels: 4, depth: 2}}}}
data: {{dataset: coco_panoptic, root: {tmp_path / 'data'}, num_classes: 4, train_split: val, val_split: val,
       crop_size: 32, batch_size: 2, augment: none}}
train: {{max_steps: 2, out_dir: {tmp_path / 'run'}, device: cpu}}
""")
    assert main(["train", str(path), "--quiet", "--no-report"]) == 0
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["data"]["class_names"] == ["person", "car", "sky", "road"]
