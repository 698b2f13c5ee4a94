"""The model folder: what a trained model is on disk, written atomically and read without pickle.

A model folder is::

    config.json          {"model": create_model kwargs incl. "name" (no weight sources),
                          "data": preprocessing + class names, "card": {"task", "provenance"}, ...}
    model.safetensors    the weights
    README.md            a model card for people (optional; :func:`write_card`)

It is self-contained: the build keywords that name where the *initial* encoder weights came
from (``encoder_weights``: ``"imagenet"`` or a local ``.pth`` path, ``pretrained``, ...) are
moved out of ``config["model"]`` into ``config["card"]["provenance"]`` when the folder is
written, and :func:`load_model` builds the network with no weight source
(``encoder_weights=None``) before applying ``model.safetensors``. So a folder loads with the
weight file it was initialised from deleted and with no network.

Atomicity: a folder is written under a temporary name beside its final place, then swapped
in with renames. A process killed at any moment leaves either the old or the new folder
complete; :func:`resolve` finds whichever survived.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .data.intensity import Preprocess
from .errors import ConfigError
from .models import MODELS, create_model
from .models.maskrcnn import create_instance_model  # also fills registry.INSTANCE_MODELS
from .registry import INSTANCE_MODELS
from .remote import fetch, is_remote

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"

# Build keywords that name a source of initial weights, and the value that reads none.
WEIGHT_SOURCES: dict[str, Any] = {"encoder_weights": None, "pretrained": False, "weights": None,
                                  "backbone_weights": None}
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


@contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``folder`` (old copy removed last)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(folder: str | Path) -> Path:
    """The complete copy of ``folder``: itself, or the previous one if a swap was interrupted.

    A Hub source ``hf://ORG/NAME[/FOLDER][@REVISION]`` resolves to its snapshot in the local
    huggingface_hub cache, downloaded first only when the cache lacks it (:func:`pixelwise.remote.fetch`)."""
    if is_remote(folder):
        return fetch(folder)
    folder = Path(folder)
    if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
        return folder
    old = folder.with_name(f".{folder.name}.old")
    if (old / CONFIG).is_file() and (old / WEIGHTS).is_file():
        return old
    raise ConfigError(f"{str(folder)!r} is not a saved pixelwise model (no {CONFIG} + {WEIGHTS}); "
                      f"pass a folder written by `pixelwise train` or save_model()")


def _is_weight_source(key: str, value: Any) -> bool:
    if key in WEIGHT_SOURCES:
        return True
    return isinstance(value, str) and value.lower().endswith(WEIGHT_SUFFIXES)


def split_provenance(model_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(build keywords without weight sources, the weight sources)`` of a model's ``.config``.

    A weight source is a key of :data:`WEIGHT_SOURCES` (``encoder_weights``, ``pretrained``,
    ...) or any string value naming a weight file (``.pth``, ``.safetensors``, ...)."""
    build = {k: v for k, v in model_config.items() if not _is_weight_source(k, v)}
    sources = {k: v for k, v in model_config.items() if _is_weight_source(k, v)}
    return build, sources


