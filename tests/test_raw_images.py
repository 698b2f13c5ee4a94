"""Images as they are stored (issue 19 item 1): 16-bit, float and N-channel images read with
``data.image_mode: raw``, normalised explicitly, checked, trained on, and carried into the model
folder so that predict and serve read them the same way."""

import io
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from pixelwise import config
from pixelwise.cli import main
from pixelwise.data import build_dataset, write_mask
from pixelwise.data.check import check_dataset
from pixelwise.data.intensity import Preprocess
from pixelwise.data.io import raw_to_rgb, read_image, read_raw_image
from pixelwise.errors import ConfigError, DataError
from pixelwise.infer.segmenter import Segmenter
from pixelwise.models import create_model

TINY_UNET = {"name": "unet", "args": {"base_channels": 8, "depth": 2, "norm": "batch"}}


# ---- reading -------------------------------------------------------------------------------


def test_16bit_tiff_and_png_keep_their_values(tmp_path):
    grey = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) % 236  # the nuclei case: values 0..235
    tifffile.imwrite(tmp_path / "a.tif", grey)
    Image.fromarray(grey).save(tmp_path / "a.png")
    for name in ("a.tif", "a.png"):
        got = read_raw_image(tmp_path / name)
        assert got.dtype == np.uint16 and got.shape == (40, 30, 1)
        np.testing.assert_array_equal(got[:, :, 0], grey)
    # RGB reading crushes the same file to the two levels the issue reported.
    assert set(np.unique(read_image(tmp_path / "a.tif"))) <= {0, 1}


def test_multichannel_tiff_npy_and_channel_order(tmp_path):
    rng = np.random.default_rng(0)
    five = rng.integers(0, 60000, (20, 24, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "five.tif", five)  # OpenCV would mangle this one (shape (24, 5))
    np.testing.assert_array_equal(read_raw_image(tmp_path / "five.tif"), five)
    planar = rng.integers(0, 255, (3, 20, 24), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="minisblack", planarconfig="separate")
    np.testing.assert_array_equal(read_raw_image(tmp_path / "planar.tif"), np.moveaxis(planar, 0, -1))
    floats = rng.normal(size=(20, 24, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", floats)
    np.testing.assert_array_equal(read_raw_image(tmp_path / "f.npy"), floats)
    rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_raw_image(tmp_path / "rgb.png"), rgb)  # RGB order, as PIL has it
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)


def test_bad_raw_images_name_the_file_and_the_fix(tmp_path):
    nan = np.ones((16, 16), np.float32)
    nan[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(DataError, match=r"nan\.npy.*1 NaN.*nan_to_num"):
        read_raw_image(tmp_path / "nan.npy")
    np.save(tmp_path / "chw.npy", np.zeros((4, 128, 128), np.uint16))
    with pytest.raises(DataError, match=r"chw\.npy.*channels-first.*moveaxis"):
        read_raw_image(tmp_path / "chw.npy")
    np.save(tmp_path / "obj.npy", np.array(["a", "b"]))
    with pytest.raises(DataError, match="obj.npy"):
        read_raw_image(tmp_path / "obj.npy")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8, 2), np.float32))
    with pytest.raises(DataError, match=r"f\.tif.*image_mode: raw"):
        raw_to_rgb(read_raw_image(tmp_path / "f.tif"), tmp_path / "f.tif")


# ---- normalisation -------------------------------------------------------------------------


def test_preprocess_modes_match_an_independent_computation():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4000, (30, 20, 3)).astype(np.uint16)
    x = image.astype(np.float64)
    mean, std = [100.0, 2000.0, 50.0], [10.0, 500.0, 5.0]
    dataset = Preprocess(image_mode="raw", mean=mean, std=std).array(image)
    for c in range(3):
        np.testing.assert_allclose(dataset[..., c], (x[..., c] - mean[c]) / std[c], rtol=1e-5)
    clipped = Preprocess(image_mode="raw", mean=mean, std=std, clip=[500, 3000]).array(image)
    np.testing.assert_allclose(clipped[..., 1], (np.clip(x[..., 1], 500, 3000) - 2000) / 500, rtol=1e-5)
    z = Preprocess(image_mode="raw", normalize="zscore").array(image)
    for c in range(3):
        np.testing.assert_allclose(z[..., c], (x[..., c] - x[..., c].mean()) / x[..., c].std(), atol=1e-5)
    mm = Preprocess(image_mode="raw", normalize="minmax", clip_percentiles=[5, 95]).array(image)
    for c in range(3):
        lo, hi = np.percentile(x[..., c], [5, 95])
        np.testing.assert_allclose(mm[..., c], (np.clip(x[..., c], lo, hi) - lo) / (hi - lo), atol=1e-5)
    rgb = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    got = Preprocess().array(rgb)
    np.testing.assert_allclose(got, (rgb / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], atol=1e-6)


