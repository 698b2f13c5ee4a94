"""Name -> constructor tables. A registry is a plain dict; ``register`` refuses duplicates."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T", bound=Callable)

MODELS: dict[str, Callable] = {}
ENCODERS: dict[str, Callable] = {}
LOSSES: dict[str, Callable] = {}
DATASETS: dict[str, Callable] = {}
# Instance segmentation models (Mask R-CNN): their inputs and outputs differ from MODELS'.
INSTANCE_MODELS: dict[str, Callable] = {}
# Tasks (pixelwise.tasks): name -> class taking an ExperimentCfg (see tasks/base.py).
TASKS: dict[str, Callable] = {}
# Losses on a model's boundary output (SegmentationOutput.boundary): name -> loss function.
BOUNDARY_LOSSES: dict[str, Callable] = {}
# The inference object of each task (pixelwise.infer), what Task.predictor returns: task name ->
# class with from_pretrained(folder, **options) and from_model(model, meta, **options).
PREDICTORS: dict[str, Callable] = {}
# The ONNX exporter of each task (pixelwise.export), what Task.exporter returns: task name ->
# ``fn(model, path, *, height, width, ...)``; filled when pixelwise.export is imported.
EXPORTERS: dict[str, Callable] = {}
# Inference backends other than PyTorch: name -> (model, model folder) -> ModelFn (pixelwise.export).
BACKENDS: dict[str, Callable] = {}


def register(table: dict[str, Callable], name: str) -> Callable[[T], T]:
    """Decorator that adds a constructor to ``table`` under ``name``.

    Registering the same name twice is a programming error and raises ``KeyError``.
    """

    def add(obj: T) -> T:
        if name in table:
            raise KeyError(f"{name!r} is already registered (by {table[name]!r})")
        table[name] = obj
        return obj

    return add


def lookup(table: dict[str, Callable], name: str, kind: str) -> Callable:
    """Return ``table[name]`` or fail with the list of valid names."""
    try:
        return table[name]
    except KeyError:
        valid = ", ".join(sorted(table)) or "(none)"
        raise KeyError(f"unknown {kind} {name!r}; valid names: {valid}") from None
