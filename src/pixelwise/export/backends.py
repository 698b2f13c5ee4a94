"""Run an exported ``.onnx`` segmentation network with ONNX Runtime, as a PyTorch-like callable.

``OnnxRuntimeModel(path)`` maps a float32 ``(N, 3, H, W)`` tensor to logits ``(N, C, H, W)``,
so code written for a PyTorch model (sliding windows, TTA, the Segmenter) can use it
unchanged. A pipeline file (written with ``export_onnx(..., pipeline=True)``) takes uint8
images and returns int64 labels; the callable passes those through the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..optional import require

MODEL_FILE = "model.onnx"

# Input element types a pixelwise export uses, as ONNX Runtime names them.
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int64)": np.int64,
                "tensor(float16)": np.float16}
_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                     "tensorrt": "TensorrtExecutionProvider"}


def resolve_onnx_path(path_or_model_folder: str | Path) -> Path:
    """The ``.onnx`` file itself, or ``FOLDER/model.onnx`` for a saved model folder."""
    path = Path(path_or_model_folder)
    if path.is_dir():
        path = path / MODEL_FILE
        if not path.is_file():
            raise ConfigError(f"folder {str(path.parent)!r} has no {MODEL_FILE}; write one with "
                              f"`pixelwise export {path.parent} --format onnx` or export_onnx(model, path)")
    elif not path.is_file():
        raise ConfigError(f"ONNX file {str(path)!r} does not exist; export it first with `pixelwise export`")
    return path


def resolve_providers(providers: Sequence[str] | None) -> list[str]:
    """Execution providers to ask for: CPU by default; ``"cuda"``/``"cpu"`` short names accepted.

    Unavailable providers are an error (not a silent CPU fallback), so a benchmark or a
    server never runs on a device other than the one asked for. The CPU provider is
    appended as ONNX Runtime's fallback for ops a GPU provider lacks.
    """
    ort = require("onnxruntime", "the onnxruntime backend")

    available = ort.get_available_providers()
    wanted = [_PROVIDER_ALIASES.get(p.lower(), p) for p in (providers or ["CPUExecutionProvider"])]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ConfigError(f"ONNX Runtime provider(s) {missing} are not available in this install "
                          f"(available: {available}); install onnxruntime-gpu for CUDA or pass providers=['cpu']")
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    return wanted


class OnnxRuntimeModel:
    """An exported network run by ``onnxruntime.InferenceSession``.

    ``model(x)``: float32 ``(N, 3, H, W)`` -> logits ``(N, C, H, W)`` (a torch tensor on
    ``x``'s device; the computation itself runs where the provider runs). For a pipeline
    file: uint8 ``(N, H, W, 3)`` or ``(N, 3, H, W)`` -> int64 labels ``(N, H, W)``.

    Args:
        path_or_model_folder: an ``.onnx`` file, or a saved model folder holding ``model.onnx``
            (then ``config.json`` beside it, if present, is read into ``.config``).
        providers: ONNX Runtime execution providers, e.g. ``["cuda"]``; default CPU only.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).

    The session uses every graph optimisation (``ORT_ENABLE_ALL``: constant folding,
    Conv+BN+activation fusion, layout transforms), which is where most of the speed-up
    over eager PyTorch comes from.
    """

    def __init__(self, path_or_model_folder: str | Path, *, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        ort = require("onnxruntime", "the onnxruntime backend")

        self.path = resolve_onnx_path(path_or_model_folder)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be >= 1 (or None for ONNX Runtime's default), got {threads}")
            options.intra_op_num_threads = threads
        self.providers = resolve_providers(providers)
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
        (inp,) = self.session.get_inputs()
        self.input_name = inp.name
        self.input_shape: list[Any] = list(inp.shape)  # ints for static axes, names for dynamic ones
        self.input_dtype = _NUMPY_TYPES.get(inp.type, np.float32)
        self.output_name = self.session.get_outputs()[0].name
        config_file = self.path.parent / "config.json"
        self.config: dict[str, Any] = json.loads(config_file.read_text()) if config_file.is_file() else {}

    @property
    def dynamic(self) -> bool:
        """Whether the file accepts any batch size, height and width (vs one fixed shape)."""
        return any(not isinstance(d, int) for d in self.input_shape)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) != len(self.input_shape):
            raise ConfigError(f"{self.path.name} takes a {len(self.input_shape)}-d input {self.input_shape}, "
                              f"got shape {list(shape)}")
        fixed = [(i, d, s) for i, (d, s) in enumerate(zip(self.input_shape, shape)) if isinstance(d, int) and d != s]
        if fixed:
            raise ConfigError(f"{self.path.name} was exported with the static input shape {self.input_shape} but "
                              f"got {list(shape)}; resize/tile the input, or re-export without --static")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._check_shape(tuple(x.shape))
        array = np.ascontiguousarray(x.detach().cpu().numpy().astype(self.input_dtype, copy=False))
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).to(x.device)

    def eval(self) -> OnnxRuntimeModel:
        """No-op, so code that calls ``model.eval()`` on a PyTorch model accepts this too."""
        return self

    def __repr__(self) -> str:
        return f"OnnxRuntimeModel({str(self.path)!r}, input={self.input_shape}, providers={self.providers})"
