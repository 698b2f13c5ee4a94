"""Reading and writing images and label masks, with errors that name the file.

Images are read in one of two ways (``data.image_mode``): :func:`read_image` returns
``(H, W, 3)`` uint8 RGB whatever is on disk (grey replicated, alpha dropped, 16-bit scaled to
8), the input photographs and ImageNet encoders expect; :func:`read_raw_image` returns what is
stored, ``(H, W, C)`` of the file's own dtype (16-bit microscopy, float or multi-band
satellite images, NumPy ``.npy`` arrays), for :mod:`pixelwise.data.intensity` to normalise.
Masks are returned as ``(H, W)`` int64 class indices and must be stored as index images:
single-channel PNG/TIFF (the pixel value is the class) or palette PNG (the palette index
is the class, the colours are only for display; this is how PASCAL VOC ships its masks).
Decoding (pixel limits, TIFF, ``.npy``, stored values to RGB) is in :mod:`.decode`. Writes are atomic (temporary file in the same folder, then ``os.replace``) so that a
killed process never leaves a half-written file behind for the next run to trip over.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..errors import DataError
from .decode import (
    _corrupt,
    _read_bytes,
    check_pixels,
    decode_raw_image,
    max_image_pixels,
    raw_to_rgb,
    read_raw_image,
)

__all__ = [
    "read_image",
    "decode_image",
    "read_raw_image",
    "decode_raw_image",
    "raw_to_rgb",
    "check_pixels",
    "max_image_pixels",
    "read_mask",
    "default_palette",
    "colorize",
    "overlay",
    "write_image",
    "write_mask",
]

_INDEX_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB.

    Grey images are replicated to three channels, alpha is dropped, 16-bit images are
    scaled to 8-bit (65535 -> 255). Decodes with OpenCV and falls back to PIL for
    formats OpenCV lacks.

    Args:
        path: image file (png, jpg, bmp, tif, ...).

    Returns:
        ``(H, W, 3)`` uint8 array in RGB order.

    Raises:
        DataError: the file is missing, empty, truncated or cannot be decoded.
    """
    path = Path(path)
    return decode_image(_read_bytes(path, "image"), path)


def decode_image(data: bytes, path: str | os.PathLike = "<uploaded bytes>") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, BMP, TIFF, WebP, ...) as :func:`read_image` does.

    ``path`` only names the source in error messages. Returns ``(H, W, 3)`` uint8 RGB.
    """
    path = Path(path)
    if data[:6] == b"\x93NUMPY":
        raise DataError(f"image {str(path)!r} is a NumPy array; NumPy images are read with data.image_mode: raw")
    return raw_to_rgb(decode_raw_image(data, path), path)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask as class indices.

    Single-channel images ("L", "I", 16-bit) are read as values; palette ("P") PNGs are
    read as their palette indices, not converted to colours.

    Args:
        path: mask file, normally PNG (TIFF also works).

    Returns:
        ``(H, W)`` int64 array of class indices.

    Raises:
        DataError: the file is missing, corrupt, or a colour (RGB) image.
    """
    path = Path(path)
    data = _read_bytes(path, "mask")
    check_pixels(data, path, "mask")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img) if mode in _INDEX_MODES else None
    except Exception as err:
        # PIL cannot read some TIFF compressions that OpenCV can.
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise _corrupt(path, "mask", f"{type(err).__name__}: {err}") from None
        mode = "single-channel" if array.ndim == 2 else f"{array.shape[2]}-channel"
        if array.ndim != 2:
            array = None
    if array is None:
        raise DataError(
            f"mask file {str(path)!r} is a {mode} image; masks must be single-channel index "
            f"or palette PNGs whose pixel values are class indices: convert the colours to "
            f"indices (one integer per class) and save as 'L' or 'P' mode"
        )
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise DataError(f"mask file {str(path)!r} holds non-integer values; save class indices as integers")
    return array.astype(np.int64)


