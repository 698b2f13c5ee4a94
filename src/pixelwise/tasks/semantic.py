"""The semantic segmentation task: what differs from other tasks and nothing else.

Build the network from a config (:func:`build_model`), the saved-model metadata
(:func:`model_meta`), the loss of one step including auxiliary outputs
(:func:`compute_loss`), and evaluation into one dataset-level confusion matrix
(:func:`evaluate`). The training loop (:mod:`pixelwise.train.loop`) calls these.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import config as config_mod
from ..config import ExperimentCfg
from ..data import class_names
from ..errors import ConfigError
from ..metrics import ConfusionMatrix
from ..models import SegmentationOutput, create_model
from ..runtime import autocast


def model_kwargs(cfg: ExperimentCfg, **extra: Any) -> dict[str, Any]:
    """Constructor keywords from the ``model`` section plus ``data.num_classes`` and ``extra``;
    ``model.args`` may not repeat any of them."""
    kwargs: dict[str, Any] = {"num_classes": cfg.data.num_classes, "in_channels": cfg.model.in_channels, **extra}
    if cfg.model.encoder is not None:
        kwargs["encoder"] = cfg.model.encoder
    if cfg.model.encoder_weights is not None:
        kwargs["encoder_weights"] = cfg.model.encoder_weights
    overlap = set(kwargs) & set(cfg.model.args)
    if overlap:
        raise ConfigError(f"model.args must not repeat {sorted(overlap)}; they come from model.encoder, "
                          f"model.encoder_weights, model.in_channels and the data section")
    return {**kwargs, **cfg.model.args}


def build_model(cfg: ExperimentCfg) -> nn.Module:
    """``create_model`` from the ``model`` section (plus ``data.num_classes``), or the model folder
    named by ``model.init_from`` (fine-tuning)."""
    if cfg.model.init_from:
        return init_from_folder(cfg)
    return create_model(cfg.model.name, **model_kwargs(cfg))


def init_from_folder(cfg: ExperimentCfg) -> nn.Module:
    """The architecture and weights of ``cfg.model.init_from`` with ``data.num_classes`` classes and
    ``model.args`` overrides; tensors whose shape changed (the classifiers) keep their fresh init."""
    from safetensors.torch import load_file

    from ..hub import WEIGHTS, build_offline, read_config, resolve

    folder = resolve(cfg.model.init_from)
    saved = dict(read_config(folder)["model"])
    name = saved.get("name")
    if cfg.model.name not in (name, "unet") or (cfg.model.encoder and cfg.model.encoder != saved.get("encoder")):
        raise ConfigError(f"model.init_from {str(folder)!r} holds a {name!r} (encoder {saved.get('encoder')!r}) but "
                          f"model.name/encoder say {cfg.model.name!r}/{cfg.model.encoder!r}; leave them unset")
    # Built offline like any model folder: the saved weights replace whatever a weight source would give.
    model = build_offline({**saved, "num_classes": cfg.data.num_classes, **cfg.model.args})
    own = model.state_dict()
    state = load_file(str(folder / WEIGHTS))
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    fresh = sorted(set(own) - set(keep))
    if fresh:
        print(f"init_from {folder}: {len(keep)} tensors loaded, {len(fresh)} start fresh (e.g. {fresh[:3]})")
    return model


def model_meta(cfg: ExperimentCfg) -> dict[str, Any]:
    """What a saved model needs besides its weights to turn images into masks."""
    return {"data": {"num_classes": cfg.data.num_classes, "class_names": class_names(cfg.data),
                     "ignore_index": cfg.data.ignore_index, "mean": cfg.data.mean, "std": cfg.data.std},
            "experiment": config_mod.to_dict(cfg)}


def compute_loss(loss_fn: nn.Module, output: Tensor | SegmentationOutput, target: Tensor) -> Tensor:
    """Main loss plus weighted auxiliary losses, in float32 whatever the autocast dtype."""
    if isinstance(output, SegmentationOutput):
        loss = loss_fn(output.logits.float(), target)
        for aux, weight in zip(output.aux, output.aux_weights):
            loss = loss + weight * loss_fn(aux.float(), target)
        return loss
    return loss_fn(output.float(), target)


def override_aux(output: Tensor | SegmentationOutput, weight: float | None) -> Tensor | SegmentationOutput:
    """``train.aux_weight`` replaces every auxiliary/deep-supervision weight the model proposes."""
    if weight is None or not isinstance(output, SegmentationOutput):
        return output
    return dataclasses.replace(output, aux_weights=[weight] * len(output.aux))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, num_classes: int, ignore_index: int = 255,
             device: torch.device | str = "cpu", amp: str = "none", channels_last: bool = False,
             progress: bool = True) -> ConfusionMatrix:
    """Predict every batch of ``loader`` (dicts with ``image`` (N,3,H,W), ``mask`` (N,H,W))
    and return the accumulated :class:`ConfusionMatrix` (reduced across processes)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        image = batch["image"].to(device, memory_format=memory_format, non_blocking=True)
        with autocast(device, amp):
            logits = model(image)
        cm.update(logits.argmax(1), batch["mask"].to(device))
    cm.all_reduce()
    model.train(was_training)
    return cm
