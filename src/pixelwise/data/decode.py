"""Decoding image bytes, before anything else touches them: the pixel limit read from the header,
PNG / JPEG / BMP / WebP through OpenCV (PIL as fallback), TIFF through tifffile (with its axes),
NumPy ``.npy`` without pickles, and the conversion of stored values to 8-bit RGB.

:mod:`pixelwise.data.io` builds its readers (:func:`~pixelwise.data.io.read_image`,
:func:`~pixelwise.data.io.read_raw_image`, :func:`~pixelwise.data.io.read_mask`) on these; every
error names the file and what to do.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..errors import DataError

__all__ = ["TIFF_MAGIC", "check_pixels", "declared_size", "decode_raw_image", "max_image_pixels", "raw_to_rgb",
           "read_raw_image"]

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
        f"image file {str(path)!r} has pixel type {array.dtype}; RGB reading takes 8- and 16-bit images only: "
        f"set data.image_mode: raw to read the stored values as they are (normalised explicitly, see "
        f"docs/data.md), or convert the file to 8-bit"
    )


# Channels-last is assumed up to this many channels; an array whose last axis is larger and whose
# first axis is not is almost certainly channels-first (C, H, W).
_MAX_CHANNELS = 64
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _hwc(array: np.ndarray, path: Path, axes: str | None = None) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` (or, from a TIFF, a channel axis named by ``axes``) -> ``(H, W, C)``."""
    if axes is not None and array.ndim == len(axes):
        keep = [i for i, n in enumerate(array.shape) if n != 1 or axes[i] in "YX"]
        array, axes = array.reshape([array.shape[i] for i in keep]), "".join(axes[i] for i in keep)
        if array.ndim == 3:
            named = next((i for i, a in enumerate(axes) if a in "SC"), None)
            if named is not None:
                return np.ascontiguousarray(np.moveaxis(array, named, -1))
            if axes[0] in "ZT":
                raise DataError(f"image file {str(path)!r} is a stack of {array.shape[0]} 2D images (TIFF axes "
                                f"{axes}); read 3D data as volumes (data.dataset: volume) or save one 2D image "
                                f"per file")
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise DataError(f"image file {str(path)!r} holds an array of shape {array.shape}; a 2D image is (H, W) or "
                        f"(H, W, C)")
    if array.shape[2] > _MAX_CHANNELS and array.shape[0] <= _MAX_CHANNELS:
        raise DataError(f"image file {str(path)!r} holds shape {array.shape}, which looks channels-first (C, H, W); "
                        f"images are stored channels-last: save np.moveaxis(array, 0, -1)")
    return array


def _decode_npy(data: bytes, path: Path) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - ValueError (pickled objects), EOFError, OSError, ...
        raise _corrupt(path, "image", f"{type(err).__name__}: {err}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        kind = type(array).__name__ if not isinstance(array, np.ndarray) else f"dtype {array.dtype}"
        raise DataError(f"image file {str(path)!r} holds {kind}; a NumPy image is one (H, W) or (H, W, C) array "
                        f"of integers or floats saved with np.save")
    return array.astype(np.uint8) if array.dtype == bool else array


def _decode_tiff(data: bytes, path: Path) -> np.ndarray | None:
    """A TIFF with tifffile (any channel count and pixel type); None where tifffile is missing or
    cannot decode it (compressions that need imagecodecs): OpenCV then tries."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            return _hwc(series.asarray(), path, series.axes)
    except DataError:
        raise
    except Exception:  # noqa: BLE001 - tifffile raises many types; OpenCV gets its chance
        return None


def decode_raw_image(data: bytes, path: str | os.PathLike = "<uploaded bytes>") -> np.ndarray:
    """Decode an image with its stored pixel type and every channel (``data.image_mode: raw``).

    PNG, JPEG, BMP, WebP, TIFF (tifffile when installed: any channel count, 8/16/32-bit integers,
    floats; channel axis from the TIFF's own axes) and NumPy ``.npy`` files (``(H, W)`` or
    ``(H, W, C)``, no pickles). Colour channels are in RGB(A) order; nothing is scaled.

    Returns:
        ``(H, W, C)`` array of the stored dtype (bool becomes uint8).

    Raises:
        DataError: the bytes are empty, corrupt, channels-first, a stack, or hold NaN/infinity.
    """
    path = Path(path)
    if not data:
        raise DataError(f"image {str(path)!r} is empty (0 bytes)")
    if data[:6] == b"\x93NUMPY":
        array = _hwc(_decode_npy(data, path), path)
    else:
        check_pixels(data, path, "image")
        array = _decode_tiff(data, path) if data[:4] in TIFF_MAGIC else None
        if array is None:
            array = _decode_encoded(data, path)
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise DataError(f"image file {str(path)!r} has {int(bad.sum())} NaN/infinite value(s); they would make "
                            f"the loss NaN: replace them (np.nan_to_num, or the sensor's no-data value) and re-save")
    return array


def _decode_encoded(data: bytes, path: Path) -> np.ndarray:
    """PNG/JPEG/BMP/WebP/TIFF through OpenCV (PIL where OpenCV fails) -> ``(H, W, C)`` RGB(A) order."""
    _check_jpeg_complete(data, path)
    # imdecode on bytes rather than imread: imread returns None silently on failure and
    # cannot open non-ASCII paths on Windows.
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is not None:
        if array.ndim == 3 and array.shape[2] == 3:
            return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
        if array.ndim == 3 and array.shape[2] == 4:
            return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
        return _hwc(array, path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                img = img.convert("RGBA" if img.mode == "PA" else "L" if img.mode == "1" else "RGB")
            return _hwc(np.array(img), path)
    except DataError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise _corrupt(path, "image", f"{type(err).__name__}: {err}") from None


def read_raw_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as stored: ``(H, W, C)`` of its own dtype (see :func:`decode_raw_image`)."""
    path = Path(path)
    return decode_raw_image(_read_bytes(path, "image"), path)


def raw_to_rgb(array: np.ndarray, path: str | os.PathLike = "<uploaded bytes>") -> np.ndarray:
    """What RGB reading makes of a :func:`decode_raw_image` array: ``(H, W, 3)`` uint8.

    Grey is replicated, alpha dropped, 16-bit scaled 65535 -> 255; other pixel types and 2 or
    more than 4 channels are refused with the ``data.image_mode: raw`` fix.
    """
    path = Path(path)
    array = _to_uint8(array, path)
    channels = array.shape[2]
    if channels == 1:
        return cv2.cvtColor(array[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels in (3, 4):
        return np.ascontiguousarray(array[:, :, :3])
    raise DataError(f"image file {str(path)!r} has {channels} channels; RGB reading takes 1, 3 or 4: set "
                    f"data.image_mode: raw to read every channel (and model.in_channels: {channels})")


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
