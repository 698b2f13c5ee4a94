"""ONNX / TorchScript export: dynamic axes, pipeline files, parity report, CLI, OnnxRuntimeModel.

Every comparison here runs the exported file directly (onnxruntime / torch.jit.load) and
PyTorch eager on the original model, independently of export.py's own parity check.
"""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pixelwise import create_model
from pixelwise.cli import main
from pixelwise.errors import ConfigError, PixelwiseError
from pixelwise.export.backends import OnnxRuntimeModel
from pixelwise.export.onnx import export_onnx, export_torchscript, stride_of
from pixelwise.hub import save_model
from pixelwise.infer.runtime import normalize

REPRESENTATIVE = {  # tiny members of three decoder families: skip-concat, ASPP + low-level fusion, score fusion
    "unet": {"base_channels": 4, "depth": 3},
    "deeplabv3plus": {"encoder": "test_efficientnet"},
    "fcn8s": {"encoder": "test_resnet", "fc_channels": 16},
    # pyramid pooling: its bins (1, 2, 3, 6) divide few map sizes, so a kernel fixed at the trace breaks
    "pspnet": {"encoder": "resnet18"},
}
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tiny(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **REPRESENTATIVE[name]).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding them is exercised
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, nn.Conv2d):
                # He init, no bias: with the default init a classifier bias (or FCN's zero score
                # layers) makes every pixel the same class, and argmax agreement trivially 100 %.
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Even so, ReLU features are positive and one class wins everywhere; centring the
        # classifier's output on a calibration batch makes the argmax vary over the image.
        classifier = model.head[-1] if isinstance(model.head, nn.Sequential) else None
        if isinstance(classifier, nn.Conv2d):
            classifier.bias -= model(torch.randn(2, 3, 64, 64)).mean((0, 2, 3))
    return model


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def unet_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unet")
    model = tiny("unet")
    save_model(model, folder, {"data": {"num_classes": 3, "mean": list(MEAN), "std": list(STD)}})
    report = export_onnx(model, folder / "model.onnx", height=40, width=48, verbose=False)
    return model, folder, report


@pytest.mark.parametrize("name", sorted(REPRESENTATIVE))
def test_dynamic_onnx_matches_pytorch_at_other_sizes_and_batches(name, tmp_path, unet_export):
    if name == "unet":
        model, folder, report = unet_export
        path = folder / "model.onnx"
    else:
        model, path = tiny(name), tmp_path / f"{name}.onnx"
        report = export_onnx(model, path, height=64, width=64, verbose=False)
    assert report.dynamic and report.note == ""
    assert report.stride == model.pad_multiple
    assert report.agreement == 1.0 and report.max_abs_diff < 1e-4 and len(report.checks) == 3
    assert len({c.shape for c in report.checks}) == 3  # three sizes checked at export, odd ones included
    # sizes the trace never saw, including ones that need padding and the smallest allowed
    for shape in [(1, 3, 64, 64), (3, 3, 37, 71), (2, 3, report.min_size, report.min_size + 5)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        out = run_onnx(path, x)
        assert out.shape == expected.shape == (shape[0], 3, *shape[2:])
        assert np.abs(out - expected).max() < 1e-4
        # FCN's score layers cannot be centred like a classifier bias; shift both alike instead
        shift = expected.mean((0, 2, 3), keepdims=True)
        assert len(np.unique((expected - shift).argmax(1))) >= 2  # so the next line means something
        assert ((out - shift).argmax(1) == (expected - shift).argmax(1)).all()


def test_onnx_file_names_its_axes(unet_export):
    _, folder, report = unet_export
    graph = onnx.load(str(folder / "model.onnx")).graph
    (inp,), (out,) = graph.input, graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and out.name == "logits"
    assert dims == ["batch", 3, "height", "width"] == list(report.input_shape)
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]


def pixelwise_labels(model, images):
    """pixelwise's own preprocessing (infer.runtime.normalize) + argmax, image by image."""
    with torch.no_grad():
        return torch.stack([model(normalize(im, MEAN, STD)[None])[0].argmax(0) for im in images]).numpy()