def test_preprocess_refuses_what_would_train_wrongly():
    with pytest.raises(ConfigError, match="pixelwise check"):  # ImageNet statistics on 16-bit values
        Preprocess(image_mode="raw")
    with pytest.raises(ConfigError, match="image_mode: raw"):
        Preprocess(normalize="zscore")
    with pytest.raises(ConfigError, match="clip"):
        Preprocess(image_mode="raw", normalize="zscore", clip=[5, 1])
    with pytest.raises(ConfigError, match="in_channels"):
        config.from_dict({"model": {"in_channels": 4}, "data": {"image_mode": "raw", "mean": [1.0], "std": [1.0]}})
    with pytest.raises(ConfigError, match="data.image_mode"):
        config.from_dict({"data": {"image_mode": "16bit"}})
    with pytest.raises(DataError, match=r"3 channel\(s\) but this model takes 1"):
        Segmenter(create_model("unet", num_classes=2, in_channels=1, base_channels=4, depth=2), mean=[0.0], std=[1.0],
                  class_names=["a", "b"],
                  preprocessing=Preprocess(image_mode="raw", normalize="zscore")).preprocess(np.zeros((4, 4, 3)))


# ---- datasets: check, train, predict, serve ------------------------------------------------


def _blobs(rng, n, shape=(48, 48)):
    """Masks with one bright rectangle each (class 1) on background (class 0)."""
    masks = []
    for _ in range(n):
        mask = np.zeros(shape, np.uint8)
        y, x = rng.integers(4, shape[0] - 24, 2)
        h, w = rng.integers(10, 20, 2)
        mask[y:y + h, x:x + w] = 1
        masks.append(mask)
    return masks


def _tiff_dataset(root, n=8):
    """16-bit single-channel TIFFs, values ~0..600: the class is the intensity."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, mask in enumerate(_blobs(rng, n)):
            image = rng.normal(250, 40, mask.shape) + 220 * mask
            tifffile.imwrite(root / split / "images" / f"{i}.tif", np.clip(image, 0, None).astype(np.uint16))
            write_mask(root / split / "masks" / f"{i}.png", mask)


def _npy_dataset(root, n=8):
    """4-channel float NumPy images: channels 0-2 are noise, only channel 3 shows the class,
    each image with its own gain and offset (so per-image z-scoring is the right choice)."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, mask in enumerate(_blobs(rng, n)):
            image = rng.normal(0, 1, (*mask.shape, 4)).astype(np.float32)
            gain, offset = rng.uniform(0.5, 20), rng.uniform(-100, 100)
            image[..., 3] = (image[..., 3] * 0.5 + 3 * mask) * gain + offset
            np.save(root / split / "images" / f"{i}.npy", image)
            write_mask(root / split / "masks" / f"{i}.png", mask)


def _write_cfg(path, root, out, data_extra, in_channels):
    path.write_text(json.dumps({
        "model": {**TINY_UNET, "in_channels": in_channels},
        "data": {"dataset": "folder", "root": str(root), "num_classes": 2, "crop_size": 32, "augment": "standard",
                 "batch_size": 4, "class_names": ["background", "cell"], **data_extra},
        "train": {"epochs": 20, "lr": 0.01, "out_dir": str(out), "log_every": 5, "plots": False},
    }))  # JSON is YAML
    return path


def test_check_finds_the_crushed_16bit_images_and_measures_raw_statistics(tmp_path):
    root = tmp_path / "tif"
    _tiff_dataset(root, n=3)
    cfg = config.from_dict({"data": {"dataset": "folder", "root": str(root), "num_classes": 2}})
    report = check_dataset(cfg, workers=0)
    assert not report.ok
    assert {p.kind for p in report.splits[0].errors} == {"crushed_16bit"}
    assert "image_mode: raw" in report.splits[0].errors[0].message
    cfg.data.image_mode, cfg.model.in_channels = "raw", 1
    report = check_dataset(cfg, workers=0)
    assert report.ok, report.format()
    values = np.concatenate([tifffile.imread(p).ravel() for p in sorted((root / "train" / "images").iterdir())])
    raw = report.splits[0].to_dict(["background", "cell"])["raw"]
    assert raw["channels"] == 1 and raw["dtype"] == "uint16"
    np.testing.assert_allclose(raw["mean"], [values.mean()], rtol=1e-9)
    np.testing.assert_allclose(raw["std"], [values.std()], rtol=1e-9)
    assert raw["min"] == [values.min()] and raw["max"] == [values.max()]
    assert f"data.mean: [{values.mean():.6g}]" in report.format()
    # One image with another channel count is an error naming it.
    np.save(root / "train" / "images" / "0.npy", np.zeros((48, 48, 2), np.uint16))
    (root / "train" / "images" / "0.tif").unlink()
    report = check_dataset(cfg, workers=0)
    assert [p.kind for p in report.splits[0].errors] == ["channel_count"]


