"""int8 ONNX (pixelwise.export.quantize, `pixelwise export --int8`, backend onnxruntime-int8).

The model is a small U-Net trained for a few dozen steps on the synthetic shapes, so its
argmax has real structure (a random network's near-constant logits make agreement trivial).
Agreement and file contents are checked with onnxruntime and onnx directly, not through
pixelwise.export.quantize's own report.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pixelwise import create_model
from pixelwise.cli import main
from pixelwise.data import SyntheticShapes, write_image
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.export.onnx import export_onnx
from pixelwise.export.quantize import quantize_onnx
from pixelwise.hub import save_model
from pixelwise.infer.segmenter import Segmenter

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(seed, n, size=64):
    data = SyntheticShapes(n, image_size=size, seed=seed)
    return [data.generate(i) for i in range(n)]


def _normalise(image):
    x = (image.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = create_model("unet", num_classes=5, base_channels=8, depth=3, norm="batch")
    train = _images(0, 64)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for step in range(150):  # ~10 s; pixel accuracy ~0.89 on held-out images
        batch = [train[(step * 8 + k) % len(train)] for k in range(8)]
        x = torch.stack([_normalise(im) for im, _ in batch])
        y = torch.stack([torch.from_numpy(m.astype(np.int64)) for _, m in batch])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    save_model(model, folder, {"data": {"num_classes": 5, "mean": list(MEAN), "std": list(STD)}})
    export_onnx(model, folder / "model.onnx", height=64, width=64, verbose=False)
    return model, folder


def _labels(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    return out if out.ndim == 3 else out.argmax(1)


def test_int8_file_is_quantised_smaller_and_agrees_on_held_out_images(trained, tmp_path, monkeypatch):
    model, folder = trained
    calibration, held_out = [im for im, _ in _images(5, 12)], _images(9, 6)
    monkeypatch.chdir(tmp_path)  # onnxruntime's shape tools can drop temp files in the working directory
    report = quantize_onnx(folder / "model.onnx", tmp_path / "m.int8.onnx", calibration,
                           check=[im for im, _ in held_out], mean=MEAN, std=STD, min_agreement=0.9, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]
    assert report.notes == []  # the graph pre-processing (Conv+BN fusion, shape inference) ran
    graph = onnx.load(str(tmp_path / "m.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10  # every convolution's weights are stored as int8
    assert report.int8_bytes < 0.5 * report.fp32_bytes

    # Independent agreement: fp32 file vs int8 file, and int8 file vs PyTorch, on the held-out images.
    same = total = 0
    correct_fp32 = correct_int8 = 0
    for image, mask in held_out:
        x = _normalise(image)[None].numpy()
        a, b = _labels(folder / "model.onnx", x), _labels(tmp_path / "m.int8.onnx", x)
        with torch.no_grad():
            torch_labels = model(torch.from_numpy(x)).argmax(1).numpy()
        assert (a == torch_labels).mean() > 0.999
        same, total = same + int((a == b).sum()), total + a.size
        correct_fp32 += int((a[0] == mask).sum())
        correct_int8 += int((b[0] == mask).sum())
    assert report.agreement == pytest.approx(same / total)
    assert report.checked_on == "held-out images" and report.check_images == 6
    assert same / total > 0.97
    # The trained model is right on most pixels, and int8 keeps (nearly all of) that accuracy.
    assert correct_fp32 / total > 0.7 and correct_int8 > 0.97 * correct_fp32


def test_pipeline_file_quantises_with_uint8_input(trained, tmp_path):
    model, _ = trained
    export_onnx(model, tmp_path / "pipeline.onnx", height=64, width=64, pipeline=True, mean=MEAN, std=STD,
                verbose=False)
    images = [im for im, _ in _images(3, 8)]
    report = quantize_onnx(tmp_path / "pipeline.onnx", tmp_path / "pipeline.int8.onnx", images, min_agreement=0.9,
                           verbose=False)
    batch = ort.InferenceSession(str(tmp_path / "pipeline.int8.onnx")).get_inputs()[0].shape[0]
    batch = batch if isinstance(batch, int) else 1  # a static export fixes the batch (the trace's 2)
    x = np.repeat(images[0][None], batch, axis=0)
    assert _labels(tmp_path / "pipeline.int8.onnx", x).shape == (batch, 64, 64)
    assert report.agreement > 0.97 and report.checked_on == "calibration images"


def test_bad_calibration_and_low_agreement_are_clear_errors(trained, tmp_path):
    _, folder = trained
    with pytest.raises(ConfigError, match="at least one calibration image"):
        quantize_onnx(folder / "model.onnx", tmp_path / "a.onnx", [], verbose=False)
    with pytest.raises(ConfigError, match="RGB uint8"):
        quantize_onnx(folder / "model.onnx", tmp_path / "a.onnx", [np.zeros((8, 8), np.float32)], verbose=False)
    with pytest.raises(ConfigError, match="does not exist"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "a.onnx", [np.zeros((8, 8, 3), np.uint8)], verbose=False)
    (tmp_path / "a.onnx").write_bytes(b"an int8 file made for an older fp32 file")
    with pytest.raises(PixelwiseError, match=r"not installed \(kept for inspection as a.rejected.onnx; the older"):
        quantize_onnx(folder / "model.onnx", tmp_path / "a.onnx", [im for im, _ in _images(5, 2)],
                      min_agreement=1.01, verbose=False)
    # Nothing unverified where a backend looks; the rejected file is kept under another name.
    assert not (tmp_path / "a.onnx").exists() and (tmp_path / "a.rejected.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.rejected.onnx"]


def test_cli_export_int8_and_predict_with_the_int8_backend(trained, tmp_path, capsys):
    model, folder = trained
    images = tmp_path / "images"
    for i, (image, _) in enumerate(_images(7, 6)):
        write_image(images / f"img{i}.png", image)
    with pytest.raises(ConfigError, match="pixelwise export .* --int8 --calibrate"):
        Segmenter.from_pretrained(folder, backend="onnxruntime-int8")
    assert main(["export", str(folder), "--height", "64", "--width", "64", "--int8", "--calibrate", str(images),
                 "--min-int8-agreement", "0.9"]) == 0
    assert "argmax agreement with the fp32 file" in capsys.readouterr().out
    assert (folder / "model.int8.onnx").is_file()
    seg = Segmenter.from_pretrained(folder, backend="onnxruntime-int8")
    image = _images(11, 1)[0][0]
    labels = seg(image).labels
    fp32 = Segmenter.from_pretrained(folder)(image).labels
    assert labels.shape == (64, 64) and (labels == fp32).mean() > 0.95
    out = tmp_path / "pred"
    assert main(["predict", str(folder), str(images / "img0.png"), "--out", str(out),
                 "--backend", "onnxruntime-int8"]) == 0
    assert (out / "img0.png").is_file()
    # A failed check leaves no int8 file for the backend to load, not even the earlier good one.
    assert main(["export", str(folder), "--height", "64", "--width", "64", "--int8", "--calibrate", str(images),
                 "--min-int8-agreement", "1.01"]) == 2
    assert "not installed" in capsys.readouterr().err and not (folder / "model.int8.onnx").exists()
    with pytest.raises(ConfigError, match="pixelwise export .* --int8 --calibrate"):
        Segmenter.from_pretrained(folder, backend="onnxruntime-int8")
    assert main(["export", str(folder), "--int8"]) == 2  # --calibrate missing: a clear error
    assert "--calibrate IMAGES" in capsys.readouterr().err
