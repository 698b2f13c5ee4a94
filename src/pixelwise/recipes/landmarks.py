"""Landmark (keypoint) localisation with heatmaps, as the stacked hourglass paper does it.

Newell, Yang & Deng (ECCV 2016) regress one heatmap per keypoint: the target is a 2D
Gaussian (sigma = 1 px at their 64×64 output) centred on the keypoint, the loss is the mean
squared error, applied to every stack's output (intermediate supervision), and the
prediction is the heatmap's maximum, moved a quarter pixel towards the higher neighbour.
This module gives the targets, both decoders (that argmax and a differentiable soft-argmax),
the PCK metric, a synthetic landmark dataset and a short training loop:

    model = create_model("hourglass", num_classes=4, channels=64, num_stacks=2)
    history = train_landmarks(model, SyntheticLandmarks(512), steps=500)

Coordinates are ``(x, y)`` in pixels of the input image, pixel centres at integers.
"""

from __future__ import annotations

import math
import os
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from ..models import SegmentationOutput
from ..tasks.base import Evaluation, StepOutput

__all__ = ["gaussian_heatmaps", "decode_heatmaps", "pck", "SyntheticLandmarks", "LANDMARK_NAMES",
           "heatmap_loss", "train_landmarks", "evaluate_landmarks"]

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth")


def gaussian_heatmaps(points: Tensor, size: tuple[int, int], sigma: float = 1.5,
                      visible: Tensor | None = None) -> Tensor:
    """Gaussian target maps, peak 1 at each keypoint.

    Args:
        points: ``(..., K, 2)`` keypoint ``(x, y)`` pixel coordinates.
        size: output ``(H, W)``.
        sigma: Gaussian standard deviation in pixels.
        visible: ``(..., K)`` bool; invisible keypoints get an all-zero map.

    Returns:
        ``(..., K, H, W)`` float32.
    """
    h, w = size
    ys = torch.arange(h, dtype=torch.float32, device=points.device).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32, device=points.device).view(1, w)
    px = points[..., 0, None, None].float()
    py = points[..., 1, None, None].float()
    maps = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma ** 2))
    if visible is not None:
        maps = maps * visible[..., None, None].to(maps.dtype)
    return maps


def decode_heatmaps(heatmaps: Tensor, method: str = "argmax", beta: float = 20.0) -> Tensor:
    """Keypoint coordinates from heatmaps.

    ``argmax``: the maximum, shifted 0.25 px towards the higher neighbour along x and y
    (Newell et al. 2016, Sec. 3.2). ``soft``: soft-argmax, the expectation of the pixel
    coordinates under ``softmax(beta * heatmap)`` (differentiable; ``beta`` trades the pull
    of the background against sub-pixel precision). ``integral``: the expectation under the
    heatmap itself, clipped at 0 and normalised (integral regression, Sun et al. 2018);
    exact for a symmetric peak away from the border.

    Args:
        heatmaps: ``(N, K, H, W)``.

    Returns:
        ``(N, K, 2)`` float ``(x, y)``.
    """
    n, k, h, w = heatmaps.shape
    if method in ("soft", "integral"):
        flat = heatmaps.float().reshape(n, k, -1)
        if method == "soft":
            prob = torch.softmax(beta * flat, dim=-1)
        else:
            prob = flat.clamp_min(0) / flat.clamp_min(0).sum(-1, keepdim=True).clamp_min(1e-12)
        prob = prob.reshape(n, k, h, w)
        xs = torch.arange(w, dtype=prob.dtype, device=prob.device)
        ys = torch.arange(h, dtype=prob.dtype, device=prob.device)
        return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)
    if method != "argmax":
        raise ConfigError(f"decode method {method!r} is unknown; use 'argmax', 'soft' or 'integral'")
    flat = heatmaps.reshape(n, k, -1).argmax(-1)
    y, x = flat // w, flat % w
    hm = heatmaps.float().reshape(n, k, -1)

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return hm.gather(-1, (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1))[..., None]).squeeze(-1)

    dx = torch.sign(at(y, x + 1) - at(y, x - 1)) * ((x > 0) & (x < w - 1))
    dy = torch.sign(at(y + 1, x) - at(y - 1, x)) * ((y > 0) & (y < h - 1))
    return torch.stack([x + 0.25 * dx, y + 0.25 * dy], dim=-1).float()


