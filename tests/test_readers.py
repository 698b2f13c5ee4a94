"""Standard-dataset readers on tiny fixtures in the official layouts: VOC/SBD, Cityscapes, CamVid, KITTI, ADE20K.

Expected training ids are derived here from the raw values the fixture wrote, with the
published mappings written out independently (per-pixel dict lookups), not with the
readers' own tables.
"""

import pickle

import numpy as np
import pytest
from PIL import Image

from fixtures_readers import (
    CAMVID_COLOURS,
    write_ade20k,
    write_camvid_full,
    write_camvid_segnet,
    write_cityscapes,
    write_kitti_road,
    write_sbd,
    write_voc,
    write_voc_aug,
)
from pixelwise.config import from_dict
from pixelwise.data import build_dataset, class_names
from pixelwise.errors import ConfigError, DataError
from pixelwise.registry import DATASETS


def _cfg(dataset, root, num_classes, **extra):
    data = {"dataset": dataset, "root": str(root), "num_classes": num_classes, "augment": "none", **extra}
    return from_dict({"data": data}).data


def _raw(cfg, split):
    """The reader without a transform: images stay 0..1 RGB, so pixels can be compared."""
    return DATASETS[cfg.dataset](cfg, split, train=False, transform=None)


def _map(raw, table):
    """Per-pixel dict lookup (deliberately not a vectorised table)."""
    return np.array([[table[v] for v in row] for row in np.asarray(raw).tolist()], dtype=np.int64)


def _check(ds, expected, *, lossy=False):
    """Every sample of ``ds`` has its name, mask and image as in ``expected`` {name: (rgb, mask)}."""
    assert [ds[i]["name"] for i in range(len(ds))] == list(expected)
    for i, (name, (rgb, mask)) in enumerate(expected.items()):
        sample = ds[i]
        assert sample["mask"].dtype.is_floating_point is False and tuple(sample["mask"].shape) == mask.shape
        np.testing.assert_array_equal(sample["mask"].numpy(), mask, err_msg=name)
        got = sample["image"].permute(1, 2, 0).numpy() * 255.0
        # JPEG (quality 100, no chroma subsampling) moves a few values by a few levels.
        assert np.abs(got - rgb).max() <= (12 if lossy else 0.01), name
        if lossy:
            assert np.abs(got - rgb).mean() < 2.0


# --- VOC, VOC aug, SBD ------------------------------------------------------------------------

def test_voc_reads_palette_masks_and_maps_the_border_to_ignore_index(tmp_path):
    root, data = write_voc(tmp_path)
    cfg = _cfg("voc", root, 21, ignore_index=250)
    border = {v: v for v in range(21)} | {255: 250}
    expected = {i: (data[i][0], _map(data[i][1], border)) for i in ("2007_000032", "2008_000123")}
    _check(_raw(cfg, "train"), expected, lossy=True)
    assert len(_raw(cfg, "trainval")) == 3 and _raw(cfg, "val")[0]["name"] == "2007_000033"
    # Through the config path with the "none" preset: normalised image, same mask.
    sample = build_dataset(cfg, "train", train=True)[1]
    assert sample["image"].shape == (3, 32, 32) and abs(float(sample["image"].mean())) < 1.0
    np.testing.assert_array_equal(sample["mask"].numpy(), expected["2008_000123"][1])
    names = class_names(cfg)
    assert len(names) == 21 and names[0] == "background" and names[15] == "person" and names[20] == "tvmonitor"
    pickle.dumps(_raw(cfg, "train"))  # DataLoader workers started with spawn must pickle the dataset


def test_voc_errors_name_the_file_and_the_root_to_use(tmp_path):
    root, _ = write_voc(tmp_path)
    with pytest.raises(DataError, match=r"2008_000123\.png.*VOC2012"):
        (root / "SegmentationClass" / "2008_000123.png").unlink()
        _raw(_cfg("voc", root, 21), "train")
    with pytest.raises(DataError, match=r"test\.txt"):
        _raw(_cfg("voc", root, 21), "test")
    with pytest.raises(DataError, match=r"JPEGImages.*data\.root must be the VOC2012 folder"):
        _raw(_cfg("voc", tmp_path / "VOCdevkit", 21), "train")
    with pytest.raises(ConfigError, match="set data.num_classes: 21"):
        _raw(_cfg("voc", root, 5), "train")
    with pytest.raises(DataError, match="data.root is not set"):
        _raw(from_dict({"data": {"dataset": "voc", "num_classes": 21}}).data, "train")
    with pytest.raises(ConfigError, match="unknown key"):
        _raw(_cfg("voc", root, 21, args={"reduce_zero_label": True}), "val")
    # A label outside 0..20 (and not the border) is named with the file.
    Image.fromarray(np.full((24, 36), 37, np.uint8)).save(root / "SegmentationClass" / "2007_000033.png")
    with pytest.raises(DataError, match=r"2007_000033\.png.*\[37\]"):
        _raw(_cfg("voc", root, 21), "val")[0]


