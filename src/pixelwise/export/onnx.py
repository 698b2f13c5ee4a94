"""ONNX and TorchScript export with an automatic parity check against PyTorch.

``export_onnx(model, "model.onnx")`` writes a graph that takes float32 ``(N, 3, H, W)`` and
returns logits ``(N, C, H, W)`` for any batch size and any H, W above the network stride
(dynamic axes ``batch``, ``height``, ``width``), runs the file with ONNX Runtime and PyTorch
on random inputs of two different sizes, and reports the largest logit difference and the
argmax agreement (an error when the agreement is below ``min_agreement``). If the dynamic
graph fails or disagrees at the second size, a static file is written instead, with a warning.

How the dynamic graph stays correct: pixelwise models pad their input to the encoder stride
with ``if pad: F.pad(...)``; traced at one size, that branch is frozen and the graph is wrong at
other sizes (ONNX Runtime fails on a Concat or returns other numbers). So the export wraps it in
:class:`StridePadded`, which always pads up to ``stride * ceil(H / stride)`` and crops with a
negative pad (a plain slice makes ``torch.export`` demand a proof it cannot find), so the
inner network only ever sees multiples of its stride, where its own branch is constant.

``pipeline=True`` also wraps normalisation and argmax: the file takes uint8 images ``(N, H, W, 3)``
(``(N, 3, H, W)`` with ``layout="nchw"``) and returns int64 labels ``(N, H, W)``.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, PixelwiseError
from ..optional import require
from ..registry import BACKENDS, EXPORTERS, register
from .backends import OnnxRuntimeModel

__all__ = ["ExportReport", "OnnxRuntimeModel", "ParityCheck", "SegmentationPipeline", "StridePadded",
           "export_onnx", "export_torchscript", "stride_of"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ParityCheck:
    """One comparison of the exported file with PyTorch on a random input of ``shape``.

    ``max_abs_diff``: largest absolute logit difference (``None`` for a pipeline, which
    returns labels only); ``agreement``: fraction of pixels whose predicted class is equal.
    """

    shape: tuple[int, ...]
    max_abs_diff: float | None
    agreement: float


@dataclass
class ExportReport:
    """What :func:`export_onnx` / :func:`export_torchscript` wrote and how well it matches PyTorch.

    ``dynamic`` is False when a dynamic export was asked for but failed (``note`` says why).
    A dynamic file accepts any batch size and heights/widths of at least ``min_size``.
    """

    path: Path
    format: str
    dynamic: bool
    pipeline: bool
    stride: int
    min_size: int
    input_shape: tuple[int | str, ...]
    opset: int | None = None
    note: str = ""
    seconds: float = 0.0
    checks: list[ParityCheck] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float | None:
        diffs = [c.max_abs_diff for c in self.checks if c.max_abs_diff is not None]
        return max(diffs) if diffs else None

    @property
    def agreement(self) -> float | None:
        return min(c.agreement for c in self.checks) if self.checks else None

    def summary(self) -> str:
        """A few human-readable lines: file, shape, and one line per parity check."""
        kind = "dynamic" if self.dynamic else "static"
        lines = [(f"wrote {self.path} ({self.format}{', pipeline' if self.pipeline else ''}, {kind} input "
                  f"{list(self.input_shape)}, {self.seconds:.1f} s)")]
        if self.dynamic:
            lines.append(f"  any batch size; height and width >= {self.min_size} (padded to multiples of "
                         f"{self.stride} inside)")
        if self.note:
            lines.append(f"  note: {self.note}")
        for c in self.checks:
            diff = "n/a (labels only)" if c.max_abs_diff is None else f"{c.max_abs_diff:.2e}"
            lines.append(f"  parity at {list(c.shape)}: max |logit diff| {diff}, argmax agreement "
                         f"{100 * c.agreement:.4f}%")
        return "\n".join(lines)


def stride_of(model: nn.Module) -> tuple[int, str]:
    """``(stride, pad mode)`` a model pads its input to internally.

    ``SegmentationModel`` and friends publish ``pad_multiple``; ENet and SegNet hard-code
    theirs (ENet pads by replicating edges, see models/enet.py). A model that does not say
    gets stride 1: no padding, and the dynamic export then succeeds only if its own shape
    logic is size-generic (otherwise the export falls back to static and says so).
    """
    from ..models.enet import ENet
    from ..models.segnet import SegNet

    if isinstance(model, ENet):
        return 8, "replicate"
    if isinstance(model, SegNet):
        return 32, "constant"
    return int(getattr(model, "pad_multiple", 1) or 1), "constant"


class StridePadded(nn.Module):
    """Pad ``(N, C, H, W)`` to multiples of ``stride``, run ``model``, crop back: export-friendly.

    The same result as the model's own pad-and-crop, written so that ``torch.export`` keeps
    H and W symbolic: the padded size is ``stride * ceil(H / stride)`` (provably a multiple,
    so the model's internal ``if pad`` is constant) and the crop is a negative pad.
    """

    def __init__(self, model: nn.Module, *, stride: int, mode: str = "constant") -> None:
        super().__init__()
        self.model, self.stride, self.mode = model, stride, mode

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.stride == 1:
            return self.model(x)
        hp = (h + self.stride - 1) // self.stride * self.stride
        wp = (w + self.stride - 1) // self.stride * self.stride
        y = self.model(F.pad(x, (0, wp - w, 0, hp - h), mode=self.mode))
        return F.pad(y, (0, w - wp, 0, h - hp))


class SegmentationPipeline(nn.Module):
    """uint8 image -> normalise -> network -> argmax, as one module.

    ``forward``: uint8 ``(N, H, W, 3)`` (``layout="nhwc"``) or ``(N, 3, H, W)`` (``"nchw"``)
    -> int64 labels ``(N, H, W)``. Normalisation is pixelwise's: ``(x / 255 - mean) / std``.
    """

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float],
                 layout: str = "nhwc") -> None:
        super().__init__()
        if layout not in ("nhwc", "nchw"):
            raise ConfigError(f"layout must be 'nhwc' (N, H, W, 3) or 'nchw' (N, 3, H, W), got {layout!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"mean and std need 3 values each (R, G, B) and std > 0, got {list(mean)}, {list(std)}")
        self.model, self.layout = model, layout
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        x = image.permute(0, 3, 1, 2) if self.layout == "nhwc" else image
        x = (x.float() / 255.0 - self.mean) / self.std
        return self.model(x).argmax(1)


def _example(pipeline: bool, layout: str, batch: int, height: int, width: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    if not pipeline:
        return torch.randn(batch, 3, height, width, generator=generator)
    shape = (batch, height, width, 3) if layout == "nhwc" else (batch, 3, height, width)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def _reference(model: nn.Module, x: Tensor, pipeline: bool, layout: str, mean: Sequence[float],
               std: Sequence[float]) -> Tensor:
    """PyTorch's answer, computed without the export wrappers (normalisation in NumPy)."""
    device = next(model.parameters(), torch.empty(0)).device
    if pipeline:
        image = x.numpy() if layout == "nhwc" else x.numpy().transpose(0, 2, 3, 1)
        normalised = (image.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
        x = torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return model(x.to(device)).float().cpu()


def _parity(model: nn.Module, run: Callable[[Tensor], Tensor], shapes: list[tuple[int, int, int]], *,
            pipeline: bool, layout: str, mean: Sequence[float], std: Sequence[float]) -> list[ParityCheck]:
    checks = []
    for seed, (batch, height, width) in enumerate(shapes):
        x = _example(pipeline, layout, batch, height, width, seed=1000 + seed)
        expected = _reference(model, x, pipeline, layout, mean, std)
        got = run(x).cpu()
        if pipeline:
            if got.shape != (batch, height, width):
                raise PixelwiseError(f"exported pipeline returned shape {list(got.shape)} for input {list(x.shape)}; "
                                     f"expected {[batch, height, width]}")
            checks.append(ParityCheck(tuple(x.shape), None, (got == expected.argmax(1)).float().mean().item()))
        else:
            if got.shape != expected.shape:
                raise PixelwiseError(f"exported model returned shape {list(got.shape)} for input {list(x.shape)}; "
                                     f"PyTorch returns {list(expected.shape)}")
            diff = (got.float() - expected).abs().max().item()
            agree = (got.argmax(1) == expected.argmax(1)).float().mean().item()
            checks.append(ParityCheck(tuple(x.shape), diff, agree))
    return checks


def _prepare(model: nn.Module, *, height: int, width: int, dynamic: bool, pipeline: bool,
             mean: Sequence[float] | None, std: Sequence[float] | None, layout: str):
    """Wrap the model for export; returns (module, stride, min_size, mean, std, parity shapes)."""
    if height < 1 or width < 1:
        raise ConfigError(f"height and width must be positive, got {height}x{width}")
    stride, mode = stride_of(model)
    min_size = stride + 1 if stride > 1 else 2
    # A part may need more (SegFormer's attention reductions): it says so as min_input_size.
    min_size = max([min_size] + [int(getattr(m, "min_input_size", 0)) for m in model.modules()])
    if dynamic and min(height, width) < min_size:
        raise ConfigError(f"a dynamic export traces at height x width = {height}x{width}, but this model "
                          f"(stride {stride}) needs both >= {min_size}; pass a larger --height/--width "
                          f"or --static")
    mean = tuple(IMAGENET_MEAN if mean is None else mean)
    std = tuple(IMAGENET_STD if std is None else std)
    net: nn.Module = StridePadded(model, stride=stride, mode=mode)
    if pipeline:
        net = SegmentationPipeline(net, mean=mean, std=std, layout=layout)
    shapes = [(2, height, width)]
    if dynamic:  # two more sizes, odd ones that need padding, one smaller than traced, another batch size
        shapes.append((1, height + stride // 2 + 1, width + stride // 2 + 3))
        shapes.append((1, max(min_size, height // 2 + 3), max(min_size, width * 3 // 4 + 5)))
    return net.eval(), stride, min_size, mean, std, shapes


def _finish(report: ExportReport, verbose: bool, min_agreement: float) -> ExportReport:
    if verbose:
        print(report.summary())
    if report.agreement is not None and report.agreement < min_agreement:
        worst = min(report.checks, key=lambda c: c.agreement)
        raise PixelwiseError(
            f"exported {report.path} disagrees with PyTorch: argmax agreement {100 * worst.agreement:.3f}% at "
            f"input {list(worst.shape)} is below min_agreement {100 * min_agreement:.3f}% (max |logit diff| "
            f"{worst.max_abs_diff}); try --static, another --opset, or report the model name as a bug")
    return report


def export_onnx(model: nn.Module, path: str | Path, *, height: int = 512, width: int = 512, dynamic: bool = True,
                opset: int | None = None, pipeline: bool = False, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, layout: str = "nhwc", check: bool = True,
                min_agreement: float = 0.999, verbose: bool = True) -> ExportReport:
    """Export a segmentation network to ONNX (``torch.export`` + the dynamo ONNX exporter).

    Args:
        model: a pixelwise model (or any ``(N, 3, H, W) -> (N, C, H, W)`` module); put in eval mode.
        path: the ``.onnx`` file to write (parent folders are created).
        height, width: the trace size and the first parity-check size.
        dynamic: free ``batch``/``height``/``width`` axes. If the model cannot be exported
            that way, or the dynamic file disagrees with PyTorch at the second check size, a
            warning is raised and a static file is written (``report.note`` says why).
        opset: ONNX opset (``None``: the exporter's default).
        pipeline: include normalisation + argmax: uint8 images in, int64 labels ``(N, H, W)`` out.
        mean, std: the pipeline's normalisation on the 0..1 scale (default ImageNet's).
        layout: the pipeline's image layout, ``"nhwc"`` ``(N, H, W, 3)`` or ``"nchw"``.
        check: run the file with ONNX Runtime and compare with PyTorch (two sizes if dynamic).
        min_agreement: smallest acceptable argmax agreement; below it a ``PixelwiseError``.
        verbose: print the report.

    Input name ``image``, output name ``logits`` (``labels`` for a pipeline).
    """
    from torch.export import Dim

    for module in ("onnx", "onnxscript"):  # what torch.onnx.export's dynamo path imports
        require(module, "ONNX export")
    start = time.perf_counter()
    model = model.eval()
    net, stride, min_size, mean, std, shapes = _prepare(model, height=height, width=width, dynamic=dynamic,
                                                        pipeline=pipeline, mean=mean, std=std, layout=layout)
    example = _example(pipeline, layout, 2, height, width, seed=0)
    example = example.to(next(model.parameters(), torch.empty(0)).device)
    h_axis, w_axis = (1, 2) if pipeline and layout == "nhwc" else (2, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = {0: Dim("batch", min=1), h_axis: Dim("height", min=min_size), w_axis: Dim("width", min=min_size)}

    def write(onnx_program, is_dynamic: bool, note: str, check_shapes: list) -> ExportReport:
        input_shape = _name_axes(onnx_program, is_dynamic, h_axis, w_axis)
        onnx_program.save(str(path))
        written = ExportReport(path, "onnx", is_dynamic, pipeline, stride, min_size, input_shape,
                               opset=onnx_program.model.opset_imports.get(""), note=note)
        if check:
            written.checks = _parity(model, OnnxRuntimeModel(path), check_shapes, pipeline=pipeline, layout=layout,
                                     mean=mean, std=std)
        return written

    note = ""
    if dynamic:
        try:
            report = write(_to_onnx(net, example, dims, opset, pipeline), True, "", shapes)
        except Exception as err:  # noqa: BLE001 - tracing failed, or the graph fails at the 2nd size: go static
            note = f"dynamic export failed ({_reason(err)}); exported static {height}x{width}"
        else:
            bad = [c for c in report.checks if c.agreement < min_agreement]
            if bad:  # e.g. adaptive pooling traced with the example's window sizes (PSPNet)
                note = (f"the dynamic graph disagrees with PyTorch at input {list(bad[0].shape)} (argmax agreement "
                        f"{100 * bad[0].agreement:.3f}%): an op was traced with size-specific constants; "
                        f"exported static {height}x{width}")
    if note or not dynamic:
        if note:
            warnings.warn(f"{type(model).__name__}: {note}", stacklevel=2)
        report = write(_to_onnx(net, example, None, opset, pipeline), False, note, shapes[:1])
    report.seconds = time.perf_counter() - start
    return _finish(report, verbose, min_agreement)


def _to_onnx(net: nn.Module, example: Tensor, dims: dict | None, opset: int | None, pipeline: bool):
    """``torch.export`` (non-strict, so constraint violations raise instead of being relaxed) -> ONNXProgram."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # deprecation and tracing chatter
        # Exporting the nn.Module directly lets torch.onnx relax violated Dims silently, which
        # produced graphs that were wrong at every size needing other padding; hence export first.
        program = torch.export.export(net, (example,), dynamic_shapes=(dims,) if dims else None, strict=False)
        return torch.onnx.export(program, dynamo=True, opset_version=opset, verbose=False,
                                 input_names=["image"], output_names=["labels" if pipeline else "logits"])


def _reason(err: Exception) -> str:
    """The first line of a torch.export error plus its first violated guard (the useful part)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    guards = [line for line in lines[1:] if line.startswith("- ")]
    return f"{type(err).__name__}: " + " ".join(([lines[0]] if lines else []) + guards[:1])[:500]


def _name_axes(onnx_program, dynamic: bool, h_axis: int, w_axis: int) -> tuple[int | str, ...]:
    """Rename the exporter's symbolic axes (``s77``...) to ``batch``/``height``/``width``."""
    ir = require("onnx_ir", "ONNX export")

    graph = onnx_program.model.graph
    shape = list(graph.inputs[0].shape)
    if not dynamic:
        return tuple(int(d) for d in shape)
    names = {str(shape[0]): "batch", str(shape[h_axis]): "height", str(shape[w_axis]): "width"}
    for value in [*graph.inputs, *graph.outputs]:
        if value.shape is not None:
            value.shape = ir.Shape([ir.SymbolicDim(names[str(d)]) if str(d) in names else d for d in value.shape])
    return tuple(d if isinstance(d, int) else str(d) for d in graph.inputs[0].shape)


def export_torchscript(model: nn.Module, path: str | Path, *, height: int = 512, width: int = 512,
                       dynamic: bool = True, pipeline: bool = False, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, layout: str = "nhwc", check: bool = True,
                       min_agreement: float = 0.999, verbose: bool = True) -> ExportReport:
    """Export a segmentation network to TorchScript with ``torch.jit.trace`` (load with ``torch.jit.load``).

    Same arguments and report as :func:`export_onnx`. Tracing records shape arithmetic, so
    with :class:`StridePadded` around the model the file works at other sizes too; that is
    verified by the second parity check (``dynamic=True``), and a mismatch there is an error
    (a traced file cannot refuse other sizes, so a wrong dynamic file would fail silently).
    Models whose forward uses ops the tracer cannot record (SegNet's ``max_unpool2d``) fail
    with an error that says so; export those to ONNX instead.
    """
    start = time.perf_counter()
    model = model.eval()
    net, stride, min_size, mean, std, shapes = _prepare(model, height=height, width=width, dynamic=dynamic,
                                                        pipeline=pipeline, mean=mean, std=std, layout=layout)
    example = _example(pipeline, layout, 2, height, width, seed=0)
    example = example.to(next(model.parameters(), torch.empty(0)).device)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # deprecation + "converting a tensor to a Python int" chatter
            traced = torch.jit.trace(net, (example,), check_trace=False)
    except Exception as err:
        raise PixelwiseError(f"torch.jit.trace cannot trace {type(model).__name__}: {type(err).__name__}: "
                             f"{str(err).strip().splitlines()[0][:300]}; export it with --format onnx instead") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save/load are deprecated, still supported
        torch.jit.save(traced, str(path))
    nhwc = pipeline and layout == "nhwc"
    input_shape: tuple[int | str, ...] = ("batch", "height", "width", 3) if nhwc else ("batch", 3, "height", "width")
    if not dynamic:
        input_shape = tuple(example.shape)
    note = "" if dynamic else f"traced at {height}x{width}; at other sizes a traced file can be silently wrong"
    report = ExportReport(path, "torchscript", dynamic, pipeline, stride, min_size, input_shape, note=note)
    if check:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")

        def run(x: Tensor) -> Tensor:
            with torch.no_grad():
                return loaded(x)

        try:
            report.checks = _parity(model, run, shapes, pipeline=pipeline, layout=layout, mean=mean, std=std)
        except RuntimeError as err:
            raise PixelwiseError(f"the traced {type(model).__name__} in {path} fails at another input size "
                                 f"({str(err).strip().splitlines()[0][:200]}); export with --static "
                                 f"or use --format onnx") from err
    report.seconds = time.perf_counter() - start
    return _finish(report, verbose, min_agreement)


def ensure_onnx(model: nn.Module, folder: str | Path) -> Path:
    """``FOLDER/model.onnx``, exported first (with its parity check) when the folder has none."""
    path = Path(folder) / "model.onnx"
    if not path.is_file():
        # export_onnx checks ONNX Runtime against PyTorch at the trace size; 256 keeps that quick.
        export_onnx(model.cpu().eval(), path, height=256, width=256, verbose=False)
    return path


register(EXPORTERS, "semantic")(export_onnx)


@register(BACKENDS, "onnxruntime")
def onnxruntime_backend(model: nn.Module, folder: Path) -> OnnxRuntimeModel:
    """The ``Segmenter`` backend ``"onnxruntime"``: ``FOLDER/model.onnx`` on ONNX Runtime (CPU),
    exported first (with its parity check) when the folder has none."""
    return OnnxRuntimeModel(ensure_onnx(model, folder))
