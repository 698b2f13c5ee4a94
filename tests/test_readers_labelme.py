"""LabelMe JSON reader: rasterisation of each shape type, paint order, embedded images, errors, splits.

Expected masks are built from coordinate predicates (inside a rectangle, distance to a
centre, half-planes), not from OpenCV drawing.
"""

import base64
import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from fixtures_readers import labelme_json, write_labelme
from pixelwise.config import from_dict
from pixelwise.data import build_dataset, class_names
from pixelwise.data.labelme import rasterize
from pixelwise.data.pairs import deterministic_split
from pixelwise.errors import ConfigError, DataError
from pixelwise.registry import DATASETS

CLASSES = ["__ignore__", "background", "road", "car", "person", "clutter"]  # labelme's labels.txt convention


def _cfg(root, classes=CLASSES, num_classes=5, **args):
    data = {"dataset": "labelme", "root": str(root), "num_classes": num_classes, "augment": "none",
            "args": {"classes": classes, **args}}
    return from_dict({"data": data}).data


def _raw(cfg, split):
    return DATASETS["labelme"](cfg, split, train=False, transform=None)


def _by_name(ds):
    return {ds[i]["name"]: ds[i] for i in range(len(ds))}


def _street_expected(line_width=0):
    yy, xx = np.mgrid[0:24, 0:32]
    road, car, person = 1, 2, 3  # after dropping __ignore__: background 0, road 1, car 2, person 3, clutter 4
    mask = np.zeros((24, 32), np.int64)
    mask[(xx >= 2) & (xx <= 30) & (yy >= 3) & (yy <= 20)] = road  # corners given in reverse order
    mask[(xx >= 5) & (xx <= 12) & (yy >= 5) & (yy <= 10)] = car  # later shape on top
    dist = np.hypot(xx - 24, yy - 12)
    mask[dist <= 5.5] = person
    if line_width == 1:
        mask[22, :] = road
    return mask, dist


def test_labelme_rasterises_shapes_in_file_order(tmp_path):
    root, data = write_labelme(tmp_path)
    cfg = _cfg(root)
    samples = _by_name(_raw(cfg, "all"))
    assert sorted(samples) == ["embedded", "street"]
    expected, dist = _street_expected()
    got = samples["street"]["mask"].numpy()
    rim = (dist > 5.5) & (dist < 7.0)  # the circle's rim pixels depend on the rasteriser; check the rest
    np.testing.assert_array_equal(got[~rim], expected[~rim])
    assert (got[rim & (got != 3)] == expected[rim & (got != 3)]).all() and (got[rim] == 3).any()
    assert got[1, 1] == 0 and (got[22] == 0).all()  # the point and the line (line_width 0) paint nothing
    image = samples["street"]["image"].permute(1, 2, 0).numpy() * 255
    assert np.abs(image - data["street"][0]).mean() < 2.0  # read from imagePath (a JPEG next to the JSON)
    # The embedded image is used even though imagePath names no file.
    np.testing.assert_allclose(samples["embedded"]["image"].permute(1, 2, 0).numpy() * 255, data["embedded"][0],
                               atol=1e-3)
    emb = samples["embedded"]["mask"].numpy()
    yy, xx = np.mgrid[0:16, 0:20]
    inside = (xx >= 2) & (yy >= 2) & (xx + yy <= 11)  # strictly inside the triangle (2,2) (10,2) (2,10)
    outside = (xx + yy >= 14) | (xx < 2) | (yy < 2)
    assert (emb[inside & ((xx > 3) | (yy > 3))] == 3).all()
    assert (emb[(xx <= 3) & (yy <= 3)] == 4).all()  # clutter rectangle drawn over the triangle's corner
    assert (emb[12:16, 15:20] == 255).all()  # the __ignore__ rectangle
    rest = outside & ~((xx <= 3) & (yy <= 3)) & ~((yy >= 12) & (xx >= 15))
    assert (emb[rest] == 0).all()
    assert class_names(cfg) == ["background", "road", "car", "person", "clutter"]
    pickle.dumps(_raw(cfg, "all"))


def test_labelme_line_width_draws_lines(tmp_path):
    root, _ = write_labelme(tmp_path)
    got = _by_name(_raw(_cfg(root, line_width=1), "all"))["street"]["mask"].numpy()
    assert (got[22] == 1).all() and (got[21] == 0).all() and (got[23] == 0).all()


