"""The semantic segmentation task: binary, multiclass and multilabel, and nothing else.

- multiclass (``data.num_classes`` >= 2): ``C`` logits per pixel, softmax, labels 0..C-1;
- binary (``num_classes: 1``): one logit per pixel, sigmoid, masks hold 0/1;
- multilabel (``data.multilabel: true``): ``C`` logits, one sigmoid each, classes may
  overlap; masks hold bit-packed labels (bit ``c`` set: class ``c`` present).

The decision from logits to labels is :mod:`pixelwise.postprocess.decision`. A model with a
boundary output (Gated-SCNN's shape stream) gets the dual-task loss registered in
``registry.BOUNDARY_LOSSES`` (``train.boundary_loss``); its terms are logged by the loop.
:class:`SemanticTask` is what :mod:`pixelwise.train.loop` trains.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import config as config_mod
from ..config import ExperimentCfg
from ..data import EpochSeeded, build_dataset, class_names, pad_collate
from ..data.intensity import Preprocess
from ..errors import ConfigError
from ..losses import build_loss
from ..losses.gscnn_loss import dual_task_losses
from ..metrics import ConfusionMatrix
from ..metrics.multilabel import MultilabelScores
from ..models import SegmentationOutput, create_model
from ..postprocess.decision import bits_to_multilabel, labels_from_logits
from ..registry import BOUNDARY_LOSSES, TASKS, lookup, register
from ..runtime import autocast
from .base import Evaluation, StepOutput, build_exporter, build_predictor


@register(BOUNDARY_LOSSES, "gscnn")
def gscnn_boundary_terms(output: SegmentationOutput, target: Tensor, *, ignore_index: int) -> dict[str, Tensor]:
    """Gated-SCNN's dual-task terms on top of the segmentation loss: ``boundary`` (class-balanced
    BCE of the shape stream), ``consistency`` and ``attention`` (see :mod:`pixelwise.losses.gscnn_loss`)."""
    terms = dual_task_losses(output, target, ignore_index=ignore_index)
    terms.pop("segmentation")  # the configured train.loss already supervises the logits
    return terms


def semantic_mode(cfg: ExperimentCfg) -> str:
    """``"multilabel"``, ``"binary"`` (one class) or ``"multiclass"``, from the data section."""
    if cfg.data.multilabel:
        return "multilabel"
    return "binary" if cfg.data.num_classes == 1 else "multiclass"


def reader_cfg(cfg: ExperimentCfg):
    """The data section as the readers see it: their label check counts label *values*
    (2 for binary, ``2**C`` bit patterns for multilabel), not output channels."""
    mode = semantic_mode(cfg)
    if mode == "multiclass":
        return cfg.data
    values = 2 if mode == "binary" else 2 ** cfg.data.num_classes
    return dataclasses.replace(cfg.data, num_classes=values, class_names=None)


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
    return {"task": "semantic",
            "data": {"num_classes": cfg.data.num_classes, "class_names": class_names(cfg.data),
                     "ignore_index": cfg.data.ignore_index, **Preprocess.from_cfg(cfg.data).to_dict(),
                     "mode": semantic_mode(cfg)},
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
             progress: bool = True, mode: str = "multiclass") -> ConfusionMatrix:
    """Predict every batch of ``loader`` (dicts with ``image`` (N,3,H,W), ``mask`` (N,H,W))
    and return the accumulated :class:`ConfusionMatrix` (reduced across processes). A binary
    model (``mode="binary"``, one logit) is scored as two classes, background and foreground."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        image = batch["image"].to(device, memory_format=memory_format, non_blocking=True)
        with autocast(device, amp):
            logits = model(image)
        cm.update(labels_from_logits(logits.float(), mode), batch["mask"].to(device))
    cm.all_reduce()
    model.train(was_training)
    return cm