def _miou(out):
    return json.loads((out / "best" / "config.json").read_text())["scores"]["miou"]


@pytest.mark.timeout(900)
def test_trains_on_16bit_tiffs_with_checked_statistics_and_predicts_the_same_way(tmp_path, capsys):
    root, out = tmp_path / "tif", tmp_path / "run"
    _tiff_dataset(root)
    # The first hour as the docs tell it: check measures the statistics, the config records them.
    probe = _write_cfg(tmp_path / "probe.yaml", root, out, {"image_mode": "raw"}, 1)
    assert main(["check", str(probe), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    mean = float(printed.split("data.mean: [")[1].split("]")[0])
    std = float(printed.split("data.std: [")[1].split("]")[0])
    cfg = _write_cfg(tmp_path / "c.yaml", root, out, {"image_mode": "raw", "mean": [mean], "std": [std]}, 1)
    assert main(["train", str(cfg), "--quiet"]) == 0
    assert _miou(out) > 0.8
    saved = json.loads((out / "best" / "config.json").read_text())["data"]
    assert saved["image_mode"] == "raw" and saved["mean"] == [mean]
    # Predict reads the TIFF as stored and normalises it as in training.
    seg = Segmenter.from_pretrained(out / "best")
    assert seg.raw and seg.preprocessing.mean == (mean,)
    copy = seg.save_pretrained(tmp_path / "copy")  # the model card says how to prepare an image
    assert "stored pixel values" in (copy / "README.md").read_text() and f"{mean}" in (copy / "README.md").read_text()
    assert Segmenter.from_pretrained(copy).preprocessing == seg.preprocessing
    path = root / "val" / "images" / "0.tif"
    truth = np.asarray(Image.open(root / "val" / "masks" / "0.png"))
    labels = seg(path).labels
    assert ((labels == 1) & (truth == 1)).sum() / ((labels == 1) | (truth == 1)).sum() > 0.7
    assert main(["predict", str(out / "best"), str(root / "val" / "images"), "--out", str(tmp_path / "pred"),
                 "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pred" / "0.png")), labels)
    assert (tmp_path / "pred" / "0_overlay.png").is_file()


@pytest.mark.timeout(900)
def test_trains_on_4channel_numpy_images_and_serves_them(tmp_path):
    from fastapi.testclient import TestClient

    from pixelwise.serve import ServeLimits, create_app

    root, out = tmp_path / "npy", tmp_path / "run"
    _npy_dataset(root)
    cfg = _write_cfg(tmp_path / "c.yaml", root, out, {"image_mode": "raw", "normalize": "zscore"}, 4)
    assert main(["train", str(cfg), "--quiet"]) == 0
    assert _miou(out) > 0.8  # the class is only in channel 3: the fourth channel reached the network
    seg = Segmenter.from_pretrained(out / "best")
    image = np.load(root / "val" / "images" / "1.npy")
    expected = seg(image).labels
    client = TestClient(create_app(seg, ServeLimits()))
    buffer = io.BytesIO()
    np.save(buffer, image)
    resp = client.post("/v1/segment", files={"image": ("1.npy", buffer.getvalue(), "application/octet-stream")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["classes"][1]["pixels"] == int((expected == 1).sum())
    card = client.get("/v1/model").json()
    assert card["input"]["normalisation"]["image_mode"] == "raw" and "NPY" in card["input"]["formats"]
    # An RGB PNG sent to this 4-channel model is refused with the reason.
    png = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png, format="PNG")
    resp = client.post("/v1/segment", files={"image": ("x.png", png.getvalue(), "image/png")})
    assert resp.status_code in (400, 422) and "4" in resp.text


def test_raw_mode_on_a_reader_without_it_is_refused():
    cfg = config.from_dict({"data": {"dataset": "synthetic", "image_mode": "raw", "normalize": "zscore"}})
    with pytest.raises(ConfigError, match="folder"):
        build_dataset(cfg.data, "train", train=True)
