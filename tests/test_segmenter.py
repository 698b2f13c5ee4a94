"""Segmenter (load, call, save) and the `pixelwise predict` outputs."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

import pixelwise
from pixelwise import Segmenter, create_model
from pixelwise.cli import main
from pixelwise.data.io import default_palette, read_mask
from pixelwise.errors import DataError
from pixelwise.hub import save_model

MEAN, STD = [0.45, 0.5, 0.55], [0.2, 0.25, 0.3]
NAMES = ["background", "road", "car"]


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, base_channels=4, depth=2, norm="batch").eval()
    with torch.no_grad():  # a non-trivial head so several classes show up
        model.head[1].bias.copy_(torch.tensor([0.0, 0.3, -0.2]))
    folder = tmp_path / "model"
    save_model(model, folder, {"data": {"num_classes": 3, "class_names": NAMES, "ignore_index": 255,
                                        "mean": MEAN, "std": STD}})
    return folder


def _image(h=40, w=52, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference_probs(folder, image):
    """The model run by hand: numpy normalisation, a plain forward, softmax."""
    model = pixelwise.load(folder)
    x = (image.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    with torch.no_grad():
        logits = model(torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float32))
    return logits.softmax(1)[0].numpy()


def test_from_pretrained_matches_the_model_run_by_hand(model_dir):
    seg = Segmenter.from_pretrained(model_dir)
    image = _image()
    result = seg(image, return_probs=True)
    expected = _reference_probs(model_dir, image)
    assert result.labels.shape == (40, 52) and result.labels.dtype == np.int64
    assert result.probs.shape == (3, 40, 52) and result.probs.dtype == np.float32
    np.testing.assert_allclose(result.probs, expected, atol=1e-5)
    assert (result.labels == expected.argmax(0)).all()
    assert result.class_names == NAMES
    assert seg(image).probs is None
    assert "unet" in repr(seg)


def test_inputs_as_grey_array_pil_path_and_list(model_dir, tmp_path):
    seg = Segmenter.from_pretrained(model_dir)
    image = _image(32, 36, seed=3)
    grey = image[:, :, 0]
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    from_array = seg(image).labels
    np.testing.assert_array_equal(seg(Image.fromarray(image)).labels, from_array)
    np.testing.assert_array_equal(seg(str(path)).labels, from_array)
    np.testing.assert_array_equal(seg(path).labels, from_array)
    np.testing.assert_array_equal(seg(grey).labels, seg(np.stack([grey] * 3, axis=2)).labels)
    batch = seg([image, path, _image(20, 24)])
    assert isinstance(batch, list) and [r.labels.shape for r in batch] == [(32, 36), (32, 36), (20, 24)]
    with pytest.raises(DataError, match="float32"):
        seg(image.astype(np.float32))
    with pytest.raises(DataError, match="does not exist"):
        seg(tmp_path / "missing.png")


def test_result_helpers(model_dir):
    seg = Segmenter.from_pretrained(model_dir)
    image = _image()
    result = seg(image)
    areas = result.areas()
    assert list(areas) == NAMES and sum(areas.values()) == image.shape[0] * image.shape[1]
    for i, name in enumerate(NAMES):
        assert areas[name] == int((result.labels == i).sum())
    colors = result.colorize()
    palette = default_palette(256)
    assert colors.shape == (40, 52, 3)
    y, x = np.argwhere(result.labels == result.labels.max())[0]
    assert tuple(colors[y, x]) == tuple(palette[result.labels.max()])
    blended = result.overlay(image)
    background = result.labels == 0
    np.testing.assert_array_equal(blended[background], image[background])  # class 0 stays clear


def test_tiled_and_tta_calls_agree_with_whole_image(model_dir):
    seg = Segmenter.from_pretrained(model_dir)
    image = _image(64, 80)
    whole = seg(image, return_probs=True).probs
    tiled = seg(image, tile=48, overlap=0.5, return_probs=True).probs
    assert tiled.shape == whole.shape
    # a U-Net's receptive field crosses tile borders, so only the bulk agrees exactly
    assert (tiled.argmax(0) == whole.argmax(0)).mean() > 0.8
    flipped = seg(image, tta="flip", return_probs=True).probs
    np.testing.assert_allclose(flipped.sum(0), 1.0, atol=1e-5)
    mirrored = seg(np.ascontiguousarray(image[:, ::-1]), return_probs=True).probs[:, :, ::-1]
    np.testing.assert_allclose(flipped, (whole + mirrored) / 2, atol=1e-5)


def test_save_pretrained_round_trip_keeps_palette_tile_and_predictions(model_dir, tmp_path):
    seg = Segmenter.from_pretrained(model_dir, channels_last=True)
    seg.palette = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    seg.tile = 32
    out = seg.save_pretrained(tmp_path / "copy")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((out / "config.json").read_text())
    assert config["palette"] == [[0, 0, 0], [255, 0, 0], [0, 0, 255]] and config["tile"] == 32
    assert config["data"]["class_names"] == NAMES and config["model"]["name"] == "unet"
    assert "road" in (out / "README.md").read_text()
    again = Segmenter.from_pretrained(out)
    assert again.tile == 32 and again.palette.tolist() == seg.palette.tolist()
    image = _image(40, 40)
    np.testing.assert_array_equal(again(image).labels, seg(image, tile=32).labels)
    # the saved tile hint is used when no tile is passed
    np.testing.assert_array_equal(again(image).labels, again(image, tile=32).labels)


def test_bf16_segmenter_agrees_with_fp32(model_dir, real_bf16):
    image = _image(48, 48)
    fp32 = Segmenter.from_pretrained(model_dir)(image).labels
    bf16 = Segmenter.from_pretrained(model_dir, amp="bf16", channels_last=True)(image).labels
    assert (fp32 == bf16).mean() > 0.9


def _decode_competition_rle(text, shape):
    """Column-major, 1-based 'start length' pairs, decoded independently of pixelwise.data.rle."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    numbers = [int(v) for v in text.split()]
    for start, length in zip(numbers[::2], numbers[1::2]):
        flat[start - 1:start - 1 + length] = 1
    return flat.reshape(shape[1], shape[0]).T