def write_model(tmp: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``config.json`` (weight sources moved to ``card.provenance``) + ``model.safetensors`` into ``tmp``."""
    model_config = dict(getattr(model, "config", {}))
    if not model_config:
        raise ValueError("model has no .config; build it with pixelwise.create_model so it can be saved")
    build, sources = split_provenance(model_config)
    card = dict(meta.get("card") or {})
    card.setdefault("task", meta.get("task", "instance" if build.get("name") in INSTANCE_MODELS else "semantic"))
    card["provenance"] = {**card.get("provenance", {}), **sources}
    interface = getattr(model, "interface", None)  # e.g. an smp-style wrapper's activation (no weights)
    if interface:
        card["interface"] = interface
    config = {"model": build, **meta, "card": card}
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))


def save_model(model: nn.Module, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically. ``meta`` goes into config.json."""
    with atomic_dir(folder) as tmp:
        write_model(tmp, model, meta or {})
    return Path(folder)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a saved model folder."""
    return json.loads((resolve(folder) / CONFIG).read_text())


def is_instance_folder(folder: str | Path) -> bool:
    """Whether the saved model in ``folder`` is an instance model (False when it is no saved
    model: the semantic path then reports what is wrong with it)."""
    try:
        config = read_config(folder)
    except (ConfigError, OSError, ValueError):
        return False
    return str(config.get("model", {}).get("name")) in INSTANCE_MODELS


def build_offline(model_config: dict[str, Any]) -> nn.Module:
    """Build the network of a ``config["model"]`` without reading any weight source.

    Weight-source keys are dropped; where the builder takes ``encoder_weights`` it gets None.
    The network's ``.config`` is the build config (what a folder written from it will hold)."""
    build, _ = split_provenance(model_config)
    name = build.get("name")
    if name in INSTANCE_MODELS:
        return create_instance_model(**{**build, "encoder_weights": None})
    if name not in MODELS:
        return create_model(**build)  # fails with the list of valid names
    if "encoder_weights" in inspect.signature(MODELS[name]).parameters:
        model = create_model(**build, encoder_weights=None)
        model.config.pop("encoder_weights", None)
        return model
    return create_model(**build)


def load_model(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved model, semantic or instance (no network, no pickle, no weight source read).

    Returns ``(model in eval mode, config)``."""
    folder = resolve(folder)
    config = json.loads((folder / CONFIG).read_text())
    model = build_offline(config["model"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval(), config


def load(folder: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """``pixelwise.load``: the saved model as one object, in eval mode, with its folder's
    ``config.json`` as ``model.saved_config``. A folder saved from an smp-style model
    (``pixelwise.Unet(..., activation="sigmoid")``) comes back as one, activation included;
    :func:`load_model` gives the bare network (logits) that inference uses."""
    model, config = load_model(folder, device=device)
    interface = (config.get("card") or {}).get("interface") or {}
    if interface.get("kind") == "smp":
        from .compat import SmpStyleModel

        activation = interface.get("activation")
        if isinstance(activation, str) and activation.startswith("unsaved callable"):
            warnings.warn(f"{folder}: the model was saved with an activation given as a callable ({activation}), "
                          f"which a folder cannot hold; it is loaded without one", RuntimeWarning, stacklevel=2)
            activation = None
        model = SmpStyleModel(model, activation).eval()
    model.saved_config = config
    return model


def write_card(folder: str | Path, model_cfg: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``README.md``, the model card for people: use, architecture, preprocessing, classes, scores."""
    data = meta["data"]
    classes = "\n".join(f"| {i} | {n} |" for i, n in enumerate(data["class_names"]))
    scores = meta.get("scores")
    shown = f"\n## Validation scores\n\n```json\n{json.dumps(scores, indent=2)}\n```\n" if scores else ""
    provenance = (meta.get("card") or {}).get("provenance")
    origin = (f"\n## Provenance\n\nInitial weights (not needed to load this folder): "
              f"`{json.dumps(provenance)}`\n") if provenance else ""
    name = str(model_cfg.get("name", "pixelwise model"))
    task = str((meta.get("card") or {}).get("task") or meta.get("task") or "semantic")
    # YAML front matter: the Hugging Face Hub reads it to list the model under its library and task.
    tags = ", ".join(dict.fromkeys(["pixelwise", f"{task}-segmentation", name]))
    text = f"""---
library_name: pixelwise
pipeline_tag: image-segmentation
tags: [{tags}]
---

# {name} segmentation model

A pixelwise model folder: `config.json` (architecture and preprocessing)
and `model.safetensors` (weights). Loads with no network access and no pickle.

## Use

```python
from pixelwise import Segmenter

seg = Segmenter.from_pretrained("path/to/this/folder")  # or "hf://ORG/NAME" on the Hub
result = seg("image.png", tile={meta.get("tile") or 512}, tta="flip")
print(result.areas())
```

or `pixelwise predict path/to/this/folder images/ --out predictions/`.

## Architecture

```json
{json.dumps(model_cfg, indent=2)}
```

## Preprocessing

{Preprocess.from_dict(data).describe()}

## Classes

| index | name |
|---|---|
{classes}
{shown}{origin}"""
    path = Path(folder) / CARD
    path.write_text(text)
    return path