def test_voc_aug_reads_segmentation_class_aug_and_deeplab_lists(tmp_path):
    root, data = write_voc_aug(tmp_path)
    cfg = _cfg("voc_aug", root, 21)
    _check(_raw(cfg, "train"), data["train"], lossy=True)  # train_aug.txt, two-column DeepLab lines
    _check(_raw(cfg, "val"), data["val"], lossy=True)  # no val_aug.txt: falls back to val.txt
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"val_aug\.txt.*SegmentationClassAug"):
        _raw(cfg, "val")


def test_sbd_reads_gtcls_segmentation_from_mat_files(tmp_path):
    root, data = write_sbd(tmp_path)
    cfg = _cfg("sbd", root, 21)
    _check(_raw(cfg, "train"), data["train"], lossy=True)
    _check(_raw(cfg, "val"), data["val"], lossy=True)
    assert build_dataset(cfg, "val", train=False)[0]["mask"].shape == data["val"]["2008_000008"][1].shape
    import scipy.io
    scipy.io.savemat(str(root / "cls" / "2008_000008.mat"), {"GTinst": {"Segmentation": np.zeros((2, 2))}})
    with pytest.raises(DataError, match=r"2008_000008\.mat.*GTcls"):
        _raw(cfg, "val")[0]


# --- Cityscapes -------------------------------------------------------------------------------

# labelId -> trainId for the ids the fixture uses, as printed in the Cityscapes scripts' labels.py.
CITYSCAPES_TRAIN_ID = {7: 0, 26: 13, 0: 255, 33: 18, 24: 11, 9: 255, 255: 255}


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    root, data = write_cityscapes(tmp_path)
    cfg = _cfg("cityscapes", root, 19)
    for split in ("train", "val"):
        _check(_raw(cfg, split), {s: (rgb, _map(lab, CITYSCAPES_TRAIN_ID)) for s, (rgb, lab) in data[split].items()})
    mask = _raw(cfg, "train")[0]["mask"].numpy()
    raw = data["train"]["aachen_000000_000019"][1]
    assert (mask[raw == 7] == 0).all() and (mask[raw == 26] == 13).all() and (mask[raw == 0] == 255).all()
    names = class_names(cfg)
    assert len(names) == 19 and names[0] == "road" and names[13] == "car" and names[18] == "bicycle"
    pickle.dumps(_raw(cfg, "val"))


def test_cityscapes_errors(tmp_path):
    root, _ = write_cityscapes(tmp_path)
    label = root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png"
    Image.fromarray(np.full((16, 32), 40, np.uint8)).save(label)
    with pytest.raises(DataError, match=r"frankfurt_000000_000294_gtFine_labelIds\.png.*\[40\].*labelIds"):
        _raw(_cfg("cityscapes", root, 19), "val")[0]
    label.unlink()
    with pytest.raises(DataError, match=r"missing.*frankfurt_000000_000294_gtFine_labelIds\.png"):
        _raw(_cfg("cityscapes", root, 19), "val")
    with pytest.raises(DataError, match=r"leftImg8bit.*holding leftImg8bit/ and gtFine/"):
        _raw(_cfg("cityscapes", root / "gtFine", 19), "train")
    with pytest.raises(ConfigError, match="gtFine or gtCoarse"):
        _raw(_cfg("cityscapes", root, 19, args={"annotations": "gtMedium"}), "train")
    with pytest.raises(ConfigError, match="19"):
        _raw(_cfg("cityscapes", root, 34), "train")


# --- CamVid -----------------------------------------------------------------------------------

