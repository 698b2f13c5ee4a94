"""Box-supervised training: train on pseudo-masks, predict, refine them inside the boxes, repeat.

The loop of BoxSup (Dai et al., ICCV 2015) with the box constraints and reset rule of
Simple Does It (Khoreva et al., CVPR 2017); see :mod:`pixelwise.recipes.weak.boxes` for the label
side. Training is in-memory (the whole training set is an array) and goes through the one
training loop (:func:`pixelwise.train.fit.fit`). Pseudo-masks made here can also be written
to disk as PNG masks and trained on with ``pixelwise train`` like any folder dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from ...data import EpochSeeded
from ...errors import DataError, PixelwiseError, TrainingError
from ...metrics import ConfusionMatrix
from ...runtime import autocast
from ...tasks.base import Evaluation, StepOutput
from ...train.fit import fit as train_fit
from .boxes import IGNORE, PSEUDO_MODES, box_object_masks, boxes_from_mask, paint_boxes, refine_pseudo_mask

__all__ = ["BoxTrainingResult", "fit", "predict", "pseudo_label_scores", "synthetic_arrays", "train_from_boxes"]


@dataclass
class BoxTrainingResult:
    """What :func:`train_from_boxes` returns.

    ``history`` has one entry per training round ``r = 0..rounds``: ``{"round", "pseudo_miou"
    (labels trained on vs the hidden true masks, ignored pixels left out), "pseudo_coverage"
    (fraction of pixels not ignored), "resets" (boxes sent back to their initial mask before
    this round), "val_miou"}``. ``pseudo`` is the last round's training labels ``(N, H, W)``.
    """

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    pseudo: np.ndarray | None = None


def synthetic_arrays(num_samples: int, *, image_size: int = 64, seed: int = 0,
                     max_objects: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, S, S, 3) uint8, masks (N, S, S) int64)`` from :class:`SyntheticShapes`."""
    from ...data.synthetic import SyntheticShapes

    data = SyntheticShapes(num_samples, image_size=image_size, seed=seed, max_objects=max_objects)
    pairs = [data.generate(i) for i in range(num_samples)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def pseudo_label_scores(pseudo: np.ndarray, truth: np.ndarray, *, num_classes: int,
                        ignore_index: int = IGNORE) -> dict[str, float]:
    """mIoU of pseudo-labels against the true masks over the pixels the pseudo-labels keep.

    IoU is symmetric in its two arguments, so the pseudo-labels are passed as the *target*
    of :class:`ConfusionMatrix`; that way its ``ignore_index`` drops their ignored pixels.
    """
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    cm.update(torch.from_numpy(truth).long(), torch.from_numpy(pseudo).long())
    return {"pseudo_miou": cm.compute()["miou"], "pseudo_coverage": float((pseudo != ignore_index).mean())}


def _to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)``, about zero mean and unit scale."""
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


def _autocast(amp: bool, device: torch.device):
    """bf16 on the CPU, fp16 on CUDA (the engine's rules, incl. the fp32 fallback on CPUs without bf16)."""
    return autocast(device, ("bf16" if device.type == "cpu" else "fp16") if amp else "none")


def fit(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, steps: int, batch_size: int = 8,
        lr: float = 3e-3, weight_decay: float = 1e-4, amp: bool = False, seed: int = 0,
        ignore_index: int = IGNORE, device: str | torch.device = "cpu") -> list[float]:
    """Train ``model`` in place on in-memory ``images (N, H, W, 3) uint8`` and ``labels (N, H, W)``.

    AdamW with a cosine learning-rate decay, random horizontal and vertical flips, cross-entropy
    that skips ``ignore_index``. Returns the loss of every step.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise DataError(f"fit: {len(images)} images and {len(labels)} label maps; need the same non-zero number")
    device = torch.device(device)
    task = _PseudoMaskTask(model, _to_input(images), torch.from_numpy(labels).long(), ignore_index=ignore_index,
                           seed=seed)
    amp_name = ("bf16" if device.type == "cpu" else "fp16") if amp else "none"
    try:
        rows, _ = train_fit(task, steps=steps, batch_size=min(batch_size, len(images)), lr=lr, optimizer="adamw",
                         weight_decay=weight_decay, schedule="cosine", seed=seed, device=str(device), amp=amp_name)
    except TrainingError as err:
        raise TrainingError(f"fit: {err}; lower lr (now {lr})") from None
    return [row["loss"] for row in rows]


class _Arrays(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.x[index], "mask": self.y[index], "name": f"box_sample_{index}"}


class _PseudoMaskTask:
    """Training on in-memory pseudo-masks as a task of the one training loop: cross-entropy that
    skips ``ignore_index``, random horizontal and vertical flips per batch."""

    name = "box-supervision"
    best_key = "best_neg_loss"
    score_columns = ("loss",)

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, ignore_index: int, seed: int) -> None:
        self.model, self.data, self.ignore_index = model, _Arrays(x, y), ignore_index
        self.generator = torch.Generator().manual_seed(seed)
        self.collate = default_collate

    def build_model(self) -> nn.Module:
        return self.model  # trained in place

    def dataset(self, split: str, *, train: bool) -> Dataset:
        return self.data

    def datasets(self):
        return EpochSeeded(self.data), _Arrays(self.data.x[:1], self.data.y[:1])

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Models with auxiliary outputs return a SegmentationOutput in training mode; the main logits suffice.
        logits = logits if isinstance(logits, torch.Tensor) else logits.logits
        if (y != self.ignore_index).any():
            return F.cross_entropy(logits.float(), y, ignore_index=self.ignore_index)
        return logits.sum() * 0.0  # an all-ignored batch: no signal, but no NaN either

    def forward(self, model: nn.Module, batch, *, device: torch.device, amp: str, memory_format) -> StepOutput:
        x, y = batch["image"], batch["mask"]
        flips = torch.rand(2, generator=self.generator)
        if flips[0] < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if flips[1] < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        x, y = x.to(device), y.to(device)
        with autocast(device, amp):
            logits = model(x)
        return StepOutput(loss=self._loss(logits, y), terms={}, images=len(x))

    def batch_names(self, batch) -> list[str]:
        return list(batch["name"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, progress: bool = False) -> Evaluation:
        return Evaluation(scores={"loss": math.nan}, best=0.0)  # rounds are scored by train_from_boxes

    def model_meta(self) -> dict:
        return {"task": "box-supervision"}

    def class_names(self) -> list[str]:
        return []


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, *, batch_size: int = 16, amp: bool = False,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Argmax labels ``(N, H, W)`` int64 of ``model`` on ``images (N, H, W, 3) uint8``."""
    device = torch.device(device)
    model.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = _to_input(images[start:start + batch_size]).to(device)
        with _autocast(amp, device):
            logits = model(x)
        out.append(logits.float().argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), dtype=np.int64)