def test_predict_cli_writes_every_format_and_skips_corrupt_files(model_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(_image(36, 44, seed=i)).save(images / f"img{i}.png")
    Image.fromarray(_image(36, 44, seed=5)).save(images / "photo.jpg", quality=95)
    # truncated files: half a PNG and half a JPEG
    (images / "cut.png").write_bytes((images / "img0.png").read_bytes()[:300])
    (images / "cut.jpg").write_bytes((images / "photo.jpg").read_bytes()[:600])
    out = tmp_path / "pred"
    code = main(["predict", str(model_dir), str(images), "--out", str(out), "--quiet", "--tile", "32",
                 "--tta", "flip", "--format", "png,color,overlay,coco-rle,csv-rle"])
    captured = capsys.readouterr()
    assert code == 0
    assert "wrote 3 prediction(s)" in captured.out and "skipped 2" in captured.out
    assert "cut.png" in captured.out + captured.err and "cut.jpg" in captured.out + captured.err
    seg = Segmenter.from_pretrained(model_dir)
    labels = {}
    for name in ("img0", "img1", "photo"):
        labels[name] = read_mask(out / f"{name}.png")
        suffix = ".jpg" if name == "photo" else ".png"
        np.testing.assert_array_equal(labels[name], seg(images / f"{name}{suffix}", tile=32, tta="flip").labels)
        assert np.array(Image.open(out / f"{name}_color.png")).shape == (36, 44, 3)
        assert np.array(Image.open(out / f"{name}_overlay.png")).shape == (36, 44, 3)
    assert not (out / "cut.png").exists()

    coco = json.loads((out / "predictions_coco.json").read_text())
    by_file = {}
    for entry in coco:
        assert entry["category_id"] in (1, 2) and entry["segmentation"]["size"] == [36, 44]
        assert 0 < entry["score"] <= 1
        by_file.setdefault(entry["file_name"], {})[entry["category_id"]] = mask_util.decode(
            {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"].encode()})
    assert set(by_file) == {"img0.png", "img1.png", "photo.jpg"}
    for file_name, masks in by_file.items():
        truth = labels[file_name.rsplit(".", 1)[0]]
        for c in (1, 2):
            expected = (truth == c).astype(np.uint8)
            np.testing.assert_array_equal(masks.get(c, np.zeros_like(expected)), expected)

    with open(out / "predictions_rle.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "ClassId", "EncodedPixels"] and len(rows) == 1 + 3 * 2
    for image_id, class_id, encoded in rows[1:]:
        truth = labels[image_id.rsplit(".", 1)[0]]
        np.testing.assert_array_equal(_decode_competition_rle(encoded, truth.shape), truth == int(class_id))


def test_predict_cli_rejects_unknown_formats_and_bad_scales(model_dir, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(_image(16, 16)).save(image)
    assert main(["predict", str(model_dir), str(image), "--out", str(tmp_path / "o"), "--format", "tiff"]) == 2
    assert main(["predict", str(model_dir), str(image), "--out", str(tmp_path / "o"), "--tta", "flip+scales",
                 "--scales", "1,x"]) == 2
    err = capsys.readouterr().err
    assert "tiff" in err and "--scales" in err
    assert main(["predict", str(model_dir), str(image), "--out", str(tmp_path / "o"), "--quiet",
                 "--tta", "flip+scales", "--scales", "0.5,1", "--format", "png"]) == 0
    assert [p.name for p in (tmp_path / "o").iterdir() if p.name != ".pixelwise-predict"] == ["a.png"]


def test_crf_switch_refines_the_probabilities_with_dense_crf(model_dir):
    from pixelwise.postprocess.crf import dense_crf

    seg = Segmenter.from_pretrained(model_dir)
    image = _image(24, 28)
    plain = seg(image, return_probs=True)
    refined = seg(image, crf=True, return_probs=True)
    expected = dense_crf(image, torch.from_numpy(plain.probs), iterations=5).numpy()
    np.testing.assert_allclose(refined.probs, expected, atol=1e-5)
    np.testing.assert_array_equal(refined.labels, expected.argmax(0))
    assert not np.allclose(refined.probs, plain.probs, atol=1e-3)


def test_onnxruntime_backend_exports_once_and_matches_torch(model_dir):
    pytest.importorskip("onnxruntime")  # installed by the dev extra; never skipped there
    image = _image(40, 56)
    expected = Segmenter.from_pretrained(model_dir)(image, tile=32, return_probs=True)
    seg = Segmenter.from_pretrained(model_dir, backend="onnxruntime")
    assert (model_dir / "model.onnx").is_file()
    got = seg(image, tile=32, return_probs=True)
    np.testing.assert_allclose(got.probs, expected.probs, atol=1e-4)
    stamp = (model_dir / "model.onnx").stat().st_mtime_ns
    Segmenter.from_pretrained(model_dir, backend="onnxruntime")
    assert (model_dir / "model.onnx").stat().st_mtime_ns == stamp  # reused, not exported again


def test_interrupted_predict_keeps_the_rle_files_of_finished_images(model_dir, tmp_path, monkeypatch):
    from pixelwise.infer.predict import predict_paths

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(_image(24, 24, seed=10 + i)).save(images / f"im{i}.png")
    real_call = Segmenter.__call__
    calls = []

    def interrupted(self, image, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_call(self, image, **kwargs)

    monkeypatch.setattr(Segmenter, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_paths(model_dir, [images], tmp_path / "out", formats="coco-rle,csv-rle", progress=False)
    coco = json.loads((tmp_path / "out" / "predictions_coco.json").read_text())
    assert coco and {e["file_name"] for e in coco} == {"im0.png"}
    with open(tmp_path / "out" / "predictions_rle.csv", newline="") as f:
        assert [row[:2] for row in csv.reader(f)] == [["ImageId", "ClassId"], ["im0.png", "1"], ["im0.png", "2"]]


def test_predict_skips_an_oversized_image_names_it_and_segments_the_rest(model_dir, tmp_path, monkeypatch):
    from pixelwise.infer.predict import predict_paths

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_image(24, 24, seed=1)).save(images / "a.png")
    Image.fromarray(_image(80, 80, seed=2)).save(images / "b_big.png")
    Image.fromarray(_image(24, 24, seed=3)).save(images / "c.png")
    monkeypatch.setenv("PIXELWISE_MAX_IMAGE_PIXELS", "1000")  # 80x80 is over, 24x24 under
    result = predict_paths(model_dir, [images], tmp_path / "out", formats="png", progress=False)
    assert result["written"] == ["a", "c"]
    [(path, reason)] = result["failed"]
    assert path.endswith("b_big.png") and "80x80 (6,400 pixels), more than the limit of 1,000" in reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".pixelwise-predict", "a.png", "c.png"]
