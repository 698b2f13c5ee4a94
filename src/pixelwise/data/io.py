"""Reading and writing images and label masks, with errors that name the file.

Images are returned as ``(H, W, 3)`` uint8 RGB whatever is on disk (grey, RGBA, 16-bit).
Masks are returned as ``(H, W)`` int64 class indices and must be stored as index images:
single-channel PNG/TIFF (the pixel value is the class) or palette PNG (the palette index
is the class, the colours are only for display; this is how PASCAL VOC ships its masks).
Writes are atomic (temporary file in the same folder, then ``os.replace``) so that a
killed process never leaves a half-written file behind for the next run to trip over.
"""

from __future__ import annotations

import io
import os
import re
import uuid
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..errors import DataError

__all__ = [
    "read_image",
    "decode_image",
    "check_pixels",
    "max_image_pixels",
    "read_mask",
    "default_palette",
    "colorize",
    "overlay",
    "write_image",
    "write_mask",
]

# Images and masks with more pixels than this are refused from their header, before decoding:
# a 109 KB PNG can declare 30000x30000 (2.7 GB of RGB). 200 Mpx is a 14000x14000 tile; larger
# images need tiling on disk (or a higher PIXELWISE_MAX_IMAGE_PIXELS where memory allows).
DEFAULT_MAX_PIXELS = 200_000_000


def max_image_pixels() -> int:
    """The decode limit: ``PIXELWISE_MAX_IMAGE_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get("PIXELWISE_MAX_IMAGE_PIXELS")
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(f"PIXELWISE_MAX_IMAGE_PIXELS must be a positive integer, got {raw!r}")
    return value


def declared_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header without decoding pixels; None if PIL cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError as err:  # PIL's own, lower, limit: read the size from its message
        found = re.search(r"\((\d+) pixels\)", str(err))
        return (int(found.group(1)), 1) if found else (2**31, 1)
    except Exception:  # noqa: BLE001 - not a format PIL knows: OpenCV decides (its own limit applies)
        return None


def check_pixels(data: bytes, path: str | os.PathLike, what: str = "image", limit: int | None = None) -> None:
    """Raise :class:`DataError` naming the file, its size and the limit if it declares too many pixels."""
    limit = max_image_pixels() if limit is None else limit
    size = declared_size(data)
    if size is not None and size[0] * size[1] > limit:
        w, h = size
        shape = f"{w}x{h} ({w * h:,} pixels)" if h > 1 else f"{w:,} pixels"
        raise DataError(f"{what} file {str(path)!r} is {shape}, more than the limit of {limit:,} pixels; it was "
                        f"not decoded. Cut it into tiles, or raise PIXELWISE_MAX_IMAGE_PIXELS if memory allows "
                        f"(decoding needs about 3-6 bytes per pixel)")


# PIL modes whose pixel values are the class indices themselves.
_INDEX_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} does not exist (or is not a file); check the path")
    data = path.read_bytes()
    if not data:
        raise DataError(f"{what} file {str(path)!r} is empty (0 bytes); re-export it or remove it from the dataset")
    return data


def _corrupt(path: Path, what: str, reason: str) -> DataError:
    return DataError(
        f"{what} file {str(path)!r} cannot be decoded ({reason}); it is corrupt, truncated or not an "
        f"image: re-export it or remove it from the dataset"
    )


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # Full-range mapping (65535 -> 255) rather than per-image min/max, so the same
        # intensity means the same thing in every image of a dataset.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise DataError(
        f"image file {str(path)!r} has pixel type {array.dtype}; only 8- and 16-bit images are "
        f"supported: convert it to 8-bit"
    )


def _check_jpeg_complete(data: bytes, path: Path) -> None:
    # OpenCV decodes a truncated JPEG into a grey-bottomed image with only a warning on
    # stderr. Entropy-coded data byte-stuffs 0xFF, so a missing end-of-image marker (FFD9)
    # in the tail means the file was cut short -- or that data was appended after it
    # (phone "motion photos" append a video). Only then pay for a full PIL decode, which
    # stops at the marker and fails on a real truncation.
    if data[:2] != b"\xff\xd8" or b"\xff\xd9" in data[-4096:]:
        return
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as err:
        raise _corrupt(path, "image", f"JPEG end-of-image marker missing; {type(err).__name__}: {err}") from None


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
    if not data:
        raise DataError(f"image {str(path)!r} is empty (0 bytes)")
    check_pixels(data, path, "image")
    _check_jpeg_complete(data, path)
    # imdecode on bytes rather than imread: imread returns None silently on failure and
    # cannot open non-ASCII paths on Windows.
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is not None:
        array = _to_uint8(array, path)
        if array.ndim == 2:
            return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
        channels = array.shape[2]
        if channels == 1:
            return cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2RGB)
        if channels == 3:
            return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
        if channels == 4:
            return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
        raise DataError(f"image file {str(path)!r} has {channels} channels; expected 1, 3 or 4")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode.startswith("I;16"):
                return cv2.cvtColor(_to_uint8(np.asarray(img, dtype=np.uint16), path), cv2.COLOR_GRAY2RGB)
            return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except DataError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise _corrupt(path, "image", f"{type(err).__name__}: {err}") from None


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
