"""Export for every task: ONNX and TorchScript (:mod:`.onnx`), int8 (:mod:`.quantize`), runtime
backends (:mod:`.backends`), Mask R-CNN (:mod:`.instance`). Importing it registers the
``Segmenter`` backends ``onnxruntime`` and ``onnxruntime-int8``."""

from .backends import OnnxRuntimeModel
from .onnx import IMAGENET_MEAN, IMAGENET_STD, ExportReport, export_onnx, export_torchscript
from .quantize import INT8_FILE, quantize_onnx

__all__ = ["ExportReport", "IMAGENET_MEAN", "IMAGENET_STD", "INT8_FILE", "OnnxRuntimeModel", "export_onnx",
           "export_torchscript", "quantize_onnx"]
