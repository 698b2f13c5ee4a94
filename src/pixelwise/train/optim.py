"""The optimiser: parameter groups (weight decay, encoder LR multiplier) and the frozen-encoder warm start."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ExperimentCfg
from ..errors import ConfigError


def encoder_of(model: nn.Module) -> nn.Module | None:
    """The ``encoder`` submodule of a pixelwise model (``None`` if it has none)."""
    encoder = getattr(model, "encoder", None)
    return encoder if isinstance(encoder, nn.Module) else None


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, encoder_lr_mult: float = 1.0) -> list[dict]:
    """Up to four groups: (encoder | rest) x (decayed | not decayed).

    Norm weights and biases (``ndim <= 1``) get no weight decay. Encoder parameters get
    ``lr * encoder_lr_mult``: a pretrained encoder usually wants a smaller step than the
    freshly initialised decoder (e.g. 0.1). Every parameter is included, even frozen ones,
    so unfreezing later needs no new optimiser. Empty groups are dropped.
    """
    encoder = encoder_of(model)
    in_encoder = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    if encoder_lr_mult != 1.0 and not in_encoder:
        raise ConfigError(f"train.encoder_lr_mult is {encoder_lr_mult} but {type(model).__name__} has no "
                          f"'encoder' submodule; set it to 1.0 for this model")
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        buckets.setdefault((id(p) in in_encoder, p.ndim > 1), []).append(p)
    groups = []
    for (is_encoder, decay), params in sorted(buckets.items()):
        groups.append({"params": params, "lr": lr * (encoder_lr_mult if is_encoder else 1.0),
                       "weight_decay": weight_decay if decay else 0.0})
    return groups


def build_optimizer(cfg: ExperimentCfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW, Adam (weight decay as L2 in the gradient, the classic form), RMSprop or SGD
    (Nesterov momentum) over :func:`param_groups`."""
    t = cfg.train
    groups = param_groups(model, lr=t.lr, weight_decay=t.weight_decay, encoder_lr_mult=t.encoder_lr_mult)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr)
    if t.optimizer == "rmsprop":  # the stacked-hourglass paper's choice (landmarks recipe)
        return torch.optim.RMSprop(groups, lr=t.lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=True)
    raise ConfigError(f"train.optimizer {t.optimizer!r} is unknown; use adamw, adam, rmsprop or sgd")


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (``requires_grad=False``) or unfreeze the encoder, for a warm start of the decoder.

    A frozen parameter has no gradient, so AdamW/SGD skip it entirely (no decay, no
    momentum) until it is unfrozen.
    """
    encoder = encoder_of(model)
    if encoder is None:
        raise ConfigError(f"train.freeze_encoder_steps is set but {type(model).__name__} has no 'encoder' "
                          f"submodule; set it to 0 for this model")
    for p in encoder.parameters():
        p.requires_grad_(not frozen)
