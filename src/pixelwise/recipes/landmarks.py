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
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from ..models import SegmentationOutput

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


def train_landmarks(model: nn.Module, dataset: Dataset, *, steps: int = 500, batch_size: int = 16,
                    lr: float = 2.5e-4 * 4, sigma: float = 1.5, val: Dataset | None = None,
                    eval_every: int = 0, seed: int = 0) -> list[dict[str, float]]:
    """Train a heatmap model (e.g. ``create_model("hourglass", num_classes=K)``) with MSE.

    RMSProp as in the paper (their lr 2.5e-4 at batch 6; scaled here). Returns the history:
    one record per ``eval_every`` steps (and at the end) with the loss and, with ``val``, PCK.
    """
    torch.manual_seed(seed)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=lr)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    history: list[dict[str, float]] = []
    step = 0
    model.train()
    while step < steps:
        for batch in loader:
            image = batch["image"]
            target = gaussian_heatmaps(batch["points"], tuple(image.shape[-2:]), sigma, batch["visible"])
            loss = heatmap_loss(model(image), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if (eval_every and step % eval_every == 0) or step == steps:
                record = {"step": step, "loss": loss.item()}
                if val is not None:
                    record.update(evaluate_landmarks(model, val))
                history.append(record)
            if step >= steps:
                break
    return history
