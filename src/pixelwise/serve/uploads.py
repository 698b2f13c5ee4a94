"""Turning untrusted request bytes into an RGB array, or into a clean 4xx error.

Everything here assumes the bytes come from a stranger: the type is decided by the
content (magic bytes, via PIL's header parser) and never by the file name or the
Content-Type header; the pixel count is checked from the header *before* decoding, so a
tiny PNG that claims 100k × 100k pixels (a decompression bomb) costs nothing; nothing is
written to disk and nothing is unpickled or evaluated.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from ..data.decode import TIFF_MAGIC
from ..data.io import decode_image
from ..errors import ConfigError, DataError

__all__ = ["ServeLimits", "RequestError", "ALLOWED_FORMATS", "decode_upload", "probe_upload", "log_rejection"]

# PIL format names accepted from clients. GIF/ICO/PSD/EPS... are refused: not photos,
# and each extra decoder is extra attack surface.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
RAW_FORMATS = ("NPY",)  # also accepted by a model trained with data.image_mode: raw
# Signatures of those formats, to tell "not an image" (415) from "a broken image" (400).
_MAGIC = re.compile(rb"\x89PNG\r\n\x1a\n|\xff\xd8\xff|BM|II\*\x00|MM\x00\*|RIFF....WEBP", re.DOTALL)


@dataclass(frozen=True)
class ServeLimits:
    """Bounds that keep the server up under hostile or simply heavy traffic.

    Server memory stays under ``baseline + (workers + max_queue) * max_bytes + workers *
    max_memory_mb``: a request holds a queue place (or gets 503) before its body is read, its
    body is cut off at ``max_bytes`` while it streams, and its decode + inference must fit
    ``max_memory_mb`` by the estimate of :mod:`pixelwise.serve.budget` before anything is
    decoded.

    Attributes:
        max_bytes: largest accepted upload (HTTP 413 above it, enforced while the body streams).
        max_pixels: largest accepted width × height, checked from the header (413).
        max_memory_mb: largest estimated decode + inference memory of one request, in MiB (413).
        workers: requests segmented at the same time (each holds one decoded image in memory).
        max_queue: admitted requests allowed to upload or wait for a worker; more get HTTP 503 at once.
        timeout_s: a request not answered within this time gets HTTP 504 (its upload counts).
        read_timeout_s: longest silence allowed from a client, while it sends its request
            header (which must be complete within this time) or between body chunks (HTTP 408).
        max_connections: open connections; at the cap the oldest idle or stalled one is closed
            to make room, and a new one is refused when every open one is busy.
        max_tile: largest sliding-window tile a client may ask for.
        batch_max: requests of similar size run as one forward (1: no dynamic batching).
        batch_wait_ms: how long the first request of a batch waits for others to join.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_memory_mb: int = 1024
    workers: int = 1
    max_queue: int = 8
    timeout_s: float = 60.0
    read_timeout_s: float = 10.0
    max_connections: int = 512
    max_tile: int = 2048
    batch_max: int = 1
    batch_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_memory_mb", "workers", "max_connections", "max_tile",
                     "batch_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServeLimits.{name}={value!r} must be a positive integer")
        for name in ("timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ServeLimits.{name}={getattr(self, name)!r} must be a positive number of seconds")
        if self.max_queue < 0 or self.batch_wait_ms < 0:
            raise ConfigError(f"ServeLimits: max_queue={self.max_queue} and batch_wait_ms={self.batch_wait_ms} "
                              f"must be >= 0")

    @property
    def capacity(self) -> int:
        """Requests the server holds at once: running plus queued."""
        return self.workers + self.max_queue

    def as_dict(self) -> dict:
        return asdict(self)


