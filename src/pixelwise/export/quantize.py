"""int8 ONNX: static post-training quantisation with calibration images and an agreement check.

On CPUs without native bf16 (AVX2-only x86, most laptops and many cloud VMs) an fp32 network
is limited by the fp32 multiply-add rate, and ONNX Runtime already runs close to it. Eight-bit
integer convolutions do about twice the arithmetic per instruction, so ::

    quantize_onnx("model.onnx", "model.int8.onnx", calibration=[rgb_uint8, ...], mean=..., std=...)

turns an fp32 file written by :func:`pixelwise.export.onnx.export_onnx` into one whose convolutions
(and matrix products) run in int8 with ONNX Runtime's QDQ format: weights symmetric per
output channel (7-bit by default, see ``reduce_range``), activations asymmetric uint8 per
tensor, activation ranges from the min/max seen on the calibration images
(``onnxruntime.quantization.quantize_static``). The result is checked against the fp32 file
on ``check`` images (default: the calibration images): the fraction of pixels whose
predicted class is the same, and an error below ``min_agreement``. Only a file that passed
is put where the backends look; a rejected one is kept as ``NAME.rejected.onnx`` and an
older int8 file at the destination is removed, since it was made from another fp32 file.

Calibration images must look like what the model will see: ranges measured on random noise
clip real activations. 16-64 images are usually enough. Images are fed one at a time at
their own size (dynamic files) with the longer side reduced to ``max_side``.

``pixelwise export CHECKPOINT --int8 --calibrate IMAGES...`` writes ``model.int8.onnx`` beside
``model.onnx``; ``--backend onnxruntime-int8`` in ``predict``/``serve`` (and
``Segmenter.from_pretrained(..., backend="onnxruntime-int8")``) runs it.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, PixelwiseError
from ..optional import require
from ..registry import BACKENDS, register
from .backends import OnnxRuntimeModel
from .onnx import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["INT8_FILE", "QuantReport", "quantize_onnx"]

INT8_FILE = "model.int8.onnx"


@dataclass
class QuantReport:
    """What :func:`quantize_onnx` wrote and how closely it follows the fp32 file."""

    path: Path
    source: Path
    calibration_images: int
    check_images: int
    checked_on: str  # "calibration images" or "held-out images"
    agreement: float  # pixels with the same predicted class, over all check images
    worst_image_agreement: float
    fp32_bytes: int
    int8_bytes: int
    per_channel: bool
    reduce_range: bool
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.path} (int8 QDQ, weights per-{'channel' if self.per_channel else 'tensor'}"
                 f"{', 7-bit (reduce_range)' if self.reduce_range else ''}; {self.int8_bytes / 2**20:.1f} MiB vs "
                 f"{self.fp32_bytes / 2**20:.1f} MiB fp32; {self.calibration_images} calibration images; "
                 f"{self.seconds:.1f} s)",
                 f"  argmax agreement with the fp32 file on {self.check_images} {self.checked_on}: "
                 f"{100 * self.agreement:.3f}% (worst image {100 * self.worst_image_agreement:.3f}%)"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _input_spec(path: Path) -> tuple[str, np.dtype, list]:
    ort = require("onnxruntime", "int8 quantisation")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    return inp.name, (np.uint8 if inp.type == "tensor(uint8)" else np.float32), list(inp.shape)


def _as_input(image: np.ndarray, dtype: np.dtype, shape: list, mean: Sequence[float], std: Sequence[float],
              max_side: int | None) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` image -> the file's input: normalised float ``(1, 3, H, W)``, or
    uint8 ``(1, H, W, 3)`` / ``(1, 3, H, W)`` for a pipeline file; resized to a static file's size."""
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"calibration/check images must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    nhwc = dtype == np.uint8 and shape[-1] == 3
    static = all(isinstance(d, int) for d in shape)
    if static:
        h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    elif max_side and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # A static file also fixes the batch size (export_onnx traces with 2): repeat the image.
    batch = shape[0] if isinstance(shape[0], int) else 1
    if dtype == np.uint8:
        x = image[None] if nhwc else image.transpose(2, 0, 1)[None]
    else:
        x = ((image.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(np.repeat(x, batch, axis=0))


def _labels(session, name: str, x: np.ndarray) -> np.ndarray:
    out = session.run(None, {name: x})[0]
    return out if out.dtype == np.int64 and out.ndim == 3 else out.argmax(1)


def quantize_onnx(source: str | Path, path: str | Path, calibration: Iterable[np.ndarray], *,
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  check: Iterable[np.ndarray] | None = None, per_channel: bool = True, reduce_range: bool = True,
                  max_side: int | None = 512, min_agreement: float = 0.995, verbose: bool = True) -> QuantReport:
    """Quantise an fp32 ONNX segmentation file to int8 and check it against the fp32 file.

    Args:
        source: an fp32 ``.onnx`` written by :func:`pixelwise.export.onnx.export_onnx` (plain or pipeline).
        path: the int8 file to write.
        calibration: RGB uint8 ``(H, W, 3)`` images like the ones the model will see.
        mean, std: the model's normalisation on the 0..1 scale (ignored for a pipeline file,
            which normalises inside).
        check: images for the agreement check; default the calibration images.
        per_channel: one weight scale per output channel (much more accurate for convolutions).
        reduce_range: 7-bit weights (default). Without VNNI instructions (AVX2-only CPUs) ONNX
            Runtime multiplies uint8 x int8 pairs with ``vpmaddubsw``, whose 16-bit sums
            saturate for full-range weights; with per-channel weights that flipped 13 % of the
            pixels of a small, briefly trained U-Net on this project's AVX2 machine, against 2 %
            with 7-bit weights, at the same speed. The file may later run on any CPU, so 7-bit is the safe default;
            ``False`` gives full 8-bit weights for VNNI machines only.
        max_side: longer image side fed to a dynamic file (larger images are reduced).
        min_agreement: smallest acceptable argmax agreement with the fp32 file (over all
            check pixels); below it a ``PixelwiseError`` that says what to try (the file is
            still written, so it can be inspected).
        verbose: print the report.
    """
    try:
        ort = require("onnxruntime", "int8 quantisation")
        quantization = require("onnxruntime.quantization", "int8 quantisation")
        CalibrationDataReader, QuantFormat = quantization.CalibrationDataReader, quantization.QuantFormat
        QuantType, quantize_static = quantization.QuantType, quantization.quantize_static
        quant_pre_process = require("onnxruntime.quantization.shape_inference", "int8 quantisation").quant_pre_process
    except ImportError as err:
        raise ConfigError(f"int8 quantisation needs onnxruntime (with its quantization tools): "
                          f"pip install 'pixelwise[export]' ({err})") from None
    start = time.perf_counter()
    source, path = Path(source), Path(path)
    if not source.is_file():
        raise ConfigError(f"fp32 ONNX file {str(source)!r} does not exist; write it with `pixelwise export` first")
    name, dtype, shape = _input_spec(source)
    inputs = [_as_input(im, dtype, shape, mean, std, max_side) for im in calibration]
    if not inputs:
        raise ConfigError("quantize_onnx needs at least one calibration image (16-64 typical images are usual)")
    checks = inputs if check is None else [_as_input(im, dtype, shape, mean, std, max_side) for im in check]
    if not checks:
        raise ConfigError("quantize_onnx got an empty list of check images; pass some or leave check=None")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {name: x}

    notes = []
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside its destination under a name no backend looks for, and moved there only
    # once the agreement check passed: a rejected or half-written int8 file is never loaded.
    final, path = path, path.with_name(f".{path.name}.{os.getpid()}.unverified")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # symbolic shape inference + graph cleanup, as onnxruntime recommends before quantising
            # skip_symbolic_shape: dynamic height/width defeat onnxruntime's symbolic inference.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as err:  # noqa: BLE001 - optional step; quantising the file as it is still works
            notes.append(f"pre-processing skipped ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
            prepared = source
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    fp32 = ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    same = total = 0
    worst = 1.0
    for x in checks:
        a, b = _labels(fp32, name, x), _labels(int8, name, x)
        equal = int((a == b).sum())
        same, total = same + equal, total + a.size
        worst = min(worst, equal / a.size)
    del fp32, int8  # sessions hold the file open on some platforms
    report = QuantReport(final, source, len(inputs), len(checks),
                         "calibration images" if check is None else "held-out images", same / total, worst,
                         source.stat().st_size, path.stat().st_size, per_channel, reduce_range,
                         time.perf_counter() - start, notes)
    if verbose:
        print(report.summary())
    if report.agreement < min_agreement:
        rejected = final.with_name(final.name.removesuffix(".onnx") + ".rejected.onnx")
        os.replace(path, rejected)
        stale = final.is_file()
        final.unlink(missing_ok=True)  # an older int8 file belongs to an older fp32 file: not verified either
        hint = "reduce_range=True (drop --full-range), " if not reduce_range else ""
        raise PixelwiseError(
            f"int8 file {final} agrees with the fp32 file on only {100 * report.agreement:.3f}% of pixels "
            f"(min_agreement {100 * min_agreement:.3f}%), so it was not installed (kept for inspection as "
            f"{rejected.name}{'; the older int8 file there was removed' if stale else ''}); try {hint}more or "
            f"more typical calibration images, or stay with the fp32 file")
    os.replace(path, final)
    return report


@register(BACKENDS, "onnxruntime-int8")
def onnxruntime_int8_backend(model, folder: Path) -> OnnxRuntimeModel:
    """The ``Segmenter`` backend ``"onnxruntime-int8"``: ``FOLDER/model.int8.onnx``, which needs
    calibration images and so is never written implicitly."""
    path = Path(folder) / INT8_FILE
    if not path.is_file():
        raise ConfigError(f"backend='onnxruntime-int8' needs {str(path)!r}; write it with `pixelwise export "
                          f"{folder} --int8 --calibrate IMAGES` (16-64 images like the ones you will segment)")
    return OnnxRuntimeModel(path)