def pck(pred: Tensor, target: Tensor, visible: Tensor | None = None, *, alpha: float = 0.1,
        reference: Tensor | float | None = None) -> float:
    """Percentage of Correct Keypoints: share of visible keypoints within ``alpha * reference`` px.

    ``reference`` is a per-sample length ``(N,)`` (or one number); default: the larger side
    of each sample's ground-truth keypoint bounding box (the common "PCK@alpha of the bbox").
    """
    if visible is None:
        visible = torch.ones(target.shape[:-1], dtype=torch.bool, device=target.device)
    if reference is None:
        span = target.amax(1) - target.amin(1)  # (N, 2)
        reference = span.amax(-1).clamp_min(1.0)
    ref = torch.as_tensor(reference, dtype=torch.float32, device=target.device)
    ref = ref.view(-1, 1) if ref.ndim == 1 else ref
    hit = ((pred - target).norm(dim=-1) <= alpha * ref) & visible
    return float(hit.sum()) / max(1, int(visible.sum()))


class SyntheticLandmarks(Dataset):
    """Generated "faces": an ellipse head with eyes, nose and mouth on a textured background.

    Four landmarks (:data:`LANDMARK_NAMES`); the face is randomly placed, scaled, rotated
    (±40°, so left and right stay distinguishable) and coloured. Sample ``i`` comes from
    ``np.random.default_rng([seed, i])``.

    Each item: ``{"image": (3, S, S) float 0..1, "points": (4, 2) float (x, y), "visible": (4,) bool}``.
    """

    def __init__(self, num_samples: int, image_size: int = 64, seed: int = 0) -> None:
        if image_size < 32:
            raise ConfigError(f"SyntheticLandmarks: image_size must be >= 32, got {image_size}")
        self.num_samples, self.image_size, self.seed = num_samples, image_size, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        s = self.image_size
        img = (rng.uniform(40, 200, 3) + rng.normal(0, 18, (s, s, 3))).clip(0, 255).astype(np.uint8)
        radius = rng.uniform(0.22, 0.36) * s
        cx, cy = rng.uniform(radius, s - radius, 2)
        angle = math.radians(rng.uniform(-40, 40))
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        # Landmarks in the face's own frame (units of the head radius), y pointing down.
        local = np.array([[-0.38, -0.25], [0.38, -0.25], [0.0, 0.12], [0.0, 0.5]])
        points = (local * radius) @ rot.T + [cx, cy]
        skin = tuple(int(v) for v in rng.uniform(80, 255, 3))
        cv2.ellipse(img, (int(round(cx * 16)), int(round(cy * 16))),
                    (int(radius * 0.8 * 16), int(radius * 16)), math.degrees(angle), 0, 360, skin, -1,
                    cv2.LINE_AA, shift=4)
        dark = tuple(int(v) for v in rng.uniform(0, 60, 3))
        for (x, y), r in zip(points, (0.12, 0.12, 0.08, 0.1)):
            cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), int(r * radius * 16), dark, -1,
                       cv2.LINE_AA, shift=4)
        image = torch.from_numpy(img).permute(2, 0, 1).float() / 255
        return {"image": image, "points": torch.tensor(points, dtype=torch.float32),
                "visible": torch.ones(len(local), dtype=torch.bool)}


def heatmap_loss(output: Tensor | SegmentationOutput, target: Tensor) -> Tensor:
    """MSE between predicted and target heatmaps, on every stack (intermediate supervision)."""
    if isinstance(output, SegmentationOutput):
        loss = F.mse_loss(output.logits.float(), target)
        for aux, weight in zip(output.aux, output.aux_weights):
            loss = loss + weight * F.mse_loss(aux.float(), target)
        return loss
    return F.mse_loss(output.float(), target)


