"""Dataset checker: planted problems are found and named, statistics match numpy, CLI exit codes."""

import json

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.config import DataCfg
from pixelwise.data.check import check_dataset, scan_folder
from pixelwise.data.check_report import inverse_log_weights, median_frequency_weights
from pixelwise.registry import DATASETS

K = 5


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _clean_split(root, n=5, seed=0, size=(24, 32)):
    """``n`` pairs with random images and blob masks using classes 0..3 (class 4 never occurs)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        for c in rng.choice([1, 2, 3], size=int(rng.integers(1, 3)), replace=False):
            y, x = rng.integers(0, size[0] - 6), rng.integers(0, size[1] - 8)
            mask[y:y + 6, x:x + int(rng.integers(3, 9))] = c
        mask[0, :3] = 255  # a few ignored pixels, which count in no class
        _save(root / "images" / f"p{i}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        _save(root / "masks" / f"p{i}.png", mask)


@pytest.fixture()
def planted(tmp_path):
    """A train split with one of each problem besides clean pairs, and a clean val split."""
    train = tmp_path / "train"
    _clean_split(train, n=3)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    _save(train / "images" / "nomask.png", image)                       # image without mask
    _save(train / "masks" / "noimage.png", np.zeros((24, 32), np.uint8))  # mask without image
    _save(train / "images" / "corrupt.png", image)                      # truncated PNG
    (train / "images" / "corrupt.png").write_bytes((train / "images" / "corrupt.png").read_bytes()[:200])
    _save(train / "masks" / "corrupt.png", np.zeros((24, 32), np.uint8))
    _save(train / "images" / "small.png", image)                        # mask of the wrong size
    _save(train / "masks" / "small.png", np.zeros((20, 32), np.uint8))
    label37 = np.zeros((24, 32), np.uint8)
    label37[5:8, 5:9] = 37                                              # label outside [0, 5)
    _save(train / "images" / "label37.png", image)
    _save(train / "masks" / "label37.png", label37)
    _save(train / "images" / "void.png", image)                         # all-void mask
    _save(train / "masks" / "void.png", np.full((24, 32), 255, np.uint8))
    _clean_split(tmp_path / "val", n=2, seed=5)
    return tmp_path


def test_planted_problems_are_each_found_and_named(planted):
    report = check_dataset(DataCfg(dataset="folder", root=str(planted), num_classes=K), workers=2)
    train, val = report.splits
    found = {(p.kind, p.path.split("/")[-2] + "/" + p.path.split("/")[-1]) for p in train.problems}
    assert found == {
        ("image_without_mask", "images/nomask.png"),
        ("mask_without_image", "masks/noimage.png"),
        ("unreadable_image", "images/corrupt.png"),
        ("size_mismatch", "masks/small.png"),
        ("label_out_of_range", "masks/label37.png"),
        ("all_void", "masks/void.png"),
    }
    by_kind = {p.kind: p for p in train.problems}
    assert "truncated" in by_kind["unreadable_image"].message or "decoded" in by_kind["unreadable_image"].message
    assert "32x20" in by_kind["size_mismatch"].message and "32x24" in by_kind["size_mismatch"].message
    assert "[37]" in by_kind["label_out_of_range"].message
    assert by_kind["mask_without_image"].severity == "warning" and by_kind["all_void"].severity == "warning"
    assert not report.ok and {p.kind for p in val.problems} <= {"class_not_in_train"}
    summary = report.to_dict()["splits"][0]
    assert summary["labels_out_of_range"] == {"37": {"pixels": 12, "files": 1,
                                                     "examples": [str(planted / "train/masks/label37.png")]}}
    text = report.format()
    assert "label 37: 12 pixels in 1 file(s), e.g. label37.png" in text and "ERRORS" in text


def test_folder_scan_reports_duplicates_and_foreign_files(tmp_path):
    _clean_split(tmp_path, n=1)
    _save(tmp_path / "images" / "p0.jpg", np.zeros((24, 32, 3), np.uint8))
    (tmp_path / "masks" / "notes.txt").write_text("x")
    (tmp_path / "images" / "._p0.png").write_bytes(b"resource fork")
    pairs, problems = scan_folder(tmp_path)
    assert [p[0].stem for p in pairs] == ["p0"]  # the first of the two (sorted) is kept
    assert {(p.kind, p.severity) for p in problems} == {("duplicate_name", "error"), ("ignored_file", "warning")}


def _independent_stats(root, num_classes, ignore=255):
    """Statistics straight from PIL and numpy, written without the checker's code paths."""
    masks = [np.array(Image.open(p)).astype(np.int64) for p in sorted((root / "masks").glob("*.png"))]
    images = [np.array(Image.open(p).convert("RGB")) for p in sorted((root / "images").glob("*.png"))]
    labelled = np.concatenate([m[m != ignore] for m in masks])
    pixels = np.array([(labelled == c).sum() for c in range(num_classes)], float)
    freq_share = pixels / pixels.sum()
    per_class_freq = []
    for c in range(num_classes):
        seen_in = [m for m in masks if (m == c).any()]
        per_class_freq.append(pixels[c] / sum((m != ignore).sum() for m in seen_in) if seen_in else np.nan)
    per_class_freq = np.array(per_class_freq)
    med = np.nanmedian(per_class_freq)
    mf = np.array([0.0 if np.isnan(f) else med / f for f in per_class_freq])
    enet = np.array([1 / np.log(1.02 + p) if p > 0 else 0.0 for p in freq_share])
    stacked = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    return {"share": freq_share, "images": [sum(int((m == c).any()) for m in masks) for c in range(num_classes)],
            "mf": mf, "enet": enet, "mean": stacked.mean(0), "std": stacked.std(0)}


