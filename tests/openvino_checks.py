"""OpenVINO backends (pixelwise.export.openvino), run by tests/test_openvino.py in a child process:
fp32 against PyTorch, bf16 where the CPU has it (refused where it does not), int8 through NNCF with
its agreement checked by an independent OpenVINO computation, and the CLI (`export --format openvino
[--int8]`, `predict --backend`).
Every socket is blocked: neither OpenVINO nor NNCF may reach the network (telemetry included)."""

import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from pixelwise import create_model
from pixelwise.cli import main
from pixelwise.data import SyntheticShapes, write_image
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.hub import save_model
from pixelwise.infer.segmenter import Segmenter

ov = pytest.importorskip("openvino", reason="openvino (the openvino extra, in dev) runs the backend")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def offline(no_network):
    yield
    assert no_network == [], f"something tried to reach the network: {no_network}"


def _images(seed, n, size=48):
    data = SyntheticShapes(n, image_size=size, seed=seed)
    return [data.generate(i) for i in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small U-Net trained briefly on the synthetic shapes, so its argmax has structure."""
    folder = tmp_path_factory.mktemp("ov") / "model"
    torch.manual_seed(0)
    model = create_model("unet", num_classes=5, base_channels=6, depth=2, norm="batch")
    train = _images(0, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    norm = lambda im: torch.from_numpy(((im / 255.0 - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)
                                       .transpose(2, 0, 1).copy())  # noqa: E731
    model.train()
    for step in range(60):
        batch = [train[(step * 8 + k) % len(train)] for k in range(8)]
        loss = torch.nn.functional.cross_entropy(model(torch.stack([norm(im) for im, _ in batch])),
                                                 torch.stack([torch.from_numpy(m.astype(np.int64)) for _, m in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    save_model(model, folder, {"data": {"num_classes": 5, "mean": list(MEAN), "std": list(STD),
                                        "class_names": [f"c{i}" for i in range(5)]}})
    return folder


def _copy(folder, tmp_path):
    target = tmp_path / "m"
    shutil.copytree(folder, target)
    return target


def test_fp32_backend_matches_pytorch_at_odd_sizes(trained, tmp_path):
    folder = _copy(trained, tmp_path)
    eager = Segmenter.from_pretrained(folder)
    seg = Segmenter.from_pretrained(folder, backend="openvino")
    assert (folder / "model.onnx").is_file()  # exported on first use, as the onnxruntime backend does
    for h, w in ((48, 48), (37, 53)):
        image = _images(7, 1, size=max(h, w))[0][0][:h, :w]
        a, b = eager(image, return_probs=True), seg(image, return_probs=True)
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-4)
        assert np.array_equal(a.labels, b.labels)


def test_bf16_backend_agrees_where_the_cpu_has_bf16_and_is_refused_elsewhere(trained, tmp_path, monkeypatch):
    from pixelwise.export import openvino as ovb

    folder = _copy(trained, tmp_path)
    image = _images(8, 1)[0][0]
    eager = Segmenter.from_pretrained(folder)(image, return_probs=True)
    if ovb.cpu_has_bf16():
        got = Segmenter.from_pretrained(folder, backend="openvino-bf16")(image, return_probs=True)
        assert np.abs(got.probs - eager.probs).max() < 0.1
        assert (got.labels == eager.labels).mean() > 0.97
    monkeypatch.setattr(ovb, "cpu_has_bf16", lambda core=None: False)
    with pytest.raises(ConfigError, match="native bf16"):
        Segmenter.from_pretrained(folder, backend="openvino-bf16")


def test_cli_export_int8_and_predict(trained, tmp_path, capsys):
    from pixelwise.export.openvino import OpenVinoModel

    folder = _copy(trained, tmp_path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, (image, _) in enumerate(_images(1, 12)):
        write_image(calib / f"{i}.png", image)
    assert main(["export", str(folder), "--format", "openvino", "--height", "48", "--width", "48"]) == 0
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    with pytest.raises(ConfigError, match="model.int8.xml"):
        Segmenter.from_pretrained(folder, backend="openvino-int8")
    assert main(["export", str(folder), "--format", "openvino", "--height", "48", "--width", "48", "--int8",
                 "--calibrate", str(calib), "--min-int8-agreement", "0.9"]) == 0
    out = capsys.readouterr().out
    int8 = folder / "model.int8.xml"
    assert int8.is_file() and "argmax agreement" in out
    kinds = {layer.get("type") for layer in ET.parse(int8).getroot().iter("layer")}
    assert "FakeQuantize" in kinds or "FakeConvert" in kinds  # NNCF's quantisers are in the graph
    assert int8.with_suffix(".bin").stat().st_size < 0.6 * (folder / "model.bin").stat().st_size  # int8 weights
    # The report's agreement, recomputed here with OpenVINO directly.
    fp32, q = OpenVinoModel(folder / "model.xml"), OpenVinoModel(int8, files=("model.int8.xml",))
    same = total = 0
    for image, _ in _images(1, 12):
        x = torch.from_numpy(((image / 255.0 - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)
                             .transpose(2, 0, 1)[None].copy())
        a, b = fp32(x).argmax(1), q(x).argmax(1)
        same, total = same + int((a == b).sum()), total + a.numel()
    reported = float(out.split("argmax agreement with the fp32 file on 12 calibration images: ")[1].split("%")[0])
    assert reported == pytest.approx(100 * same / total, abs=1e-3)
    assert same / total > 0.9
    image = tmp_path / "a.png"
    write_image(image, _images(3, 1)[0][0])
    assert main(["predict", str(folder), str(image), "--out", str(tmp_path / "pred"), "--quiet",
                 "--backend", "openvino-int8", "--format", "png"]) == 0
    labels = Segmenter.from_pretrained(folder, backend="openvino-int8")(str(image)).labels
    eager = Segmenter.from_pretrained(folder)(str(image)).labels
    assert (labels == eager).mean() > 0.9


def test_a_rejected_int8_network_is_not_installed(trained, tmp_path):
    from pixelwise.export.openvino import export_openvino, quantize_openvino

    folder = _copy(trained, tmp_path)
    Segmenter.from_pretrained(folder, backend="openvino")  # writes model.onnx
    export_openvino(folder / "model.onnx", folder / "model.xml")
    with pytest.raises(PixelwiseError, match="not installed"):
        quantize_openvino(folder / "model.xml", folder / "model.int8.xml", [im for im, _ in _images(2, 4)],
                          mean=MEAN, std=STD, min_agreement=1.01, verbose=False)
    assert not (folder / "model.int8.xml").exists() and (folder / "model.int8.rejected.xml").is_file()
