"""Weights trained elsewhere -> a pixelwise model folder (``config.json`` + ``model.safetensors``).

``convert(src, source="hf", out="model_dir")`` reads the peer's files (no peer library is
imported), builds the pixelwise model, loads the renamed weights strictly and writes the
folder that ``pixelwise eval / predict / export / serve`` and ``model.init_from`` use.

Sources:
    torchvision: a state-dict file of torchvision.models.segmentation (fcn_resnet50/101,
          deeplabv3_resnet50/101, deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large).
    smp:  a folder written by smp's ``save_pretrained`` (config.json with ``_model_class``): Unet, UnetPlusPlus,
          Segformer, DeepLabV3, DeepLabV3Plus, FPN, PSPNet, UPerNet, DPT.
    mmseg: an MMSegmentation checkpoint (``.pth``; its ``state_dict`` entry): SegFormer, PSPNet.
    hf:   a transformers model folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``):
          SegformerForSemanticSegmentation, UperNetForSemanticSegmentation (ConvNeXt), DPTForSemanticSegmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor, nn

from ..encoders import load_state_file
from ..errors import ConfigError
from ..remote import HubSource, fetch, is_remote, parse
from . import hf, mmseg, smp, smp_more
from . import torchvision as tv
from .keymap import load_into

__all__ = ["SOURCES", "convert", "convert_state", "build_converted"]

SOURCES = ("torchvision", "smp", "hf", "mmseg")
SMP_ARCHITECTURES = {**smp.ARCHITECTURES, **smp_more.ARCHITECTURES}


def build_converted(kwargs: dict, name: str, state: dict[str, Tensor], *, source: str) -> nn.Module:
    """``create_model(name, **kwargs)`` with ``state`` loaded strictly; eval mode."""
    from ..models import create_model

    model = create_model(name, **kwargs)
    load_into(model, state, source=source)
    return model.eval()


def convert_state(source: str, state: dict[str, Tensor], config: dict) -> nn.Module:
    """A pixelwise model holding a peer's weights. ``config``: for ``hf`` the transformers
    ``config.json`` as a dict (its ``architectures[0]`` picks the converter)."""
    if source == "hf":
        arch = (config.get("architectures") or [None])[0]
        if arch not in hf.ARCHITECTURES:
            raise ConfigError(f"transformers architecture {arch!r} is not converted; supported: "
                              f"{', '.join(hf.ARCHITECTURES)}")
        name, fn = hf.ARCHITECTURES[arch]
        kwargs, renamed = fn(config, state)
        return build_converted(kwargs, name, renamed, source=f"transformers {arch}")
    if source == "smp":
        arch = config.get("_model_class")
        if arch not in SMP_ARCHITECTURES:
            raise ConfigError(f"smp model {arch!r} is not converted yet; supported: {', '.join(SMP_ARCHITECTURES)}")
        name, kwargs, renamed = SMP_ARCHITECTURES[arch](config, state)
        return build_converted(kwargs, name, renamed, source=f"smp {arch}")
    if source == "mmseg":
        name, kwargs, renamed = mmseg.convert(state)
        return build_converted(kwargs, name, renamed, source=f"MMSegmentation {name}")
    if source == "torchvision":
        name, kwargs, renamed = tv.convert(state)
        return build_converted(kwargs, name, renamed, source=f"torchvision {name}")
    raise ConfigError(f"unknown conversion source {source!r}; valid: {', '.join(SOURCES)}")


def _read_hf(src: Path) -> tuple[dict, dict[str, Tensor]]:
    if not (src / "config.json").is_file():
        raise ConfigError(f"{str(src)!r} has no config.json; pass a transformers model folder (save_pretrained output)")
    config = json.loads((src / "config.json").read_text())
    arch = (config.get("architectures") or [None])[0]
    if arch not in hf.ARCHITECTURES:  # before reading possibly gigabytes of weights
        raise ConfigError(f"transformers architecture {arch!r} in {str(src / 'config.json')!r} is not converted; "
                          f"supported: {', '.join(hf.ARCHITECTURES)}")
    for weights in ("model.safetensors", "pytorch_model.bin"):
        if (src / weights).is_file():
            return config, load_state_file(src / weights)
    raise ConfigError(f"{str(src)!r} has neither model.safetensors nor pytorch_model.bin")


IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def data_section(num_classes: int, *, class_names: list[str] | None = None, mean=None, std=None) -> dict:
    """The ``data`` part of config.json that predict / serve / eval read (ImageNet normalisation by default)."""
    return {"num_classes": num_classes, "class_names": class_names or [f"class_{i}" for i in range(num_classes)],
            "mean": list(mean or IMAGENET[0]), "std": list(std or IMAGENET[1]), "ignore_index": 255}


def _hf_data(src: Path, config: dict, num_classes: int) -> dict:
    labels = config.get("id2label") or {}
    names = [labels.get(str(i), labels.get(i, f"class_{i}")) for i in range(num_classes)] if labels else None
    mean, std = IMAGENET
    if (config.get("architectures") or [""])[0].startswith("DPT"):
        mean = std = [0.5, 0.5, 0.5]  # DPT's image processor default
    pre = src / "preprocessor_config.json"
    if pre.is_file():
        proc = json.loads(pre.read_text())
        mean, std = proc.get("image_mean", mean), proc.get("image_std", std)
    return data_section(num_classes, class_names=names, mean=mean, std=std)


def _read_smp(src: Path) -> tuple[dict, dict[str, Tensor]]:
    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        raise ConfigError(f"{str(src)!r} is not an smp save_pretrained folder (config.json + model.safetensors)")
    config = json.loads((src / "config.json").read_text())
    if config.get("_model_class") not in SMP_ARCHITECTURES:
        raise ConfigError(f"smp model {config.get('_model_class')!r} in {str(src)!r} is not converted yet; "
                          f"supported: {', '.join(SMP_ARCHITECTURES)}")
    return config, load_state_file(src / "model.safetensors")


# A peer's folder on the Hub: what its config and weights are (pytorch_model.bin is a pickle: not fetched).
PEER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def _fetch(src: str, source: str) -> Path:
    """The local copy of a Hub source: the folder (hf, smp) or the one file (torchvision, mmseg) it names."""
    if source in ("hf", "smp"):
        return fetch(src, files=PEER_FILES, required=("config.json", "model.safetensors"))
    ref = parse(src)
    folder, _, name = ref.subfolder.rpartition("/")
    if not name:
        raise ConfigError(f"--from {source} reads one checkpoint file; name it in the source: "
                          f"hf://{ref.repo_id}/PATH/TO/FILE.pth")
    return fetch(str(HubSource(ref.repo_id, folder, ref.revision)), files=(name,), required=(name,)) / name


def convert(src: str | Path, *, source: str, out: str | Path) -> Path:
    """Convert the checkpoint at ``src`` (see the module docstring) and write a model folder at ``out``.

    ``src`` may be a Hub source: ``hf://ORG/NAME`` for a transformers or smp folder,
    ``hf://ORG/NAME/FILE.pth`` for a torchvision or MMSegmentation file (:mod:`pixelwise.remote`).

    The folder's ``data`` section (classes, normalisation) comes from the peer's files where
    they say it (transformers' ``id2label`` and ``preprocessor_config.json``), else ImageNet's.
    """
    from ..hub import save_model

    origin = str(src)
    src = _fetch(src, source) if is_remote(src) else Path(src)
    if source == "hf":
        config, state = _read_hf(src)
    elif source in ("torchvision", "mmseg"):
        config, state = {}, load_state_file(src)
    elif source == "smp":
        config, state = _read_smp(src)
    else:
        raise ConfigError(f"unknown conversion source {source!r}; valid: {', '.join(SOURCES)}")
    model = convert_state(source, state, config)
    num_classes = int(model.config["num_classes"])
    data = _hf_data(src, config, num_classes) if source == "hf" else data_section(num_classes)
    return save_model(model, out, {"data": data, "converted_from": {"source": source, "path": origin}})
