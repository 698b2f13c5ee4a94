"""Random scale, crop, flip, rotation and elastic deformation fused into one resampling.

The usual chain (resize the whole image, pad, crop, flip, rotate, deform) resamples the
image up to four times and, at scale 2, first builds an image four times the input's
size only to throw most of it away. All these steps are coordinate maps, so their
composition is one map from each *output* pixel to a source position: one
``cv2.warpAffine`` when there is no elastic deformation, one ``cv2.remap`` when there is.
The cost then depends only on the crop size, and the image is interpolated once (sharper
than four successive bilinear resamplings).
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

__all__ = ["AffineElasticCrop"]


def _affine(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array([*rows, (0.0, 0.0, 1.0)], dtype=np.float64)


class AffineElasticCrop(A.DualTransform):
    """Scale ``U(scale)``, random ``size`` x ``size`` crop (random padding when the scaled
    image is smaller), horizontal flip, rotation about the crop centre and the U-Net
    elastic deformation, applied to image and mask in a single resampling.

    The elastic part follows Ronneberger et al., "U-Net" (MICCAI 2015), Sec. 3.1: random
    displacements on a coarse ``elastic_grid`` x ``elastic_grid`` grid (std
    ``elastic_magnitude`` x ``size`` pixels) interpolated bicubically to every pixel, the
    same field as :class:`~pixelwise.data.transforms.GridElastic`.

    Images use bilinear interpolation, masks nearest-neighbour; pixels that come from
    outside the image get ``fill`` (image) and ``fill_mask`` (mask: the ignore index).

    Args:
        size: side of the square output.
        scale: range of the uniform random scale factor.
        hflip_p: probability of a horizontal flip.
        rotate: rotation limit in degrees (uniform in ``[-rotate, rotate]``).
        rotate_p: probability of rotating.
        elastic_p: probability of the elastic deformation (0 disables it).
        elastic_grid: coarse grid points per side.
        elastic_magnitude: displacement std as a fraction of ``size``.
        fill: image value outside the source image.
        fill_mask: mask value outside the source image.
        interpolation: OpenCV flag for the image (``cv2.INTER_NEAREST`` makes image and mask
            sample exactly the same source pixels, which the tests use).

    Input image ``(H, W, C)`` and mask ``(H, W)`` of any size; output ``(size, size, C)`` and
    ``(size, size)`` of the same dtypes.
    """

    def __init__(self, *, size: int, scale: tuple[float, float] = (0.5, 2.0), hflip_p: float = 0.5,
                 rotate: float = 15.0, rotate_p: float = 0.5, elastic_p: float = 0.0, elastic_grid: int = 3,
                 elastic_magnitude: float = 0.02, fill: float = 0, fill_mask: float = 255,
                 interpolation: int = cv2.INTER_LINEAR, p: float = 1.0) -> None:
        super().__init__(p=p)
        if size < 1 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"AffineElasticCrop: need size >= 1 and 0 < scale[0] <= scale[1], got {size}, {scale}")
        self.size, self.scale, self.hflip_p = size, tuple(scale), hflip_p
        self.rotate, self.rotate_p = rotate, rotate_p
        self.elastic_p, self.elastic_grid, self.elastic_magnitude = elastic_p, elastic_grid, elastic_magnitude
        self.fill, self.fill_mask, self.interpolation = fill, fill_mask, interpolation
        # Output pixel coordinates (x, y) as a 2-channel image, reused by every elastic draw.
        self._grid = np.ascontiguousarray(np.mgrid[0:size, 0:size][::-1].transpose(1, 2, 0), dtype=np.float32)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        rng, size = self.random_generator, self.size
        height, width = params["shape"][:2]
        s = float(rng.uniform(*self.scale))
        offsets = []
        for extent in (round(width * s), round(height * s)):
            # Crop inside the scaled image, or place it at a random spot inside the padded crop.
            slack = extent - size
            offsets.append(float(rng.integers(0, slack + 1)) if slack >= 0 else -float(rng.integers(0, -slack + 1)))
        flip = rng.random() < self.hflip_p
        angle = float(rng.uniform(-self.rotate, self.rotate)) if rng.random() < self.rotate_p else 0.0
        # Output -> source, composed right to left: rotate about the crop centre, flip,
        # shift by the crop offset, undo the scale (cv2.resize's pixel-centre convention).
        c = (size - 1) / 2.0
        cos, sin = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
        rot = _affine((cos, -sin, c - cos * c + sin * c), (sin, cos, c - sin * c - cos * c))
        mirror = _affine((-1.0, 0.0, size - 1.0), (0.0, 1.0, 0.0)) if flip else np.eye(3)
        shift = _affine((1.0, 0.0, offsets[0]), (0.0, 1.0, offsets[1]))
        unscale = _affine((1 / s, 0.0, 0.5 / s - 0.5), (0.0, 1 / s, 0.5 / s - 0.5))
        matrix = (unscale @ shift @ mirror @ rot)[:2]
        maps = None
        if self.elastic_p > 0 and rng.random() < self.elastic_p:
            coarse = rng.normal(0.0, self.elastic_magnitude * size, (self.elastic_grid, self.elastic_grid, 2))
            field = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
            # (x, y) + displacement, then the affine map, per pixel: one (H, W, 2) float map.
            # Float, not OpenCV's fixed-point maps (convertMaps): those floor rather than
            # round the coordinates for nearest-neighbour, shifting the mask by half a pixel.
            maps = cv2.transform(field + self._grid, matrix)
        return {"matrix": matrix, "maps": maps}

    def _warp(self, array: np.ndarray, matrix: np.ndarray, maps, interpolation: int, fill: float) -> np.ndarray:
        size = (self.size, self.size)
        channels = array.shape[2] if array.ndim == 3 else 0
        # OpenCV takes a scalar or a 4-tuple border value; give every channel the fill.
        border = (fill,) * 4 if channels else fill
        if maps is None:
            out = cv2.warpAffine(array, matrix, size, flags=interpolation | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=border)
        else:
            out = cv2.remap(array, maps, None, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
        # OpenCV drops a trailing channel axis of size 1.
        return out[..., None] if channels == 1 and out.ndim == 2 else out

    def apply(self, img: np.ndarray, matrix: np.ndarray, maps=None, **params) -> np.ndarray:
        return self._warp(img, matrix, maps, self.interpolation, self.fill)

    def apply_to_mask(self, mask: np.ndarray, matrix: np.ndarray, maps=None, **params) -> np.ndarray:
        return self._warp(mask, matrix, maps, cv2.INTER_NEAREST, self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "scale", "hflip_p", "rotate", "rotate_p", "elastic_p", "elastic_grid", "elastic_magnitude",
                "fill", "fill_mask", "interpolation")