def _miou(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    cm = ConfusionMatrix(num_classes, ignore_index=IGNORE)
    cm.update(torch.from_numpy(pred), torch.from_numpy(truth).long())
    return cm.compute()["miou"]


def train_from_boxes(*, train_images: np.ndarray, train_boxes: list[np.ndarray] | None = None,
                     train_masks: np.ndarray | None = None, val_images: np.ndarray, val_masks: np.ndarray,
                     num_classes: int, model_factory: Callable[[], nn.Module], pseudo: str = "grabcut",
                     rounds: int = 2, steps_per_round: int = 300, batch_size: int = 8, lr: float = 3e-3,
                     min_fraction: float = 0.2, reinit: bool = False, inner_fraction: float = 0.5,
                     grabcut_min_fraction: float = 0.15, amp: bool = False, seed: int = 0,
                     device: str | torch.device = "cpu",
                     log: Callable[[str], None] | None = None) -> BoxTrainingResult:
    """Weakly supervised training from boxes, with ``rounds`` of recursive label refinement.

    Round 0 trains on the initial pseudo-masks (``pseudo``, one of :data:`PSEUDO_MODES`).
    Each later round predicts on the training images, refines the labels with
    :func:`refine_pseudo_mask` (prediction ∩ box, reset to the initial mask when less than
    ``min_fraction`` of a box survives; box pixels not kept become background, or ignore
    for the ``*-ignore`` modes) and trains again: from the current weights, as BoxSup
    alternates, or from scratch with ``reinit=True``, as Simple Does It's recursive rounds.

    Args:
        train_images: ``(N, H, W, 3)`` uint8.
        train_boxes: ``N`` arrays ``(K_i, 5)``; derived from ``train_masks`` when None.
        train_masks: the hidden true masks ``(N, H, W)``, used only to *score* the
            pseudo-labels (and to derive boxes when ``train_boxes`` is None).
        val_images, val_masks: validation set, fully labelled.
        model_factory: builds a fresh model with ``num_classes`` outputs, e.g.
            ``lambda: create_model("unet", num_classes=5, base_channels=8, depth=3)``.

    Returns:
        :class:`BoxTrainingResult` with the model and the per-round history.
    """
    if pseudo not in PSEUDO_MODES:
        raise PixelwiseError(f"pseudo={pseudo!r} is unknown; choose one of {PSEUDO_MODES}")
    if rounds < 0:
        raise PixelwiseError(f"rounds must be >= 0, got {rounds}")
    if train_boxes is None:
        if train_masks is None:
            raise PixelwiseError("train_from_boxes: pass train_boxes, or train_masks to derive them from")
        train_boxes = [boxes_from_mask(m) for m in train_masks]
    if len(train_boxes) != len(train_images):
        raise DataError(f"{len(train_images)} training images but {len(train_boxes)} box lists")
    say = log or (lambda _msg: None)
    height, width = train_images.shape[1:3]
    uncertain = "ignore" if pseudo.endswith("-ignore") else "background"
    initial = [box_object_masks(img, b, mode=pseudo, inner_fraction=inner_fraction,
                                grabcut_min_fraction=grabcut_min_fraction, seed=seed)
               for img, b in zip(train_images, train_boxes)]
    labels = np.stack([paint_boxes(b, objs, height, width, uncertain=uncertain)
                       for b, objs in zip(train_boxes, initial)])
    torch.manual_seed(seed)
    model = model_factory()
    result = BoxTrainingResult(model=model)
    resets = 0
    for r in range(rounds + 1):
        if r > 0:
            preds = predict(model, train_images, amp=amp, device=device)
            refined = [refine_pseudo_mask(p, b, objs, min_fraction=min_fraction, uncertain=uncertain)
                       for p, b, objs in zip(preds, train_boxes, initial)]
            labels = np.stack([m for m, _ in refined])
            resets = sum(n for _, n in refined)
            if reinit:
                torch.manual_seed(seed + r)
                model = result.model = model_factory()
        entry: dict = {"round": r, "resets": resets}
        if train_masks is not None:
            entry.update(pseudo_label_scores(labels, train_masks, num_classes=num_classes))
        fit(model, train_images, labels, steps=steps_per_round, batch_size=batch_size, lr=lr, amp=amp,
            seed=seed + r, device=device)
        entry["val_miou"] = _miou(predict(model, val_images, amp=amp, device=device), val_masks, num_classes)
        result.history.append(entry)
        say(f"round {r}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in entry.items() if k != "round"))
    result.pseudo = labels
    return result
