"""OpenVINO as an inference backend: fp32, bf16 and int8 (NNCF post-training quantisation).

OpenVINO's CPU plugin compiles a network for the CPU it runs on (oneDNN kernels for AVX2,
AVX-512, AVX512-BF16 and AMX, with its own graph fusions). It reads the ONNX file
:func:`pixelwise.export.onnx.export_onnx` writes, or its own IR (``model.xml`` + ``model.bin``)::

    model = OpenVinoModel("runs/demo/best", precision="bf16")   # model.xml, else model.onnx
    logits = model(torch.randn(1, 3, 512, 512))

Backends for :meth:`pixelwise.Segmenter.from_pretrained` and ``--backend`` in ``predict``/``serve``:

- ``openvino``: fp32, exact to ONNX Runtime's float error. OpenVINO would otherwise pick bf16 by
  itself on CPUs that have it, so the precision is always set explicitly.
- ``openvino-bf16``: bf16 inference precision; refused on a CPU without native bf16
  (AVX512-BF16 or AMX), where OpenVINO would emulate it slowly.
- ``openvino-int8``: ``model.int8.xml``, written by :func:`quantize_openvino`
  (``pixelwise export FOLDER --format openvino --int8 --calibrate IMAGES``) after an argmax
  agreement check against the fp32 network, as :func:`pixelwise.export.quantize.quantize_onnx` does.

``pixelwise export FOLDER --format openvino`` writes the fp32 IR ``model.xml``. The packages are
the ``[openvino]`` extra (openvino, and nncf for int8).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, PixelwiseError
from ..optional import require
from ..registry import BACKENDS, register
from .onnx import IMAGENET_MEAN, IMAGENET_STD, ensure_onnx
from .quantize import QuantReport, _as_input

IR_FILE, INT8_IR_FILE = "model.xml", "model.int8.xml"
PRECISIONS = ("f32", "bf16")


def _core():
    ov = require("openvino", "the openvino backend")
    return ov, ov.Core()


def cpu_has_bf16(core=None) -> bool:
    """Whether OpenVINO's CPU plugin reports native bf16 (AVX512-BF16 or AMX) on this machine."""
    if core is None:
        _, core = _core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _resolve(path_or_folder: str | Path, names: Sequence[str]) -> Path:
    path = Path(path_or_folder)
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise ConfigError(f"{str(path)!r} holds none of {', '.join(names)}; write one with `pixelwise export {path} "
                      f"--format openvino` (or --format onnx)")