def test_labelme_mask_shape_and_old_files_without_shape_type():
    region = np.zeros((3, 4), np.uint8)
    region[1:, 1:] = 1
    buffer = io.BytesIO()
    Image.fromarray(region * 255).save(buffer, format="PNG")
    shapes = [{"label": "a", "shape_type": None, "points": [[0, 0], [3, 0], [3, 3], [0, 3]]},
              {"label": "b", "shape_type": "mask", "points": [[4, 2], [7, 4]],
               "mask": base64.b64encode(buffer.getvalue()).decode()}]
    got = rasterize(shapes, 8, 10, ids={"a": 1, "b": 2}, line_width=0, where="test")
    expected = np.zeros((8, 10), np.int64)
    expected[0:4, 0:4] = 1
    expected[2 + 1:2 + 3, 4 + 1:4 + 4] = 2
    np.testing.assert_array_equal(got, expected)


def test_labelme_errors_name_file_label_and_fix(tmp_path):
    root, _ = write_labelme(tmp_path)
    with pytest.raises(DataError, match=r"embedded\.json.*'clutter'.*data\.args\.classes"):
        _raw(_cfg(root, classes=["background", "road", "car", "person"], num_classes=4), "all")
    with pytest.raises(ConfigError, match="data.args.classes is not set"):
        DATASETS["labelme"](from_dict({"data": {"dataset": "labelme", "root": str(root)}}).data, "all", train=False,
                            transform=None)
    with pytest.raises(ConfigError, match="set data.num_classes: 5"):
        _raw(_cfg(root, num_classes=6), "all")
    with pytest.raises(ConfigError, match="line_width"):
        _raw(_cfg(root, line_width=-2), "all")
    (root / "street.jpg").unlink()
    ds = _raw(_cfg(root), "all")
    with pytest.raises(DataError, match=r"street\.json.*imagePath 'street\.jpg'"):
        ds[[p.stem for p in ds.paths].index("street")]
    doc = json.loads((root / "embedded.json").read_text())
    doc["shapes"][0]["shape_type"] = "ellipse"
    (root / "embedded.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"shape 0 of .*embedded\.json.*'ellipse'"):
        ds[[p.stem for p in ds.paths].index("embedded")]
    (root / "embedded.json").write_text("{not json")
    with pytest.raises(DataError, match=r"embedded\.json.*not readable JSON"):
        _raw(_cfg(root), "all")
    with pytest.raises(DataError, match="neither a 'train' folder nor"):
        _raw(_cfg(tmp_path), "train")


def test_labelme_splits_from_folders_or_deterministic(tmp_path):
    root = tmp_path / "project"
    image = np.zeros((8, 8, 3), np.uint8)
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for name in names:
            labelme_json(root / split / f"{name}.json", [], image=image, image_path=None, embed=True)
    cfg = _cfg(root, classes=["background"], num_classes=1)
    assert [s["name"] for s in _raw(cfg, "train")] == ["a", "b"]
    sample = build_dataset(cfg, "val", train=False)[0]
    assert sample["name"] == "c" and (sample["mask"] == 0).all()
    names = [f"img{i:02d}" for i in range(10)]
    train = deterministic_split(names, "train", val_fraction=0.3, seed=1, dataset="t")
    val = deterministic_split(list(reversed(names)), "val", val_fraction=0.3, seed=1, dataset="t")
    assert len(val) == 3 and sorted(train + val) == names and not set(train) & set(val)
    assert val == deterministic_split(names, "val", val_fraction=0.3, seed=1, dataset="t")  # order-independent
    with pytest.raises(DataError, match="train, val or trainval"):
        deterministic_split(names, "test", val_fraction=0.3, seed=1, dataset="t")


def test_labelme_builds_from_a_config_dict_with_augmentation(tmp_path):
    root, _ = write_labelme(tmp_path)
    cfg = from_dict({"data": {"dataset": "labelme", "root": str(root), "num_classes": 5, "augment": "standard",
                              "crop_size": 32, "args": {"classes": CLASSES}}})
    train, val = build_dataset(cfg.data, "train", train=True), build_dataset(cfg.data, "val", train=False)
    # Two files, val_fraction 0.2: round(0.4) = 0 is raised to 1 so val is never empty.
    assert len(train) == 1 and len(val) == 1 and train[0]["name"] != val[0]["name"]
    sample = train[0]
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)
    assert set(np.unique(sample["mask"].numpy()).tolist()) <= {0, 1, 2, 3, 4, 255}
    labels = root / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    from_file = from_dict({"data": {"dataset": "labelme", "root": str(root), "num_classes": 5,
                                    "args": {"classes": "labels.txt"}}}).data
    assert class_names(from_file) == CLASSES[1:]
