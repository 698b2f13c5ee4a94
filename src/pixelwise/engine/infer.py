"""Prediction: images in, label maps (and coloured masks and overlays) out."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.folder import IMAGE_SUFFIXES
from ..data.io import colorize, default_palette, overlay, read_image, write_image, write_mask
from ..errors import DataError
from .checkpoint import load_model
from .evaluate import autocast


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32, ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@torch.no_grad()
def predict_image(model: nn.Module, image: np.ndarray, *, mean: Sequence[float], std: Sequence[float],
                  device: torch.device | str = "cpu", amp: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Segment one ``(H, W, 3)`` uint8 RGB image.

    Returns ``(labels (H, W) int64, probabilities (C, H, W) float32)``.
    """
    device = torch.device(device)
    x = normalize(image, mean, std)[None].to(device)
    with autocast(device, amp):
        logits = model(x)
    probs = logits.float().softmax(1)[0]
    return probs.argmax(0).cpu().numpy(), probs.cpu().numpy()


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted). Missing paths are an error."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {str(p)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"input {str(p)!r} does not exist; pass image files or folders of images")
    return paths


def predict_paths(model_dir: str | Path, inputs: Iterable[str | Path], out_dir: str | Path, *,
                  device: str = "cpu", amp: str = "none", progress: bool = True) -> dict[str, list]:
    """Segment image files/folders with a saved model and write, per image ``NAME``:
    ``NAME.png`` (palette PNG of class indices), ``NAME_color.png`` and ``NAME_overlay.png``.

    A file that cannot be read is reported and skipped; outputs already written stay.
    Returns ``{"written": [names], "failed": [(path, reason)]}``.
    """
    model, config = load_model(model_dir, device=device)
    data = config["data"]
    palette = default_palette(max(256, data["num_classes"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for path in tqdm(expand_inputs(inputs), desc="predict", disable=not progress):
        try:
            image = read_image(path)
        except DataError as err:
            failed.append((str(path), str(err)))
            tqdm.write(f"skipped: {err}")
            continue
        labels, _ = predict_image(model, image, mean=data["mean"], std=data["std"], device=device, amp=amp)
        write_mask(out / f"{path.stem}.png", labels, palette)
        write_image(out / f"{path.stem}_color.png", colorize(labels, palette))
        write_image(out / f"{path.stem}_overlay.png", overlay(image, labels, palette))
        written.append(path.stem)
    return {"written": written, "failed": failed}