def test_camvid_segnet_layout_ignores_unlabelled(tmp_path):
    root, data = write_camvid_segnet(tmp_path)
    cfg = _cfg("camvid", root, 11, args={"classes": 11})
    void = {v: v for v in range(11)} | {11: 255}
    for split in ("train", "val", "test"):
        _check(_raw(cfg, split), {n: (rgb, _map(lab, void)) for n, (rgb, lab) in data[split].items()})
    assert len(_raw(cfg, "trainval")) == 3
    assert class_names(cfg)[3] == "road" and class_names(cfg)[10] == "bicyclist" and len(class_names(cfg)) == 11
    (root / "valannot" / "0016E5_07959.png").unlink()
    with pytest.raises(DataError, match=r"0016E5_07959\.png"):
        _raw(cfg, "val")
    with pytest.raises(ConfigError, match="11.*32"):
        _raw(_cfg("camvid", root, 11, args={"classes": 12}), "train")


def test_camvid_full_layout_maps_colours_in_label_colors_order(tmp_path):
    root, data = write_camvid_full(tmp_path)
    # label_colors.txt order without Void: Animal 0, Archway 1, Bicyclist 2, Road 3, Sky 4, Wall 5.
    ids = {"Animal": 0, "Archway": 1, "Bicyclist": 2, "Road": 3, "Sky": 4, "Wall": 5, "Void": 255}
    cfg = _cfg("camvid", root, 6, args={"classes": 32})
    for split in ("train", "val"):
        _check(_raw(cfg, split), {n: (rgb, _map(names, ids)) for n, (rgb, names) in data[split].items()})
    assert class_names(cfg) == ["Animal", "Archway", "Bicyclist", "Road", "Sky", "Wall"]
    assert len(_raw(cfg, "all")) == 3
    keep = _cfg("camvid", root, 7, args={"classes": 32, "keep_void": True})
    _check(_raw(keep, "val"), {n: (rgb, _map(names, ids | {"Void": 5, "Wall": 6}))
                               for n, (rgb, names) in data["val"].items()})
    with pytest.raises(DataError, match=r"test\.txt.*'all'"):
        _raw(cfg, "test")


def test_camvid_unknown_colour_is_an_error_or_ignored_on_request(tmp_path):
    root, data = write_camvid_full(tmp_path)
    path = root / "LabeledApproved_full" / "0016E5_07959_L.png"
    rgb = np.asarray(Image.open(path)).copy()
    rgb[0, :3] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    with pytest.raises(DataError, match=r"0016E5_07959_L\.png.*\(1, 2, 3\).*unknown_color: ignore"):
        _raw(_cfg("camvid", root, 6, args={"classes": 32}), "val")[0]
    mask = _raw(_cfg("camvid", root, 6, args={"classes": 32, "unknown_color": "ignore"}), "val")[0]["mask"].numpy()
    ids = {name: i for i, name in enumerate(n for n, _ in CAMVID_COLOURS if n != "Void")} | {"Void": 255}
    expected = _map(data["val"]["0016E5_07959"][1], ids)
    expected[0, :3] = 255
    np.testing.assert_array_equal(mask, expected)


# --- KITTI Road -------------------------------------------------------------------------------

def test_kitti_road_colours_and_deterministic_split(tmp_path):
    root, data = write_kitti_road(tmp_path)
    cfg = _cfg("kitti_road", root, 2)
    road = {"road": 1, "other": 0, "invalid": 255}
    everything = _raw(cfg, "trainval")
    _check(everything, {s: (rgb, _map(r, road)) for s, (rgb, r, _) in sorted(data.items())})
    train, val = ([everything_name["name"] for everything_name in _raw(cfg, s)] for s in ("train", "val"))
    # round(5*0.2)=1, round(3*0.2)=1, round(2*0.2)=0 raised to 1: one val frame per category.
    assert len(val) == 3 and {v.split("_")[0] for v in val} == {"um", "umm", "uu"}
    assert sorted(train + val) == sorted(data) and not set(train) & set(val)
    assert [s["name"] for s in _raw(cfg, "val")] == val  # same seed, same split
    half = _cfg("kitti_road", root, 2, args={"val_fraction": 0.5, "seed": 3, "categories": ["um"]})
    assert len(_raw(half, "val")) == 2 and len(_raw(half, "train")) == 3  # round(2.5) = 2 (banker's rounding)
    lane = _cfg("kitti_road", root, 2, args={"lane": True, "categories": ["um"]})
    _check(_raw(lane, "trainval"), {s: (rgb, _map(ln, road)) for s, (rgb, _, ln) in sorted(data.items())
                                    if s.startswith("um_")})
    assert class_names(cfg) == ["background", "road"]


