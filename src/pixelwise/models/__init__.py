"""Model zoo: ``create_model(name, ...)`` is a dict lookup in ``registry.MODELS``."""

from __future__ import annotations

import inspect

from torch import nn

from ..errors import ConfigError
from ..registry import MODELS, lookup
from . import (  # noqa: F401 - registers the architectures
    context,
    deeplab,
    dense_unet,
    dpt,
    enet,
    fastfcn,
    fcn,
    fcn_dilated,
    fpn,
    gscnn,
    hourglass,
    lraspp,
    multiresunet,
    pspnet,
    refinenet,
    segformer,
    segnet,
    unet,
    unet3d,
    unetplusplus,
    upernet,
)
from .model import SegmentationModel, SegmentationOutput

__all__ = ["create_model", "list_models", "model_summary", "SegmentationModel", "SegmentationOutput"]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture; keyword arguments are the architecture's own.

    The keyword arguments (with the name) are stored on ``model.config`` and are what a
    saved model folder's ``config.json`` holds, so ``create_model(**config)`` rebuilds it.

    >>> model = create_model("unet", encoder=None, in_channels=1, num_classes=2)
    """
    builder = lookup(MODELS, name, "model")
    params = inspect.signature(builder).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise ConfigError(f"model {name!r} has no argument(s) {unknown}; valid: {', '.join(params)}")
    model = builder(**kwargs)
    model.config = {"name": name, **kwargs}
    return model


def list_models() -> list[str]:
    """Names of every registered architecture."""
    return sorted(MODELS)


def model_summary(name: str) -> str:
    """First docstring line of an architecture's builder (its paper)."""
    doc = inspect.getdoc(MODELS[name]) or ""
    return doc.splitlines()[0] if doc else ""