def test_torchscript_matches_pytorch_and_pipeline_nchw(tmp_path):
    model = tiny("unet")
    report = export_torchscript(model, tmp_path / "m.pt", height=48, width=48, verbose=False)
    assert report.format == "torchscript" and report.agreement == 1.0 and report.max_abs_diff < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(3, 3, 45, 70)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() < 1e-4

    export_torchscript(model, tmp_path / "p.pt", height=48, width=48, pipeline=True, mean=MEAN, std=STD,
                       layout="nchw", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = torch.jit.load(str(tmp_path / "p.pt"))
    images = np.random.default_rng(1).integers(0, 256, (2, 50, 33, 3), dtype=np.uint8)
    with torch.no_grad():
        labels = pipe(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
    expected = pixelwise_labels(model, images)
    assert len(np.unique(expected)) >= 2 and (labels == expected).all()


def test_stride_of_models_that_hard_code_their_padding():
    assert stride_of(create_model("segnet", num_classes=2)) == (32, "constant")
    assert stride_of(create_model("enet", num_classes=2)) == (8, "replicate")


class SwitchesAfterFirstCall(nn.Module):
    """Returns +conv the first time (the trace) and -conv afterwards: an export that cannot match."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x) if self.calls == 1 else -self.conv(x)


def test_parity_check_rejects_a_wrong_export(tmp_path):
    with pytest.raises(PixelwiseError, match="argmax agreement"):
        export_torchscript(SwitchesAfterFirstCall(), tmp_path / "bad.pt", height=16, width=16, verbose=False)


class FixedSize(nn.Module):
    """Only works at 24x24: its reshape hard-codes the spatial size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(y.shape[0], 2, 24 * 24).reshape(y.shape[0], 2, 24, 24)


def test_model_that_cannot_be_dynamic_falls_back_to_static_and_says_so(tmp_path):
    with pytest.warns(UserWarning, match="dynamic export failed"):
        report = export_onnx(FixedSize().eval(), tmp_path / "fixed.onnx", height=24, width=24, verbose=False)
    assert not report.dynamic and "static 24x24" in report.note
    assert report.input_shape == (2, 3, 24, 24) and len(report.checks) == 1 and report.agreement == 1.0
    runner = OnnxRuntimeModel(tmp_path / "fixed.onnx")
    assert not runner.dynamic
    with pytest.raises(ConfigError, match="static input shape"):
        runner(torch.randn(2, 3, 32, 24))


def test_segformer_exports_dynamically_above_its_attention_minimum(tmp_path):
    """SegFormer's key/value reductions keep 2x2 tokens from 61 px up: the dynamic file declares that
    minimum and matches PyTorch at sizes the trace never saw, odd ones included."""
    torch.manual_seed(0)
    model = create_model("segformer", num_classes=3, encoder="mit_b0", decoder_channels=32).eval()
    report = export_onnx(model, tmp_path / "segformer.onnx", height=64, width=64, verbose=False)
    assert report.dynamic and report.note == "" and report.min_size == 61
    for shape in [(1, 3, 61, 90), (2, 3, 67, 93), (1, 3, 128, 96)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        out = run_onnx(tmp_path / "segformer.onnx", x)
        assert out.shape == expected.shape and np.abs(out - expected).max() < 1e-4
    with pytest.raises(ConfigError, match=">= 61"):
        export_onnx(model, tmp_path / "small.onnx", height=48, width=64, verbose=False)


def test_dynamic_export_refuses_a_trace_size_below_the_stride(tmp_path):
    with pytest.raises(ConfigError, match=">= 9"):
        export_onnx(tiny("unet"), tmp_path / "x.onnx", height=8, width=64, verbose=False)


def test_onnxruntime_model_from_a_saved_folder(unet_export):
    model, folder, _ = unet_export
    runner = OnnxRuntimeModel(folder, threads=1)
    assert runner.dynamic and runner.config["data"]["mean"] == list(MEAN)
    assert runner.eval() is runner
    x = torch.randn(2, 3, 30, 44)
    out = runner(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    with torch.no_grad():
        assert (out - model(x)).abs().max() < 1e-4


def test_onnxruntime_model_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="pixelwise export"):
        OnnxRuntimeModel(tmp_path)  # a folder without model.onnx
    with pytest.raises(ConfigError, match="does not exist"):
        OnnxRuntimeModel(tmp_path / "missing.onnx")


def test_onnxruntime_model_refuses_unavailable_providers(unet_export):
    _, folder, _ = unet_export
    with pytest.raises(ConfigError, match="not available"):
        OnnxRuntimeModel(folder, providers=["NoSuchExecutionProvider"])


def test_cli_pipeline_export_takes_uint8_and_returns_pixelwise_labels(unet_export, tmp_path, capsys):
    model, folder, _ = unet_export
    out = tmp_path / "cli" / "pipe.onnx"
    assert main(["export", str(folder), "--out", str(out), "--height", "40", "--width", "40", "--pipeline"]) == 0
    printed = capsys.readouterr().out
    assert "argmax agreement 100.0000%" in printed and "n/a (labels only)" in printed and str(out) in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_outputs()[0].name == "labels"
    images = np.random.default_rng(2).integers(0, 256, (2, 41, 27, 3), dtype=np.uint8)
    labels = session.run(None, {"image": images})[0]
    assert labels.dtype == np.int64 and labels.shape == (2, 41, 27)
    expected = pixelwise_labels(model, images)
    assert len(np.unique(expected)) >= 2 and (labels == expected).all()  # mean/std came from config.json
    assert (OnnxRuntimeModel(out)(torch.from_numpy(images)).numpy() == labels).all()


def test_cli_export_errors_exit_2(unet_export, tmp_path, capsys):
    _, folder, _ = unet_export
    assert main(["export", str(tmp_path / "nope")]) == 2
    assert "not a saved pixelwise model" in capsys.readouterr().err
    assert main(["export", str(folder), "--format", "torchscript", "--opset", "17"]) == 2
    assert "--opset applies to --format onnx only" in capsys.readouterr().err
