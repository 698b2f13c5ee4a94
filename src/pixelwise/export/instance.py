"""ONNX export of an instance model's inference graph, with a parity check in ONNX Runtime.

What exports (measured with torch 2.14 / torchvision 0.29, see docs/instance.md):

- the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), opset 17 or 18:
  the whole detector exports — normalisation, resize, backbone + FPN, RPN with NMS, RoIAlign,
  box and mask heads, and the paste of the 28×28 masks into the image — and ONNX Runtime
  reproduces the PyTorch outputs to ~1e-5. The graph is traced at one image size: give
  images of that size (the detector's own resize happens inside the graph).
- the dynamo exporter (``dynamo=True``) does not: ``torch.export`` stops in torchvision's
  ``batched_nms`` (``ops/boxes.py``), which picks an algorithm from ``boxes.numel() > 4000``,
  a branch on a data-dependent size that cannot be traced.

The exported function takes one ``(C, H, W)`` float image in 0..1 and returns
``boxes (D, 4)``, ``labels (D,)``, ``scores (D,)``, ``masks (D, 1, H, W)`` probabilities.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..optional import require
from ..registry import EXPORTERS, register

__all__ = ["InstanceInference", "export_instance_onnx"]


class InstanceInference(nn.Module):
    """Tensor-in, tensors-out wrapper of a :class:`pixelwise.models.maskrcnn.MaskRCNN` for export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.detector = model.detector

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.detector([image])[0]
        return out["boxes"], out["labels"], out["scores"], out["masks"]


@register(EXPORTERS, "instance")
def export_instance_onnx(model: nn.Module, path: str | Path, *, height: int, width: int, opset: int = 17,
                         check: bool = True, atol: float = 1e-3, seed: int = 0) -> dict:
    """Export ``model`` (eval mode) to ONNX for ``(3, height, width)`` images; optionally check parity.

    The check feeds a random image to PyTorch and ONNX Runtime and compares every output
    (same number of detections, then the largest absolute difference). A random image
    gives detections only from a trained model or a zero ``box_score_thresh``; the check
    still compares whatever comes out (possibly nothing).

    Returns ``{"path", "opset", "max_abs_diff", "detections"}`` (the last two when checked).
    Raises ``ConfigError`` when ONNX Runtime disagrees by more than ``atol``.
    """
    if opset < 11:
        raise ConfigError(f"opset {opset} is too old for Mask R-CNN's ops (RoIAlign, NMS); use 17 or 18")
    wrapper = InstanceInference(model).eval()
    channels = model.config["in_channels"]
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand(channels, height, width, generator=generator)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in torchvision
        torch.onnx.export(wrapper, (example,), str(path), opset_version=opset, dynamo=False,
                          input_names=["image"], output_names=["boxes", "labels", "scores", "masks"],
                          dynamic_axes={"boxes": {0: "detections"}, "labels": {0: "detections"},
                                        "scores": {0: "detections"}, "masks": {0: "detections"}})
    result: dict = {"path": str(path), "opset": opset}
    if not check:
        return result
    ort = require("onnxruntime", "the ONNX parity check")

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the mask paste loop makes ORT warn about shapes it cannot know
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    probe = torch.rand(channels, height, width, generator=generator)
    with torch.no_grad():
        reference = [t.float().numpy() for t in wrapper(probe)]
    outputs = session.run(None, {"image": probe.numpy()})
    diff = 0.0
    for name, ref, got in zip(("boxes", "labels", "scores", "masks"), reference, outputs):
        if ref.shape != got.shape:
            raise ConfigError(f"ONNX export {str(path)!r}: {name} has shape {got.shape} in ONNX Runtime but "
                              f"{ref.shape} in PyTorch; export at the image size you will run")
        if ref.size:
            diff = max(diff, float(np.abs(ref - got.astype(np.float32)).max()))
    if diff > atol:
        raise ConfigError(f"ONNX export {str(path)!r} differs from PyTorch by {diff:.3g} (> atol {atol}); "
                          f"try opset 18 or keep the PyTorch model")
    result.update(max_abs_diff=diff, detections=int(reference[0].shape[0]))
    return result
