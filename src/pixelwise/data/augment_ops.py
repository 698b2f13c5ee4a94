"""albumentations transforms of the augmentation presets (see :mod:`pixelwise.data.transforms`).

Kept apart from ``transforms`` so that importing pixelwise (for inference, export or serving)
does not import albumentations: it costs ~1.5 s and ~45 MiB of resident memory, and only
training-time augmentation needs it. :func:`pixelwise.data.transforms.build_transform`
imports this module when it builds a pipeline.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

__all__ = ["ChannelNormalize", "GridElastic", "PhotometricJitter"]


class GridElastic(A.DualTransform):
    """Elastic deformation from random displacements on a coarse grid, as in U-Net.

    Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation"
    (MICCAI 2015), Sec. 3.1: displacement vectors on a coarse 3x3 grid drawn from a
    Gaussian (10 px std on their ~570 px tiles), interpolated bicubically to a smooth
    per-pixel field. The std here is ``magnitude`` times the shorter image side so the
    deformation looks the same at any crop size.

    Args:
        grid: coarse grid points per side.
        magnitude: displacement std as a fraction of the shorter side (0.02 ~ the paper's).
        fill: image value for pixels pulled from outside the image.
        fill_mask: mask value for those pixels (the ignore index).
        p: probability of applying.
    """

    def __init__(self, grid: int = 3, magnitude: float = 0.02, fill: float = 0, fill_mask: float = 255,
                 p: float = 0.5) -> None:
        super().__init__(p=p)
        self.grid = grid
        self.magnitude = magnitude
        self.fill = fill
        self.fill_mask = fill_mask

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        std = self.magnitude * min(height, width)
        coarse = self.random_generator.normal(0.0, std, (2, self.grid, self.grid)).astype(np.float32)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        map_x = xx + cv2.resize(coarse[0], (width, height), interpolation=cv2.INTER_CUBIC)
        map_y = yy + cv2.resize(coarse[1], (width, height), interpolation=cv2.INTER_CUBIC)
        return {"map_x": map_x, "map_y": map_y}

    def apply(self, img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params) -> np.ndarray:
        return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=self.fill)

    def apply_to_mask(self, mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params) -> np.ndarray:
        return cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("grid", "magnitude", "fill", "fill_mask")


class PhotometricJitter(A.ImageOnlyTransform):
    """Brightness, contrast and saturation jitter with torchvision ``ColorJitter``'s
    definitions (no hue): brightness scales the values, contrast blends with the mean
    grey level, saturation blends with the grey image; each factor is ``U(1-x, 1+x)``.

    Brightness and contrast are one affine map of the values, applied as a single
    256-entry lookup table (clipped once at the end, where torchvision clips after each
    step); saturation is one weighted sum with the grey image.

    Args:
        brightness, contrast, saturation: maximum relative change (0 disables).
        p: probability of applying.

    Image ``(H, W, 3)`` uint8 in, same out.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 p: float = 0.8) -> None:
        super().__init__(p=p)
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def get_params(self) -> dict:
        rng = self.random_generator
        return {name: float(rng.uniform(1 - x, 1 + x))
                for name, x in (("b", self.brightness), ("c", self.contrast), ("s", self.saturation))}

    def apply(self, img: np.ndarray, b: float = 1.0, c: float = 1.0, s: float = 1.0, **params) -> np.ndarray:
        # The mean grey level from every k-th pixel (k ~ side / 64): at 256x256 that is 4096
        # samples, within a fraction of a grey level of the full mean at 1/16 of the cost.
        step = max(1, min(img.shape[:2]) // 64)
        mean = b * float(cv2.cvtColor(np.ascontiguousarray(img[::step, ::step]), cv2.COLOR_RGB2GRAY).mean())
        lut = np.clip(np.arange(256) * (b * c) + (1 - c) * mean + 0.5, 0, 255).astype(np.uint8)
        img = cv2.LUT(img, lut)
        if s != 1.0:
            grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            img = cv2.addWeighted(img, s, grey, 1 - s, 0.0)  # saturates to 0..255
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness", "contrast", "saturation")


class ChannelNormalize(A.ImageOnlyTransform):
    """Stored pixel values -> float32 network input by a
    :class:`~pixelwise.data.intensity.Preprocess` (``data.image_mode: raw``), as the first step,
    so that the geometric steps after it pad with 0, the normalised mean."""

    def __init__(self, preprocess, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.preprocess = preprocess

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return self.preprocess.array(img)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("preprocess",)