class RequestError(Exception):
    """A client error that becomes ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def log_rejection(client: tuple[str, int] | None, method: str, path: str, status: int, code: str,
                  message: str) -> None:
    """One warning line for a refused request (``pixelwise.serve`` logger): who, what, why. Never a traceback."""
    who = f"{client[0]}:{client[1]}" if client else "a client"
    logging.getLogger("pixelwise.serve").warning("%s: %s %s -> %d %s: %s", who, method, path, status, code, message)


def probe_upload(data: bytes, limits: ServeLimits, *, raw: bool = False) -> tuple[str, int, int]:
    """Check uploaded bytes from their header alone: ``(format, width, height)``.

    ``raw``: the model reads stored values (``data.image_mode: raw``), so NumPy ``.npy`` arrays
    and TIFFs of any channel count are accepted too.

    Nothing is decoded, so a tiny file claiming a huge size costs nothing. Raises
    :class:`RequestError`: 400 (empty, zero-size or damaged header), 413 (too many bytes or
    pixels), 415 (not an image, or a format not in :data:`ALLOWED_FORMATS`).
    """
    if not data:
        raise RequestError(400, "empty_body", "the request holds no image; send the file as the multipart field "
                                              "'image' or as the raw request body")
    if len(data) > limits.max_bytes:
        raise RequestError(413, "too_large", f"the upload has {len(data)} bytes; the limit is {limits.max_bytes}")
    stored = _probe_stored(data) if raw else None
    if stored is not None:
        fmt, (width, height) = stored
    else:
        fmt, width, height = _probe_pil(data, limits)
    if fmt not in ALLOWED_FORMATS + (RAW_FORMATS if raw else ()):
        raise RequestError(415, "unsupported_type", f"{fmt} images are not accepted; send one of "
                                                    f"{', '.join(ALLOWED_FORMATS + (RAW_FORMATS if raw else ()))}")
    if width <= 0 or height <= 0:
        raise RequestError(400, "empty_image", f"the image is {width}×{height} pixels; it has no pixels to segment")
    if width * height > limits.max_pixels:
        raise RequestError(413, "too_many_pixels", f"the image is {width}×{height} = {width * height} pixels; the "
                                                   f"limit is {limits.max_pixels} (resize it, or raise --max-pixels)")
    return fmt, width, height


def _probe_stored(data: bytes) -> tuple[str, tuple[int, int]] | None:
    """``(format, (width, height))`` of a NumPy array or a TIFF from its header (tifffile
    parses tags, not pixels), for raw-mode models; None where it is neither."""
    if data[:6] == b"\x93NUMPY":
        try:
            buffer = io.BytesIO(data)
            version = np.lib.format.read_magic(buffer)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = header(buffer)[0]
        except Exception as err:  # noqa: BLE001 - a damaged header
            raise RequestError(400, "corrupt_image", f"the NumPy header cannot be read ({err})") from None
        if len(shape) not in (2, 3):
            raise RequestError(400, "corrupt_image", f"the NumPy array has shape {tuple(shape)}; an image is "
                                                     f"(H, W) or (H, W, C)")
        return "NPY", (int(shape[1]), int(shape[0]))
    if data[:4] in TIFF_MAGIC:
        try:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                return "TIFF", (int(page.imagewidth), int(page.imagelength))
        except Exception:  # noqa: BLE001 - tifffile missing or the header is unusual: PIL decides
            return None
    return None


def _probe_pil(data: bytes, limits: ServeLimits) -> tuple[str, int, int]:
    try:
        with Image.open(io.BytesIO(data)) as probe:  # parses the header only
            fmt, (width, height) = probe.format, probe.size
    except DecompressionBombError as err:
        raise RequestError(413, "too_many_pixels", f"{err}; the limit is {limits.max_pixels} pixels") from None
    except UnidentifiedImageError:
        if _MAGIC.match(data[:12]):  # it says PNG/JPEG/... but its header is invalid (e.g. 0 × N pixels)
            raise RequestError(400, "corrupt_image", "the file starts like an image but its header is invalid "
                                                     "(zero width or height, or damaged); re-export it") from None
        raise RequestError(415, "not_an_image", "the uploaded bytes are not an image; send a PNG, JPEG, BMP, TIFF "
                                                "or WebP file") from None
    except Exception as err:  # a header so broken that PIL's parser itself fails
        raise RequestError(400, "corrupt_image", f"the image header cannot be read ({type(err).__name__}: {err})") \
            from None
    return fmt, width, height


def decode_upload(data: bytes, limits: ServeLimits, segmenter=None) -> np.ndarray:
    """Validate and decode uploaded image bytes. Returns ``(H, W, 3)`` uint8 RGB, or for a
    raw-mode ``segmenter`` the stored ``(H, W, C)`` values (its ``decode``).

    Raises :class:`RequestError` as :func:`probe_upload` does, and 400 for pixels that do not
    decode (truncated or corrupt data).
    """
    raw = bool(getattr(segmenter, "raw", False))
    _, width, height = probe_upload(data, limits, raw=raw)
    try:
        image = segmenter.decode(data, "upload") if raw else decode_image(data, "upload")
    except DataError as err:
        raise RequestError(400, "corrupt_image", str(err)) from None
    want = getattr(segmenter, "in_channels", None)
    if raw and image.shape[2] != want:
        raise RequestError(422, "channel_mismatch", f"the image has {image.shape[2]} channel(s) but this model was "
                                                    f"trained on {want}-channel images (stored values, "
                                                    f"data.image_mode: raw); send a {want}-channel TIFF or .npy")
    if image.shape[:2] != (height, width):  # a decoder disagreeing with the header is a broken file
        raise RequestError(400, "corrupt_image", f"the header says {width}×{height} but the pixels decode as "
                                                 f"{image.shape[1]}×{image.shape[0]}")
    return image