class OpenVinoModel:
    """A network compiled by OpenVINO for this machine's CPU, called like a PyTorch model.

    ``model(x)``: float32 ``(N, C, H, W)`` -> logits ``(N, K, H, W)`` as a torch tensor on ``x``'s device.

    Args:
        path_or_model_folder: an ``.xml`` (IR) or ``.onnx`` file, or a model folder (``model.xml``,
            else ``model.onnx``).
        precision: ``"f32"`` or ``"bf16"`` (inference precision of the CPU plugin); ignored for
            an int8 IR, whose quantised layers run in int8 and the rest in fp32.
        threads: inference threads (None: OpenVINO's default, every core).
    """

    def __init__(self, path_or_model_folder: str | Path, *, precision: str = "f32", threads: int | None = None,
                 files: Sequence[str] = (IR_FILE, "model.onnx")) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
        ov, core = _core()
        if precision == "bf16" and not cpu_has_bf16(core):
            raise ConfigError("openvino bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has "
                              "neither, so OpenVINO would emulate it slowly: use the fp32 backend 'openvino' "
                              "(or 'openvino-int8')")
        self.path = _resolve(path_or_model_folder, files)
        self.precision = precision
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be >= 1 (or None for OpenVINO's default), got {threads}")
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.network = core.read_model(str(self.path))
        self.compiled = core.compile_model(self.network, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request: calls from several threads take turns
        shape = self.network.input(0).get_partial_shape()
        self.input_shape: list[Any] = [d.get_length() if d.is_static else "?" for d in shape]
        config_file = self.path.parent / "config.json"
        self.config: dict[str, Any] = json.loads(config_file.read_text()) if config_file.is_file() else {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        fixed = [(d, s) for d, s in zip(self.input_shape, x.shape) if isinstance(d, int) and d != s]
        if len(x.shape) != len(self.input_shape) or fixed:
            raise ConfigError(f"{self.path.name} takes inputs shaped {self.input_shape}, got {list(x.shape)}; "
                              f"re-export without --static for any size")
        array = np.ascontiguousarray(x.detach().cpu().numpy().astype(np.float32, copy=False))
        with self.lock:  # the result lives in the request's buffer until the next call: copy it out
            out = np.array(self.request.infer({0: array})[self.compiled.output(0)], copy=True)
        return torch.from_numpy(out).to(x.device)

    def eval(self) -> OpenVinoModel:
        """No-op, so code that calls ``model.eval()`` on a PyTorch model accepts this too."""
        return self

    def __repr__(self) -> str:
        return f"OpenVinoModel({str(self.path)!r}, precision={self.precision!r}, input={self.input_shape})"


def export_openvino(source: str | Path, path: str | Path) -> Path:
    """Convert an ONNX file to OpenVINO IR (``path``: ``.xml``, with its ``.bin``), weights kept fp32."""
    ov = require("openvino", "OpenVINO export")
    source, path = Path(source), Path(path)
    network = ov.Core().read_model(str(source))
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.xml")
    ov.save_model(network, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))  # weights first: the .xml makes the pair visible
    os.replace(tmp, path)
    return path


def quantize_openvino(source: str | Path, path: str | Path, calibration: Iterable[np.ndarray], *,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      check: Iterable[np.ndarray] | None = None, max_side: int | None = 512,
                      min_agreement: float = 0.995, verbose: bool = True) -> QuantReport:
    """Quantise an fp32 network (``.onnx`` or ``.xml``) to an int8 IR with NNCF and check it.

    NNCF's post-training quantisation (``nncf.quantize``, the default "performance" preset:
    symmetric int8 weights per output channel and activations per tensor, ranges from the
    calibration images) inserts FakeQuantize operations that OpenVINO's CPU plugin runs as int8
    convolutions. The argmax agreement with the fp32 network on ``check`` (default: the
    calibration images) must reach ``min_agreement``; otherwise the file is kept as
    ``NAME.rejected.xml`` for inspection, an older int8 file is removed, and the error says so.
    """
    ov, core = _core()
    nncf = require("nncf", "OpenVINO int8 quantisation")
    start = time.perf_counter()
    source, final = Path(source), Path(path)
    if not source.is_file():
        raise ConfigError(f"fp32 network {str(source)!r} does not exist; write it with `pixelwise export` first")
    network = core.read_model(str(source))
    shape = [d.get_length() if d.is_static else "?" for d in network.input(0).get_partial_shape()]
    inputs = [_as_input(im, np.float32, shape, mean, std, max_side) for im in calibration]
    if not inputs:
        raise ConfigError("quantize_openvino needs at least one calibration image (16-64 typical images)")
    checks = inputs if check is None else [_as_input(im, np.float32, shape, mean, std, max_side) for im in check]
    quantized = nncf.quantize(network, nncf.Dataset(inputs), subset_size=len(inputs))
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.unverified.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    fp32 = core.compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    int8 = core.compile_model(core.read_model(str(tmp)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    same = total = 0
    worst = 1.0
    for x in checks:
        a = np.asarray(fp32(x)[fp32.output(0)]).argmax(1)
        b = np.asarray(int8(x)[int8.output(0)]).argmax(1)
        equal = int((a == b).sum())
        same, total, worst = same + equal, total + a.size, min(worst, equal / a.size)
    del fp32, int8
    size = tmp.with_suffix(".bin").stat().st_size
    report = QuantReport(final, source, len(inputs), len(checks),
                         "calibration images" if check is None else "held-out images", same / total, worst,
                         source.with_suffix(".bin").stat().st_size if source.suffix == ".xml" else source.stat().st_size,
                         size, per_channel=True, reduce_range=False, seconds=time.perf_counter() - start,
                         notes=["OpenVINO IR quantised by NNCF (FakeQuantize, performance preset)"])
    if verbose:
        print(report.summary().replace("int8 QDQ", "int8 OpenVINO IR"))
    if report.agreement < min_agreement:
        rejected = final.with_name(final.stem + ".rejected.xml")
        os.replace(tmp.with_suffix(".bin"), rejected.with_suffix(".bin"))
        os.replace(tmp, rejected)
        final.unlink(missing_ok=True)
        final.with_suffix(".bin").unlink(missing_ok=True)
        raise PixelwiseError(f"OpenVINO int8 network agrees with fp32 on only {100 * report.agreement:.3f}% of "
                             f"pixels (min_agreement {100 * min_agreement:.3f}%), so it was not installed (kept as "
                             f"{rejected.name}); try more or more typical calibration images, or stay with fp32")
    os.replace(tmp.with_suffix(".bin"), final.with_suffix(".bin"))
    os.replace(tmp, final)
    return report


@register(BACKENDS, "openvino")
def openvino_backend(model: torch.nn.Module, folder: Path) -> OpenVinoModel:
    """The ``Segmenter`` backend ``"openvino"`` (fp32): ``model.xml``, else ``model.onnx`` (exported first)."""
    if not (Path(folder) / IR_FILE).is_file():
        ensure_onnx(model, folder)
    return OpenVinoModel(folder, precision="f32")


@register(BACKENDS, "openvino-bf16")
def openvino_bf16_backend(model: torch.nn.Module, folder: Path) -> OpenVinoModel:
    """The ``Segmenter`` backend ``"openvino-bf16"``: as ``openvino`` at bf16 inference precision."""
    if not (Path(folder) / IR_FILE).is_file():
        ensure_onnx(model, folder)
    return OpenVinoModel(folder, precision="bf16")


@register(BACKENDS, "openvino-int8")
def openvino_int8_backend(model: torch.nn.Module, folder: Path) -> OpenVinoModel:
    """The ``Segmenter`` backend ``"openvino-int8"``: ``model.int8.xml``, which needs calibration images
    and so is never written implicitly."""
    path = Path(folder) / INT8_IR_FILE
    if not path.is_file():
        raise ConfigError(f"backend='openvino-int8' needs {str(path)!r}; write it with `pixelwise export {folder} "
                          f"--format openvino --int8 --calibrate IMAGES` (16-64 images like the ones you will segment)")
    return OpenVinoModel(path, files=(INT8_IR_FILE,))