@torch.no_grad()
def evaluate_landmarks(model: nn.Module, dataset: Dataset, *, batch_size: int = 32, alpha: float = 0.1,
                       method: str = "argmax") -> dict[str, float]:
    """PCK@alpha (bbox reference) and mean pixel error of ``model`` on ``dataset``."""
    was = model.training
    model.eval()
    preds, gts, vis = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        preds.append(decode_heatmaps(model(batch["image"]), method))
        gts.append(batch["points"])
        vis.append(batch["visible"])
    model.train(was)
    pred, gt, visible = torch.cat(preds), torch.cat(gts), torch.cat(vis)
    error = (pred - gt).norm(dim=-1)[visible].mean().item()
    return {"pck": pck(pred, gt, visible, alpha=alpha), "mean_error_px": error}


class _Cycle(Dataset):
    """``length`` samples cycling through ``dataset``: one epoch of the loop is then exactly
    ``length / batch_size`` steps (the recipe's evaluation interval)."""

    def __init__(self, dataset: Dataset, length: int) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


class LandmarkTask:
    """Heatmap regression (one Gaussian per landmark, MSE on every stack) as a task of the one
    training loop (:mod:`pixelwise.tasks.base`); scored by PCK on ``val`` when given."""

    name = "landmarks"
    best_key = "best_pck"
    score_columns = ("pck", "mean_error_px")

    def __init__(self, model: nn.Module, dataset: Dataset, *, sigma: float, val: Dataset | None,
                 epoch_samples: int) -> None:
        self.model, self.train_set, self.val, self.sigma = model, _Cycle(dataset, epoch_samples), val, sigma
        self.collate = torch.utils.data.default_collate

    def build_model(self) -> nn.Module:
        return self.model  # trained in place

    def dataset(self, split: str, *, train: bool) -> Dataset:
        return self.train_set if train or self.val is None else self.val

    def datasets(self) -> tuple[Dataset, Dataset]:
        from ..data import EpochSeeded

        return EpochSeeded(self.train_set), self.val if self.val is not None else self.train_set

    def forward(self, model: nn.Module, batch, *, device: torch.device, amp: str, memory_format) -> StepOutput:
        image = batch["image"].to(device)
        target = gaussian_heatmaps(batch["points"].to(device), tuple(image.shape[-2:]), self.sigma,
                                   batch["visible"].to(device))
        return StepOutput(loss=heatmap_loss(model(image), target), terms={}, images=len(image))

    def batch_names(self, batch) -> list[str]:
        return [f"{len(batch['image'])} landmark images"]

    def evaluate(self, model: nn.Module, loader, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, progress: bool = False) -> Evaluation:
        if self.val is None:
            return Evaluation(scores={"pck": math.nan, "mean_error_px": math.nan}, best=0.0)
        scores = evaluate_landmarks(model, self.val)
        return Evaluation(scores=scores, best=scores["pck"])

    def model_meta(self) -> dict[str, Any]:
        return {"task": "landmarks"}

    def class_names(self) -> list[str]:
        return []


def train_landmarks(model: nn.Module, dataset: Dataset, *, steps: int = 500, batch_size: int = 16,
                    lr: float = 2.5e-4 * 4, sigma: float = 1.5, val: Dataset | None = None,
                    eval_every: int = 0, seed: int = 0) -> list[dict[str, float]]:
    """Train a heatmap model (e.g. ``create_model("hourglass", num_classes=K)``) with MSE, in
    place, through the one training loop (:func:`pixelwise.train.fit.fit`).

    RMSProp as in the paper (their lr 2.5e-4 at batch 6; scaled here). Returns the history:
    one record per ``eval_every`` steps (and at the end) with the loss and, with ``val``, PCK.
    """
    from ..train.fit import fit

    every = eval_every if eval_every else steps
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun an epoch is every process's shard
    task = LandmarkTask(model, dataset, sigma=sigma, val=val, epoch_samples=every * batch_size * processes)
    _, validations = fit(task, steps=steps, batch_size=batch_size, lr=lr, optimizer="rmsprop", seed=seed,
                         val_every=1)
    history = []
    for row in validations:  # one per epoch = every `every` steps, and the last step
        record = {"step": int(row["step"]), "loss": row["train_loss"]}
        if val is not None:
            record.update(pck=row["pck"], mean_error_px=row["mean_error_px"])
        history.append(record)
    return history