@torch.no_grad()
def evaluate_multilabel(model: nn.Module, loader: DataLoader, *, num_classes: int, ignore_index: int = 255,
                        device: torch.device | str = "cpu", amp: str = "none", channels_last: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Per-class IoU and Dice of a multilabel model (``z_c > 0`` per class) against bit-packed
    masks; see :class:`pixelwise.metrics.multilabel.MultilabelScores` (reduced across processes)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    scores = MultilabelScores(num_classes, ignore_index=ignore_index, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        image = batch["image"].to(device, memory_format=memory_format, non_blocking=True)
        with autocast(device, amp):
            logits = model(image)
        target = bits_to_multilabel(batch["mask"].to(device), num_classes, ignore_index=ignore_index)
        scores.update(logits.float() > 0, target)
    scores.all_reduce()
    model.train(was_training)
    return scores.compute()


@register(TASKS, "semantic")
class SemanticTask:
    """Semantic segmentation (binary, multiclass or multilabel) for :mod:`pixelwise.train.loop`."""

    name = "semantic"
    best_key = "best_miou"

    def __init__(self, cfg: ExperimentCfg) -> None:
        self.cfg = cfg
        self.mode = semantic_mode(cfg)
        d, t = cfg.data, cfg.train
        self.loss_fn = build_loss(t.loss, ignore_index=d.ignore_index, mode=self.mode)
        self.boundary = None
        if t.boundary_loss != "none":
            self.boundary = lookup(BOUNDARY_LOSSES, "gscnn" if t.boundary_loss == "auto" else t.boundary_loss,
                                   "boundary loss")
        self.require_boundary = t.boundary_loss not in ("auto", "none")
        if self.boundary is not None and self.require_boundary and self.mode != "multiclass":
            raise ConfigError(f"train.boundary_loss {t.boundary_loss!r} needs a multiclass task; this one is "
                              f"{self.mode}: set train.boundary_loss: none")
        self.collate = functools.partial(pad_collate, ignore_index=d.ignore_index)
        self.score_columns = ("miou", "mean_dice") if self.mode == "multilabel" else (
            "miou", "pixel_accuracy", "mean_dice")

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def dataset(self, split: str, *, train: bool) -> Dataset:
        return build_dataset(reader_cfg(self.cfg), split, train=train)

    def datasets(self) -> tuple[Dataset, Dataset]:
        d = self.cfg.data
        return EpochSeeded(self.dataset(d.train_split, train=True)), self.dataset(d.val_split, train=False)

    def target(self, mask: Tensor) -> Tensor:
        """The loss target of a ``(N, H, W)`` mask batch: labels, 0/1 floats, or ``(N, C, H, W)`` bits."""
        if self.mode == "multilabel":
            return bits_to_multilabel(mask, self.cfg.data.num_classes, ignore_index=self.cfg.data.ignore_index)
        return mask

    def forward(self, model: nn.Module, batch: Any, *, device: torch.device, amp: str,
                memory_format: torch.memory_format) -> StepOutput:
        image = batch["image"].to(device, memory_format=memory_format, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        with autocast(device, amp):
            output = model(image)
        output = override_aux(output, self.cfg.train.aux_weight)
        loss = compute_loss(self.loss_fn, output, self.target(mask))
        terms = dict(getattr(self.loss_fn, "last_terms", {}))
        has_boundary = isinstance(output, SegmentationOutput) and output.boundary is not None
        if self.require_boundary and not has_boundary:
            raise ConfigError(f"train.boundary_loss is {self.cfg.train.boundary_loss!r} but model "
                              f"{self.cfg.model.name!r} has no boundary output; use gscnn or boundary_loss: auto")
        if self.boundary is not None and has_boundary and self.mode == "multiclass":
            for name, value in self.boundary(output, mask, ignore_index=self.cfg.data.ignore_index).items():
                loss = loss + value
                terms[name] = float(value.detach())
        logits = output.logits if isinstance(output, SegmentationOutput) else output
        return StepOutput(loss=loss, terms=terms, images=image.shape[0], logits=logits)

    def batch_names(self, batch: Any) -> list[str]:
        return list(batch["name"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, progress: bool = True) -> Evaluation:
        d = self.cfg.data
        if self.mode == "multilabel":
            scores = evaluate_multilabel(model, loader, num_classes=d.num_classes, ignore_index=d.ignore_index,
                                         device=device, amp=amp, channels_last=channels_last, progress=progress)
            return Evaluation(scores={k: scores[k] for k in self.score_columns}, best=scores["miou"],
                              details=scores)
        cm = evaluate(model, loader, num_classes=max(d.num_classes, 2), ignore_index=d.ignore_index, device=device,
                      amp=amp, channels_last=channels_last, progress=progress, mode=self.mode)
        scores = cm.compute()
        return Evaluation(scores={k: scores[k] for k in self.score_columns}, best=scores["miou"], details=scores,
                          confusion=cm)

    def model_meta(self) -> dict[str, Any]:
        return model_meta(self.cfg)

    def class_names(self) -> list[str]:
        """One name per scored class (binary: background and the one named class)."""
        names = class_names(self.cfg.data)
        return ["background", *names] if self.mode == "binary" and len(names) == 1 else names

    def exporter(self) -> Any:
        """:func:`pixelwise.export.export_onnx`: (dynamic sizes, parity-checked)."""
        return build_exporter(self.name)

    def predictor(self, source: Any, **options: Any) -> Any:
        """A :class:`~pixelwise.infer.segmenter.Segmenter` for a model folder or a model of this
        config (``options``: ``device``, ``amp``, ``channels_last``; ``backend`` for a folder)."""
        return build_predictor(self.name, source, self.model_meta, **options)
