"""Experiment configuration: dataclasses <-> YAML.

A config file is one YAML document with the sections ``model``, ``data`` and
``train``. Unknown keys, values of the wrong type and values out of range (``batch_size: 0``,
a negative ``lr``, ``device: tpu``) are errors that name the key, so a typo fails where it is
written. ``--set train.lr=0.01`` style overrides are
parsed with YAML rules (``0.01`` is a float, ``null`` is None, ``[1, 2]`` a list).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError


@dataclass
class ModelCfg:
    """Which network to build; ``args`` go to the architecture's constructor.

    ``init_from``: a saved or converted model folder (``pixelwise convert``) to fine-tune: its
    architecture and weights are used (``name``/``encoder`` must then be left unset or agree);
    layers whose shape changes with ``data.num_classes`` (the classifiers) start fresh.
    """

    name: str = "unet"
    encoder: Union[str, None] = None
    encoder_weights: Union[str, None] = None
    in_channels: int = 3
    args: dict = field(default_factory=dict)
    init_from: Union[str, None] = None


@dataclass
class DataCfg:
    """Where the images come from and how they are prepared.

    ``dataset`` is ``synthetic`` (the embedded default, generated from ``seed``) or
    ``folder`` (``root/<split>/images`` + ``root/<split>/masks`` matched by file stem),
    or any reader registered in ``registry.DATASETS``; ``args`` holds that reader's own
    keyword options (e.g. ``reduce_zero_label`` for ADE20K).
    """

    dataset: str = "synthetic"
    root: Union[str, None] = None
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = 5
    class_names: Union[list, None] = None
    ignore_index: int = 255
    crop_size: int = 64
    resize: Union[list, None] = None  # [height, width] every image and mask is resized to first
    augment: str = "standard"
    # rgb: 8-bit RGB, mean/std on 0..1; raw: stored values and channels, normalised by
    # `normalize` (dataset: mean/std on the stored scale; zscore/minmax: per image). See data/intensity.py.
    image_mode: str = "rgb"
    normalize: str = "dataset"
    clip: Union[list, None] = None  # [low, high] on the stored scale, raw mode
    clip_percentiles: Union[list, None] = None  # [low, high] per image and channel, raw mode
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])
    batch_size: int = 8
    num_workers: int = 0
    train_samples: int = 512
    val_samples: int = 64
    seed: int = 0
    # Classes may overlap: masks hold bit-packed labels (bit c set = class c present), one
    # sigmoid per class. With num_classes 1 (and multilabel false) the task is binary.
    multilabel: bool = False
    args: dict = field(default_factory=dict)


@dataclass
class TrainCfg:
    """Optimisation, schedule, checkpointing and run folder."""

    epochs: int = 10
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    warmup_steps: int = 0
    loss: list = field(default_factory=lambda: [{"name": "ce", "weight": 1.0}])
    amp: str = "none"
    channels_last: bool = False
    grad_clip: Union[float, None] = None
    val_every: int = 1
    # Iteration-based schedules (mmseg's IterBasedRunner, Detectron2's eval_period /
    # checkpoint_period): validate / write last/ every N optimiser steps instead of per epoch.
    val_every_steps: Union[int, None] = None
    save_every_steps: Union[int, None] = None
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/experiment"
    max_steps: Union[int, None] = None
    # Scale and trust (docs/training.md describes every key).
    schedule: str = "poly"
    accumulate: int = 1
    ema_decay: Union[float, None] = None
    encoder_lr_mult: float = 1.0
    freeze_encoder_steps: int = 0
    balanced_sampling: bool = False
    aux_weight: Union[float, None] = None
    deterministic: bool = False
    early_stop_patience: Union[int, None] = None
    sync_bn: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    tensorboard: Union[bool, None] = None
    plots: bool = True
    adversarial: Union[dict, None] = None
    # A model's boundary output (Gated-SCNN's shape stream): "auto" trains it with the
    # dual-task loss when the model has one, "gscnn" requires it, "none" leaves it unsupervised.
    boundary_loss: str = "auto"


@dataclass
class ExperimentCfg:
    """A whole experiment: model + data + training."""

    # "auto": instance for an instance model (Mask R-CNN), else semantic; or name the task.
    task: str = "auto"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    train: TrainCfg = field(default_factory=TrainCfg)


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool, list, dict):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _takes_float(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return float in typing.get_args(annotation)
    return annotation is float


def _as_float(value: Any, annotation: Any) -> Any:
    """An int, or a string that Python's ``float()`` reads (``3e-4``, ``1E-4``, ``.5``), given to a
    float field is that float. YAML 1.1, which PyYAML follows, reads ``3e-4`` as a string (it
    wants ``3.0e-4``), and users write the former."""
    if not _takes_float(annotation) or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value  # reported as a type error with the key's name
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {', '.join(sorted(names))}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, path)
            continue
        value = _as_float(value, annotation)
        if not _type_ok(value, annotation):
            raise ConfigError(
                f"config key {path!r} must be {_type_name(annotation)}, got {value!r} "
                f"({type(value).__name__}); fix the value in the YAML file or --set"
            )
        kwargs[key] = value
    return cls(**kwargs)


# Value rules, checked once at load after the types: (dotted key, test, what it must be, the fix).
# A test receives the value (None only where the field allows it and means "off").
def _positive_int(v: Any) -> bool:
    return v >= 1


def _non_negative(v: Any) -> bool:
    return v >= 0 and math.isfinite(v)


def _positive(v: Any) -> bool:
    return v > 0 and math.isfinite(v)


TASK_CHOICES = ("auto", "semantic", "instance")
BOUNDARY_LOSS_CHOICES = ("auto", "gscnn", "none")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("data.num_classes", _positive_int, "an integer >= 1 (the number of classes, background included)"),
    ("data.crop_size", _positive_int, "an integer >= 1 (pixels)"),
    ("data.batch_size", _positive_int, "an integer >= 1"),
    ("data.num_workers", lambda v: v >= 0, "an integer >= 0 (0 loads in the main process)"),
    ("data.train_samples", _positive_int, "an integer >= 1"),
    ("data.val_samples", _positive_int, "an integer >= 1"),
    ("data.std", lambda v: len(v) > 0 and all(isinstance(x, (int, float)) and _positive(x) for x in v),
     "a list of positive numbers, one per input channel"),
    ("data.mean", lambda v: len(v) > 0 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v),
     "a list of numbers, one per input channel"),
    ("data.resize", lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x >= 1 for x in v),
     "[height, width], two integers >= 1, or null"),
    ("data.image_mode", lambda v: v in ("rgb", "raw"), "rgb (8-bit RGB) or raw (stored values and channels)"),
    ("data.normalize", lambda v: v in ("dataset", "zscore", "minmax"), "dataset, zscore or minmax"),
    ("model.in_channels", _positive_int, "an integer >= 1"),
    ("train.epochs", _positive_int, "an integer >= 1"),
    ("train.lr", _positive, "a finite number > 0, e.g. 1e-3"),
    ("train.weight_decay", _non_negative, "a finite number >= 0"),
    ("train.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("train.poly_power", _positive, "a finite number > 0"),
    ("train.warmup_steps", lambda v: v >= 0, "an integer >= 0"),
    ("train.grad_clip", _positive, "a finite number > 0, or null for no clipping"),
    ("train.val_every", _positive_int, "an integer >= 1 (validate every N epochs)"),
    ("train.val_every_steps", _positive_int, "an integer >= 1 (validate every N steps), or null to validate per "
     "epoch (train.val_every)"),
    ("train.save_every_steps", _positive_int, "an integer >= 1 (write last/ every N steps), or null to write it at "
     "the end of every epoch"),
    ("train.log_every", _positive_int, "an integer >= 1 (log every N steps)"),
    ("train.max_steps", _positive_int, "an integer >= 1, or null to train for train.epochs"),
    ("train.accumulate", _positive_int, "an integer >= 1"),
    ("train.ema_decay", lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.999, or null for no EMA"),
    ("train.encoder_lr_mult", _non_negative, "a finite number >= 0"),
    ("train.freeze_encoder_steps", lambda v: v >= 0, "an integer >= 0"),
    ("train.aux_weight", _non_negative, "a finite number >= 0, or null for the model's default"),
    ("train.early_stop_patience", _positive_int, "an integer >= 1, or null"),
    ("train.amp", lambda v: v in ("none", "bf16", "fp16"), "none, bf16 or fp16"),
    ("train.boundary_loss", lambda v: v in BOUNDARY_LOSS_CHOICES, ", ".join(BOUNDARY_LOSS_CHOICES)),
    ("train.device", lambda v: bool(_DEVICE.match(v)), "auto, cpu, cuda, cuda:N or mps"),
    ("train.out_dir", lambda v: bool(v.strip()) and not Path(v).is_file(),
     "a folder path (not an existing file)"),
]


def validate(cfg: ExperimentCfg) -> ExperimentCfg:
    """Check every value rule (and the rules between values); the first broken one is a
    :class:`ConfigError` naming the dotted key, the value and what it must be."""
    for key, test, must in _RULES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:
            continue  # the field's type allowed null, and null means "off" or "default"
        try:
            ok = test(value)
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"config key {key!r} must be {must}, got {value!r}; fix it in the YAML file or --set")
    if cfg.task not in TASK_CHOICES:
        raise ConfigError(f"config key 'task' must be one of {', '.join(TASK_CHOICES)}, got {cfg.task!r}; "
                          f"fix it in the YAML file or --set")
    t = cfg.train
    if t.val_every_steps is not None and t.val_every != 1:
        raise ConfigError(f"config keys 'train.val_every' ({t.val_every}, epochs) and 'train.val_every_steps' "
                          f"({t.val_every_steps}, steps) are both set; keep one: val_every_steps validates every N "
                          f"optimiser steps, val_every every N epochs")
    d = cfg.data
    if d.multilabel and d.num_classes > 16:
        raise ConfigError(f"config key 'data.multilabel' packs classes as bits of a 16-bit mask, but data.num_classes "
                          f"is {d.num_classes}; use at most 16 classes")
    label_values = 2 ** d.num_classes if d.multilabel else max(d.num_classes, 2)
    if 0 <= d.ignore_index < label_values and (d.multilabel or d.num_classes == 1):
        raise ConfigError(f"config key 'data.ignore_index' is {d.ignore_index}, a label value of this "
                          f"{'multilabel' if d.multilabel else 'binary'} task (0..{label_values - 1}); use a value "
                          f"outside them, e.g. {max(255, label_values)}")
    if 0 <= d.ignore_index < d.num_classes:
        raise ConfigError(f"config key 'data.ignore_index' is {d.ignore_index}, one of the {d.num_classes} classes "
                          f"(0..{d.num_classes - 1}): that class would never be trained or scored; use a label "
                          f"outside the classes (255 by default) or lower data.num_classes")
    if len(d.mean) != len(d.std):
        raise ConfigError(f"config keys 'data.mean' ({len(d.mean)} values) and 'data.std' ({len(d.std)} values) "
                          f"must have one value per input channel each")
    if (d.image_mode == "raw" and d.normalize == "dataset" and len(d.mean) != cfg.model.in_channels
            and d.mean != DataCfg().mean):
        raise ConfigError(f"config key 'data.mean' has {len(d.mean)} values but model.in_channels is "
                          f"{cfg.model.in_channels}; with data.image_mode: raw give one mean and std per channel "
                          f"(pixelwise check measures them) and set model.in_channels to the images' channels")
    return cfg


def from_dict(data: dict) -> ExperimentCfg:
    """Build an :class:`ExperimentCfg`, checking every key, type and value."""
    return validate(_build(ExperimentCfg, data or {}, ""))


def to_dict(cfg: ExperimentCfg) -> dict:
    """Plain nested dict of ``cfg`` (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentCfg:
    """Read a YAML config file and apply ``a.b=c`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path to a YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} holds a {type(data).__name__} ({str(data)[:60]!r}), not a "
                          f"mapping; it must have the sections model:, data: and train:")
    return from_dict(apply_overrides(data, overrides))


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``data`` with ``section.key=value`` overrides applied."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=0.01")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def save(cfg: ExperimentCfg, path: str | Path) -> None:
    """Write ``cfg`` as YAML (readable back with :func:`load`)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