def default_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class ``i``'s bits are spread over R, G, B from the top bit.

    Neighbouring indices get very different colours, and index 0 is black.

    Returns:
        ``(n, 3)`` uint8 array.
    """
    if n < 1:
        raise ValueError(f"default_palette needs n >= 1, got {n}")
    index = np.arange(n, dtype=np.int64)
    palette = np.zeros((n, 3), dtype=np.int64)
    for level in range(8):
        # Bits 3*level, 3*level+1, 3*level+2 of the index go to bit (7 - level) of R, G, B.
        for channel in range(3):
            bit = (index >> (3 * level + channel)) & 1
            palette[:, channel] |= bit << (7 - level)
    return palette.astype(np.uint8)


def colorize(
    mask: np.ndarray,
    palette: np.ndarray | None = None,
    *,
    ignore_index: int = 255,
    ignore_color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Paint a mask of class indices with a palette.

    Args:
        mask: ``(H, W)`` integer class indices (numpy array or tensor).
        palette: ``(K, 3)`` uint8 colours; ``default_palette()`` when None. Labels >= K wrap around.
        ignore_index: label painted ``ignore_color`` (also used for negative labels).

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    mask = np.asarray(mask).astype(np.int64)
    palette = default_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    out = palette[np.mod(mask, len(palette))]
    out[(mask == ignore_index) | (mask < 0)] = ignore_color
    return out


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: np.ndarray | None = None,
    alpha: float = 0.5,
    *,
    ignore_index: int = 255,
) -> np.ndarray:
    """Blend class colours over an image.

    Background (class 0) and ``ignore_index`` pixels keep the original image so the
    objects stand out.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` integer class indices.
        alpha: weight of the class colour, 0 (image only) to 1 (colour only).

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    image = np.asarray(image)
    mask = np.asarray(mask).astype(np.int64)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"overlay: image is {image.shape[:2]} but mask is {mask.shape}; they must match")
    colours = colorize(mask, palette, ignore_index=ignore_index).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    keep = (mask == 0) | (mask == ignore_index) | (mask < 0)
    out = np.where(keep[..., None], image.astype(np.float32), blended)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder: os.replace is only atomic within one file system.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey) image atomically.

    The format follows the file suffix (``.png``, ``.jpg``, ...).
    """
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise DataError(f"write_image({str(path)!r}): expected uint8 pixels, got {rgb.dtype}; convert first")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(path.suffix or ".png", bgr)
    if not ok:
        raise DataError(f"write_image({str(path)!r}): OpenCV cannot encode suffix {path.suffix!r}; use .png or .jpg")
    _atomic_write(path, encoded.tobytes())


def write_mask(path: str | os.PathLike, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a mask of class indices as a palette PNG, atomically.

    The pixel values are the indices (``read_mask`` gives them back), and the palette
    makes the file look coloured in any image viewer. Labels above 255 do not fit a
    palette PNG and are written as a 16-bit grey PNG instead.

    Args:
        path: destination, must end in ``.png``.
        mask: ``(H, W)`` non-negative integer class indices (numpy array or tensor).
        palette: ``(K, 3)`` uint8 colours, K <= 256; ``default_palette()`` when None.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DataError(f"write_mask({str(path)!r}): masks are written as PNG; use a .png file name")
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype.kind not in "iub":
        raise DataError(f"write_mask({str(path)!r}): expected an (H, W) integer mask, got {mask.shape} {mask.dtype}")
    if mask.size and mask.min() < 0:
        raise DataError(f"write_mask({str(path)!r}): mask has negative label {int(mask.min())}; PNG stores 0..65535")
    top = int(mask.max()) if mask.size else 0
    if top <= 255:
        img = Image.fromarray(mask.astype(np.uint8))  # mode "L"
        # putpalette turns an "L" image into a "P" image with the same index values.
        img.putpalette(np.asarray(default_palette() if palette is None else palette, dtype=np.uint8)[:256].tobytes())
    elif top <= 65535:
        img = Image.fromarray(mask.astype(np.uint16))
    else:
        raise DataError(f"write_mask({str(path)!r}): label {top} does not fit a PNG (max 65535)")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    _atomic_write(path, buffer.getvalue())
