"""How unsure a model is about an image, to label the most useful images first (active learning).

Two standard per-pixel measures on the softmax probabilities ``p`` of ``C`` classes
(Settles, "Active Learning Literature Survey", 2009, section 3.1):

- entropy: ``H = -sum_c p_c log p_c``, divided by ``log C`` so it lies in [0, 1];
- margin: ``1 - (p_(1) - p_(2))``, one minus the gap between the two most probable
  classes (Scheffer et al., 2001), also in [0, 1].

An image's score is the mean over its pixels; the image with the highest score is the one
the model would learn most from being told.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MEASURES", "pixel_uncertainty", "image_uncertainty", "rank_by_uncertainty"]

MEASURES: tuple[str, ...] = ("entropy", "margin")


def pixel_uncertainty(probs: np.ndarray, measure: str = "entropy") -> np.ndarray:
    """``(C, H, W)`` probabilities -> ``(H, W)`` float32 uncertainty in [0, 1]."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"pixel_uncertainty needs (C, H, W) probabilities with C >= 2, got shape {probs.shape}")
    if measure == "entropy":
        p = np.clip(probs, 1e-12, 1.0)  # 0 log 0 = 0; the clip changes nothing else measurably
        return (-(probs * np.log(p)).sum(0) / np.log(probs.shape[0])).clip(0.0, 1.0).astype(np.float32)
    if measure == "margin":
        top2 = np.partition(probs, probs.shape[0] - 2, axis=0)[-2:]
        return (1.0 - (top2[1] - top2[0])).clip(0.0, 1.0).astype(np.float32)
    raise ValueError(f"uncertainty measure {measure!r} is not known; use one of {MEASURES}")


def image_uncertainty(probs: np.ndarray) -> dict[str, float]:
    """Both measures of one image, averaged over its pixels."""
    return {m: float(pixel_uncertainty(probs, m).mean()) for m in MEASURES}


def rank_by_uncertainty(scores: dict[str, dict[str, float]], candidates: list[str], *,
                        measure: str = "entropy") -> list[str]:
    """``candidates`` that have a score, most uncertain first (ties: by name, so the order is stable)."""
    if measure not in MEASURES:
        raise ValueError(f"uncertainty measure {measure!r} is not known; use one of {MEASURES}")
    scored = [n for n in candidates if n in scores and measure in scores[n]]
    return sorted(scored, key=lambda n: (-scores[n][measure], n))
