"""Every 2D architecture exports to ONNX and ONNX Runtime matches PyTorch (max abs diff < 1e-4)."""

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelwise import create_model
from pixelwise.models.enet import max_pool_with_indices
from test_models import TINY

ort = pytest.importorskip("onnxruntime")  # installed by `make test` (dev extra); never skipped there


@pytest.mark.parametrize("name", sorted(TINY))
def test_export_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **TINY[name]).eval()
    x = torch.randn(1, 3, 67, 93)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True)
    path = tmp_path / f"{name}.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert out.shape == expected.shape == (1, 3, 67, 93)
    assert np.abs(out - expected).max() < 1e-4


def test_enet_pool_indices_equal_max_pool2d():
    x = torch.randn(2, 3, 8, 12)
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = 5.0  # a tie: the first maximum in window order wins, as in max_pool2d
    values, indices = max_pool_with_indices(x)
    ref_values, ref_indices = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(values, ref_values) and torch.equal(indices, ref_indices)
