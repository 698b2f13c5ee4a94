"""The instance segmentation task (Mask R-CNN): what differs from other tasks and nothing else.

Build the network from a config, the dataset of a split with its transform, the class
names, the saved-model metadata, and COCO box + mask AP evaluation (+ OKS keypoint AP for a
model with a keypoint branch, ``model.args.num_keypoints > 0``, on a dataset whose
``keypoint_spec`` names its keypoints). The training loop in :mod:`pixelwise.train.loop` and
prediction in :mod:`pixelwise.infer.instance` use these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import config as config_mod
from ..config import ExperimentCfg
from ..data import EpochSeeded
from ..data.instances import InstanceTransform, instance_collate
from ..data.keypoints import KeypointSpec
from ..errors import ConfigError
from ..hub import load_model, read_config
from ..metrics.coco import KEYPOINT_STATS, STATS, coco_evaluate, coco_ground_truth, coco_results
from ..models.maskrcnn import create_instance_model
from ..registry import DATASETS, INSTANCE_MODELS, TASKS, lookup, register
from ..runtime import autocast
from .base import Evaluation, StepOutput, build_exporter, build_predictor
from .semantic import model_kwargs

__all__ = [
    "build_instance_dataset",
    "build_instance_model",
    "instance_class_names",
    "is_instance_model",
    "load_instance_model",
    "evaluate_instances",
    "format_scores",
    "instance_meta",
]


def is_instance_model(name: str) -> bool:
    """Whether ``name`` is an instance segmentation model (trained and evaluated here)."""
    return name in INSTANCE_MODELS


def build_instance_model(cfg: ExperimentCfg) -> nn.Module:
    """``create_instance_model`` from the ``model`` section; classes and normalisation from ``data``."""
    kwargs = model_kwargs(cfg, image_mean=list(cfg.data.mean), image_std=list(cfg.data.std))
    return create_instance_model(cfg.model.name, **kwargs)


def build_instance_dataset(cfg: ExperimentCfg, split: str, *, train: bool) -> Dataset:
    """The ``split`` of ``data.dataset`` with an :class:`InstanceTransform` (scale + flips when training)."""
    try:
        builder = lookup(DATASETS, cfg.data.dataset, "dataset")
    except KeyError as err:
        raise ConfigError(f"data.dataset: {err.args[0]}") from None
    transform = InstanceTransform(train=train and cfg.data.augment != "none")
    return builder(cfg.data, split, train=train, transform=transform)


def instance_class_names(cfg: ExperimentCfg, dataset: Dataset | None = None) -> list[str]:
    """``data.class_names``, else the dataset's ``class_names``, else ``class_0..``; index 0 is background."""
    names = cfg.data.class_names or getattr(dataset, "class_names", None)
    names = list(names) if names is not None else [f"class_{i}" for i in range(cfg.data.num_classes)]
    if len(names) != cfg.data.num_classes:
        raise ConfigError(f"{len(names)} class names {names} but data.num_classes is {cfg.data.num_classes}; "
                          f"they must match (background included)")
    return [str(n) for n in names]