def test_statistics_match_an_independent_numpy_computation(tmp_path):
    _clean_split(tmp_path / "train", n=6, seed=3)
    report = check_dataset(DataCfg(dataset="folder", root=str(tmp_path), num_classes=K), splits=["train"],
                           workers=0)
    assert report.ok
    got = report.to_dict()["splits"][0]
    want = _independent_stats(tmp_path / "train", K)
    classes = got["classes"]
    np.testing.assert_allclose([c["frequency"] for c in classes], want["share"], rtol=1e-12)
    assert [c["images"] for c in classes] == want["images"]
    np.testing.assert_allclose([c["weight_median_frequency"] for c in classes], want["mf"], rtol=1e-12)
    np.testing.assert_allclose([c["weight_inverse_log"] for c in classes], want["enet"], rtol=1e-12)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_allclose(got["std"], want["std"], rtol=1e-10)
    assert got["ignore_pixels"] == 6 * 3
    assert any("[4] never occur" in s for s in got["suggestions"])


def test_weight_formulas_on_published_style_values():
    # Two classes, 3:1 pixels, each in every image: freq = 0.75, 0.25 -> median 0.5 -> w = 2/3, 2.
    np.testing.assert_allclose(median_frequency_weights([300, 100], [400, 400]), [2 / 3, 2.0])
    # ENet bound: a vanishing class approaches 1/ln(1.02) = 50.498.
    assert abs(inverse_log_weights([1, 10**9])[0] - 50.498) < 1e-2


def test_thread_pool_gives_the_same_report_as_serial_reading(planted):
    cfg = DataCfg(dataset="folder", root=str(planted), num_classes=K)
    serial = check_dataset(cfg, workers=0).to_dict()
    assert check_dataset(cfg, workers=3).to_dict() == serial