def test_kitti_road_errors(tmp_path):
    root, _ = write_kitti_road(tmp_path)
    cfg = _cfg("kitti_road", root, 2)
    with pytest.raises(ConfigError, match=r"categories: \[um\]"):
        _raw(_cfg("kitti_road", root, 2, args={"lane": True}), "train")
    with pytest.raises(DataError, match="no public ground truth"):
        _raw(cfg, "test")
    with pytest.raises(ConfigError, match="categories"):
        _raw(_cfg("kitti_road", root, 2, args={"categories": ["rural"]}), "train")
    gt = root / "training" / "gt_image_2" / "uu_road_000001.png"
    rgb = np.asarray(Image.open(gt)).copy()
    rgb[5, 5] = (0, 255, 0)
    Image.fromarray(rgb).save(gt)
    ds = _raw(cfg, "trainval")
    with pytest.raises(DataError, match=r"uu_road_000001\.png.*\(0, 255, 0\)"):
        ds[[s[2] for s in ds.items].index("uu_000001")]
    (root / "training" / "gt_image_2" / "umm_road_000002.png").unlink()
    with pytest.raises(DataError, match=r"umm_road_000002\.png.*data_road"):
        _raw(cfg, "trainval")


# --- ADE20K -----------------------------------------------------------------------------------

def test_ade20k_reduce_zero_label(tmp_path):
    root, data = write_ade20k(tmp_path)
    reduced = {0: 255} | {v: v - 1 for v in range(1, 151)}
    cfg = _cfg("ade20k", root, 150)
    for split in ("train", "val"):
        _check(_raw(cfg, split), {s: (rgb, _map(lab, reduced)) for s, (rgb, lab) in data[split].items()}, lossy=True)
    mask = _raw(cfg, "train")[0]["mask"].numpy()
    raw = data["train"]["ADE_train_00000001"][1]
    assert (mask[raw == 150] == 149).all() and (mask[raw == 1] == 0).all() and (mask[raw == 0] == 255).all()
    names = class_names(cfg)
    assert len(names) == 150 and names[0] == "wall" and names[12] == "person" and names[149] == "flag"
    keep = _cfg("ade20k", root, 151, args={"reduce_zero_label": False})
    _check(_raw(keep, "validation"), data["val"], lossy=True)
    assert class_names(keep)[0] == "other" and class_names(keep)[1] == "wall"


def test_ade20k_errors(tmp_path):
    root, _ = write_ade20k(tmp_path)
    with pytest.raises(ConfigError, match=r"151.*reduce_zero_label is false"):
        _raw(_cfg("ade20k", root, 150, args={"reduce_zero_label": False}), "train")
    with pytest.raises(ConfigError, match="must be bool"):
        _raw(_cfg("ade20k", root, 150, args={"reduce_zero_label": "yes"}), "train")
    with pytest.raises(DataError, match="train or val"):
        _raw(_cfg("ade20k", root, 150), "test")
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(DataError, match=r"ADE_train_00000002\.png.*ADEChallengeData2016"):
        _raw(_cfg("ade20k", root, 150), "train")
    with pytest.raises(DataError, match="ADEChallengeData2016 folder"):
        _raw(_cfg("ade20k", tmp_path, 150), "val")


# --- every reader through the YAML path with the training augmentation --------------------------

CASES = {
    "voc": (write_voc, 21, {}, None),
    "voc_aug": (write_voc_aug, 21, {}, None),
    "sbd": (write_sbd, 21, {}, None),
    "cityscapes": (write_cityscapes, 19, {}, None),
    "camvid": (write_camvid_segnet, 11, {"classes": 11}, None),
    "camvid32": (write_camvid_full, 6, {"classes": 32}, "camvid"),
    "kitti_road": (write_kitti_road, 2, {}, None),
    "ade20k": (write_ade20k, 150, {}, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_reader_builds_from_a_config_dict_with_augmentation(tmp_path, case):
    write, num_classes, args, dataset = CASES[case]
    root, _ = write(tmp_path)
    cfg = from_dict({"data": {"dataset": dataset or case, "root": str(root), "num_classes": num_classes,
                              "augment": "standard", "crop_size": 32, "args": args}})
    ds = build_dataset(cfg.data, "train", train=True)
    assert len(ds) >= 2
    sample = ds[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype.is_floating_point
    assert sample["mask"].shape == (32, 32)
    values = set(np.unique(sample["mask"].numpy()).tolist())
    assert values <= set(range(num_classes)) | {255} and values - {255}
    assert len(class_names(cfg.data)) == num_classes