def load_instance_model(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """:func:`pixelwise.hub.load_model` that refuses a semantic model. Returns ``(model in eval mode, config)``."""
    config = read_config(folder)
    name = config.get("model", {}).get("name")
    if not is_instance_model(str(name)):
        raise ConfigError(f"{str(folder)!r} holds a {name!r} model, not an instance model "
                          f"({', '.join(sorted(INSTANCE_MODELS))}); load it with pixelwise.load")
    return load_model(folder, device=device)


def instance_meta(cfg: ExperimentCfg, names: list[str], keypoints: KeypointSpec | None = None) -> dict[str, Any]:
    """What a saved instance model records besides its weights (task, classes, normalisation, the
    keypoint set's names / sigmas / flip maps / skeleton, config)."""
    data = {"num_classes": cfg.data.num_classes, "class_names": names, "mean": cfg.data.mean, "std": cfg.data.std}
    if keypoints is not None:
        data["keypoints"] = keypoints.to_dict()
    return {"task": "instance", "data": data, "experiment": config_mod.to_dict(cfg)}


def check_keypoints(num_keypoints: int, spec: KeypointSpec | None, dataset: str) -> None:
    """A keypoint model needs a dataset with that many keypoints, and a keypoint dataset a keypoint model."""
    if num_keypoints > 0 and spec is None:
        raise ConfigError(f"model.args.num_keypoints is {num_keypoints} but data.dataset {dataset!r} has no keypoints; "
                          f"set data.args.keypoints: true (synthetic_instances, 5 per shape), use dataset "
                          f"coco_keypoints (COCO person_keypoints files), or remove model.args.num_keypoints")
    if spec is not None and num_keypoints != spec.count:
        raise ConfigError(f"data.dataset {dataset!r} has {spec.count} keypoints {spec.names} but "
                          f"model.args.num_keypoints is {num_keypoints}; set model.args.num_keypoints: {spec.count}"
                          + (" (or train masks only with dataset coco_instances / without data.args.keypoints)"
                             if num_keypoints == 0 else ""))


def _gather(ground_truth: dict, results: list[dict]) -> tuple[dict, list[dict]]:
    """Every process's ground truth and detections in every process, image and annotation ids
    renumbered (each process counted its own from 1). A no-op without torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return ground_truth, results
    shards: list = [None] * dist.get_world_size()
    dist.all_gather_object(shards, (ground_truth, results))
    images, annotations, merged = [], [], []
    for gt, res in shards:
        offset = len(images)
        images += [{**im, "id": im["id"] + offset} for im in gt["images"]]
        annotations += [{**a, "id": len(annotations) + k + 1, "image_id": a["image_id"] + offset}
                        for k, a in enumerate(gt["annotations"])]
        merged += [{**r, "image_id": r["image_id"] + offset} for r in res]
    return {**ground_truth, "images": images, "annotations": annotations}, merged


@torch.no_grad()
def evaluate_instances(model: nn.Module, loader: DataLoader, *, class_names: list[str],
                       device: torch.device | str = "cpu", amp: str = "none", mask_threshold: float = 0.5,
                       progress: bool = True, keypoint_sigmas: list[float] | None = None
                       ) -> dict[str, dict[str, float]]:
    """COCO box and mask AP of ``model`` on ``loader`` (batches from ``instance_collate``).

    Returns ``{"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...}}``, plus
    ``"keypoints": {AP, AP50, AP75, APm, APl}`` (OKS AP with ``keypoint_sigmas``) when
    ``keypoint_sigmas`` is given, the model predicts keypoints and the targets carry them. Under
    torch.distributed each process scores its shard and the COCO evaluation sees them all.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    targets, sizes, results = [], [], []
    with_keypoints = keypoint_sigmas is not None and int(getattr(model, "config", {}).get("num_keypoints", 0)) > 0
    for images, batch_targets in tqdm(loader, desc="eval", leave=False, disable=not progress):
        with autocast(device, amp):
            outputs = model([image.to(device) for image in images])
        for image, target, out in zip(images, batch_targets, outputs):
            # Our own running id: a dataset's ids need not be unique across splits or shards.
            target = {**target, "image_id": len(targets) + 1}
            targets.append(target)
            sizes.append(tuple(image.shape[-2:]))
            with_keypoints = with_keypoints and "keypoints" in target
            results += coco_results(target["image_id"], out.boxes.float(), out.labels, out.scores.float(),
                                    out.masks.float(), mask_threshold=mask_threshold,
                                    keypoints=out.keypoints.float() if with_keypoints else None,
                                    keypoint_scores=out.keypoint_scores.float() if with_keypoints else None)
    model.train(was_training)
    ground_truth, results = _gather(coco_ground_truth(targets, sizes, class_names), results)
    iou_types = ("bbox", "segm", "keypoints") if with_keypoints else ("bbox", "segm")
    return coco_evaluate(ground_truth, results, iou_types=iou_types, sigmas=keypoint_sigmas)


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per IoU type, one column per COCO statistic."""
    lines = [f"{'':9s}" + "".join(f"{name:>8s}" for name in STATS)]
    for iou_type, label in (("bbox", "box"), ("segm", "mask"), ("keypoints", "keypoint")):
        if iou_type in scores:
            lines.append(f"{label:9s}" + "".join(f"{scores[iou_type][name]:8.4f}" if name in scores[iou_type]
                                                 else f"{'-':>8s}" for name in STATS))
    return "\n".join(lines)


@register(TASKS, "instance")
class InstanceTask:
    """Instance segmentation (Mask R-CNN) for :mod:`pixelwise.train.loop`. ``train.loss`` is not
    used: Mask R-CNN sums its own losses (RPN objectness and box, classifier, box, mask), which
    are the logged terms (``loss_classifier``, ``loss_mask``, ``loss_keypoint``, ...). Validation is
    COCO box and mask AP (+ OKS keypoint AP, columns ``keypoint_AP``, ...); ``best/`` keeps the
    highest mask AP."""

    name = "instance"
    best_key = "best_mask_ap"
    collate = staticmethod(instance_collate)

    def __init__(self, cfg: ExperimentCfg) -> None:
        self.cfg = cfg
        self._names: list[str] | None = None
        self._keypoints: tuple[KeypointSpec | None] | None = None  # (spec,) once a dataset was built
        self.num_keypoints = int(cfg.model.args.get("num_keypoints", 0) or 0)
        columns = [f"{kind}_{k}" for kind in ("box", "mask") for k in STATS]
        if self.num_keypoints > 0:
            columns += [f"keypoint_{k}" for k in KEYPOINT_STATS]
        self.score_columns = tuple(columns)

    def keypoint_spec(self) -> KeypointSpec | None:
        """The dataset's keypoint set (names, OKS sigmas, flip maps), or None without keypoints."""
        if self._keypoints is None:
            self.dataset(self.cfg.data.val_split, train=False)
        return self._keypoints[0]

    def build_model(self) -> nn.Module:
        check_keypoints(self.num_keypoints, self.keypoint_spec(), self.cfg.data.dataset)
        return build_instance_model(self.cfg)

    def dataset(self, split: str, *, train: bool) -> Dataset:
        dataset = build_instance_dataset(self.cfg, split, train=train)
        if self._names is None:
            self._names = instance_class_names(self.cfg, dataset)
        if self._keypoints is None:
            self._keypoints = (getattr(dataset, "keypoint_spec", None),)
        return dataset

    def datasets(self) -> tuple[Dataset, Dataset]:
        d = self.cfg.data
        val = self.dataset(d.val_split, train=False)
        return EpochSeeded(self.dataset(d.train_split, train=True)), val

    def forward(self, model: nn.Module, batch: Any, *, device: torch.device, amp: str,
                memory_format: torch.memory_format) -> StepOutput:
        images, targets = batch
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in tg.items()} for tg in targets]
        with autocast(device, amp):
            losses = model(images, targets)
        losses = {k: v.float() for k, v in losses.items()}
        terms = {k.removeprefix("loss_"): float(v.detach()) for k, v in losses.items()}
        return StepOutput(loss=sum(losses.values()), terms=terms, images=len(images))

    def exporter(self) -> Any:
        """:func:`pixelwise.export.export_instance_onnx`: (one image size, parity-checked)."""
        return build_exporter(self.name)

    def predictor(self, source: Any, **options: Any) -> Any:
        """An :class:`~pixelwise.infer.instance_predictor.InstancePredictor` for a model folder or a
        model of this config (``options``: ``device``, ``amp``)."""
        return build_predictor(self.name, source, self.model_meta, **options)

    def batch_names(self, batch: Any) -> list[str]:
        return [str(tg.get("name", tg.get("image_id"))) for tg in batch[1]]

    def evaluate(self, model: nn.Module, loader: DataLoader, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, progress: bool = True) -> Evaluation:
        spec = self.keypoint_spec()
        scores = evaluate_instances(model, loader, class_names=self.class_names(), device=device, amp=amp,
                                    progress=progress, keypoint_sigmas=spec.sigmas if spec is not None else None)
        columns = {f"box_{k}": v for k, v in scores["bbox"].items()}
        columns.update({f"mask_{k}": v for k, v in scores["segm"].items()})
        columns.update({f"keypoint_{k}": v for k, v in scores.get("keypoints", {}).items()})
        return Evaluation(scores=columns, best=scores["segm"]["AP"], details=scores)

    def model_meta(self) -> dict[str, Any]:
        return instance_meta(self.cfg, self.class_names(), self.keypoint_spec())

    def class_names(self) -> list[str]:
        if self._names is None:
            self._names = instance_class_names(self.cfg)
        return self._names