def test_heuristics_reduce_zero_label_binary_255_and_colour_masks(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):  # ADE20K-style: 0 = other everywhere, classes 1..K
        mask = rng.integers(0, K + 1, (16, 16)).astype(np.uint8)
        mask[0, 0] = 0
        _save(tmp_path / "ade/train/images" / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        _save(tmp_path / "ade/train/masks" / f"{i}.png", mask)
        _save(tmp_path / "bin/train/images" / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        _save(tmp_path / "bin/train/masks" / f"{i}.png", (rng.random((16, 16)) < 0.3).astype(np.uint8) * 255)
        colours = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0]], np.uint8)
        _save(tmp_path / "rgb/train/images" / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        _save(tmp_path / "rgb/train/masks" / f"{i}.png", colours[rng.integers(0, 3, (16, 16))])
    hints, problems = {}, {}
    for name in ("ade", "bin", "rgb"):
        cfg = DataCfg(dataset="folder", root=str(tmp_path / name), num_classes=K if name == "ade" else 2)
        split = check_dataset(cfg, splits=["train"], workers=0).splits[0]
        hints[name] = " ".join(split.suggestions())
        problems[name] = " ".join(p.message for p in split.problems if p.severity == "error")
    assert "reduce_zero_label" in hints["ade"] and "0 and 255" not in hints["ade"]
    # 0/255 with ignore_index 255 is an error now (every foreground pixel would be ignored), not a hint
    assert "holds only 0 and 255" in problems["bin"] and "every foreground pixel would be ignored" in problems["bin"]
    assert "palette conversion" in hints["rgb"] and "3 distinct colour(s)" in hints["rgb"]
    assert "reduce_zero_label" not in hints["bin"] + hints["rgb"]


class _Protocol:
    """A reader that only follows the checker protocol: load, files, unmatched."""

    def __init__(self):
        self.masks = [np.zeros((8, 8), np.int64), np.full((8, 8), 9, np.int64)]

    def __len__(self):
        return 2

    def load(self, index):
        return np.zeros((8, 8, 3), np.uint8), self.masks[index]

    def files(self, index):
        return f"img/{index}.jpg", f"lbl/{index}.png"

    def unmatched(self):
        return {"images_without_mask": ["img/x.jpg"], "masks_without_image": []}


def test_other_readers_take_part_through_the_protocol(monkeypatch):
    monkeypatch.setitem(DATASETS, "protocol_only", lambda cfg, split, train, transform: _Protocol())
    report = check_dataset(DataCfg(dataset="protocol_only", num_classes=3), splits=["train"], workers=2)
    assert {(p.kind, p.path) for p in report.splits[0].problems} == {
        ("image_without_mask", "img/x.jpg"), ("label_out_of_range", "lbl/1.png")}
    assert report.splits[0].class_pixels.tolist() == [64, 0, 0]


def test_synthetic_default_checks_clean():
    report = check_dataset(DataCfg(train_samples=6, val_samples=3, crop_size=32), workers=0)
    assert report.ok and [s.pairs for s in report.splits] == [6, 3]
    assert all(s.class_pixels[0] > 0 for s in report.splits)


def test_cli_exit_codes_table_and_json(planted, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  dataset: folder\n  root: {planted}\n  num_classes: {K}\n"
                   f"train:\n  out_dir: {tmp_path / 'run'}\n")
    assert main(["check", str(cfg), "--split", "val", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "dataset OK" in out and "w medfreq" in out and (tmp_path / "run" / "check.json").is_file()
    assert main(["check", str(cfg), "--json", str(tmp_path / "r.json"), "--set", "data.num_classes=5"]) == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] is False and [s["split"] for s in data["splits"]] == ["train", "val"]
    assert "corrupt.png" in capsys.readouterr().out
    assert main(["check", str(cfg), "--set", "data.root=null"]) == 2  # a config error, not a data verdict


def test_workers_zero_reads_serially_without_a_pool(monkeypatch, tmp_path):
    def no_pool(*args, **kwargs):
        raise AssertionError("workers=0 must not start a pool")

    monkeypatch.setattr("pixelwise.data.check.ThreadPoolExecutor", no_pool)
    _clean_split(tmp_path / "train", n=2)
    cfg = DataCfg(dataset="folder", root=str(tmp_path), num_classes=K)
    assert check_dataset(cfg, splits=["train"], workers=0).splits[0].pairs == 2
    with pytest.raises(AssertionError, match="must not start a pool"):
        check_dataset(cfg, splits=["train"], workers=2)
