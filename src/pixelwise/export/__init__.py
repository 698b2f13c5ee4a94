"""Export for every task: ONNX and TorchScript (:mod:`.onnx`), int8 (:mod:`.quantize`), runtime
backends (:mod:`.backends`), OpenVINO (:mod:`.openvino`), Mask R-CNN (:mod:`.instance`).
Importing it registers each task's exporter (``Task.exporter``) and the ``Segmenter`` backends ``onnxruntime``, ``onnxruntime-int8``,
``openvino``, ``openvino-bf16`` and ``openvino-int8``."""

from . import instance as _instance  # noqa: F401 - registers the instance task's exporter
from . import openvino as _openvino  # noqa: F401 - registers the openvino backends
from .backends import OnnxRuntimeModel
from .onnx import IMAGENET_MEAN, IMAGENET_STD, ExportReport, export_onnx, export_torchscript
from .quantize import INT8_FILE, quantize_onnx

__all__ = ["ExportReport", "IMAGENET_MEAN", "IMAGENET_STD", "INT8_FILE", "OnnxRuntimeModel", "export_onnx",
           "export_torchscript", "quantize_onnx"]
