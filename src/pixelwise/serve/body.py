"""Reading an upload from the socket with a size cap and deadlines, all in memory.

The body is read chunk by chunk straight from the ASGI ``receive`` channel: the size limit
holds while the bytes stream in (a chunked upload with no ``Content-Length`` is cut off at
the limit, not after it has been spooled in full), every wait for the next chunk is bounded
by ``read_timeout_s`` (a stalled client gets 408), and the whole upload must arrive before
the request's deadline. Multipart bodies are parsed here as they stream (python-multipart's
push parser), keeping only the ``image`` part, in memory: Starlette's form parser would
spool file parts to temporary files, so an oversized part would reach the disk before the
limit could be checked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .uploads import RequestError, ServeLimits

__all__ = ["ClientGone", "read_upload", "MULTIPART_SLACK"]

# Room for multipart boundaries, part headers and a few small form fields around the image.
MULTIPART_SLACK = 64 * 1024
_MAX_FIELDS = 8

Receive = Callable[[], Awaitable[dict[str, Any]]]


class ClientGone(Exception):
    """The client closed its connection before its request was read; nobody is left to answer."""


async def _chunks(receive: Receive, *, read_timeout_s: float, deadline: float, timeout_s: float
                  ) -> AsyncIterator[bytes]:
    """The body's chunks, each within ``read_timeout_s`` of the last and all before ``deadline``."""
    while True:
        left = deadline - time.monotonic()
        # A chunk already waiting is still taken once the deadline has passed (the 1 ms floor).
        wait = max(min(read_timeout_s, left), 0.001)
        try:
            message = await asyncio.wait_for(receive(), timeout=wait)
        except asyncio.TimeoutError:
            if left < read_timeout_s:
                raise RequestError(408, "upload_timeout", f"the upload did not complete within the request's "
                                                          f"{timeout_s:g} s (--timeout); send it faster or use a "
                                                          f"smaller image") from None
            raise RequestError(408, "read_timeout", f"no upload bytes arrived for {read_timeout_s:g} s; the "
                                                    f"connection is closed (slow or stalled client)") from None
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected during the upload")
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class _ImagePart:
    """Push parser of a multipart/form-data body that keeps the ``image`` part's bytes, up to ``max_bytes``."""

    def __init__(self, content_type: str, max_bytes: int) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise RequestError(400, "bad_multipart", "the multipart Content-Type has no boundary; let your HTTP "
                                                     "client build the form (curl -F image=@photo.png)")
        self.max_bytes = max_bytes
        self.data: bytearray | None = None
        self.fields = 0
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._in_image = False
        callbacks = {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                     "on_header_value": self._header_value_cb, "on_header_end": self._header_end,
                     "on_headers_finished": self._headers_finished, "on_part_data": self._part_data}
        try:
            self.parser = MultipartParser(boundary, callbacks)
        except (FormParserError, ValueError) as err:
            raise RequestError(400, "bad_multipart", f"the multipart boundary is invalid ({err})") from None

    def _part_begin(self) -> None:
        self._disposition, self._in_image = b"", False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        self.fields += 1
        if self.fields > _MAX_FIELDS:
            raise RequestError(400, "bad_multipart", f"the form has more than {_MAX_FIELDS} parts; send the "
                                                     f"image alone in the field 'image'")
        _, options = parse_options_header(self._disposition)
        self._in_image = options.get(b"name") == b"image"
        if self._in_image:
            if self.data is not None:
                raise RequestError(400, "bad_multipart", "the form holds two 'image' fields; send one image per "
                                                         "request")
            self.data = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_image:
            assert self.data is not None
            if len(self.data) + (end - start) > self.max_bytes:
                raise RequestError(413, "too_large", f"the image part exceeds the limit of {self.max_bytes} bytes "
                                                     f"(--max-bytes); nothing was stored")
            self.data += data[start:end]

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as err:
            raise RequestError(400, "bad_multipart", f"the multipart body is malformed ({err})") from None

    def image(self) -> bytes:
        try:
            self.parser.finalize()
        except FormParserError as err:
            raise RequestError(400, "bad_multipart", f"the multipart body is malformed ({err})") from None
        if self.data is None:
            raise RequestError(400, "missing_image", "multipart requests must carry the file in the field 'image'")
        return bytes(self.data)


async def read_upload(receive: Receive, headers: Any, limits: ServeLimits, *, deadline: float) -> bytes:
    """The image bytes of one request: the raw body, or the multipart field ``image``.

    Raises :class:`RequestError` 413 (over ``limits.max_bytes``: from ``Content-Length``
    before reading, else as soon as the streamed bytes pass it), 408 (a silent client or a
    missed deadline), 400 (a malformed ``Content-Length`` or multipart body, no ``image``
    field), and :class:`ClientGone` when the client hangs up.
    """
    content_type = headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    cap = limits.max_bytes + (MULTIPART_SLACK if multipart else 0)
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, "bad_request", f"Content-Length {declared!r} is not a number of bytes")
        if int(declared) > cap:
            raise RequestError(413, "too_large", f"the request has {int(declared)} bytes; the limit is "
                                                 f"{limits.max_bytes} (--max-bytes); nothing was read")
    part = _ImagePart(content_type, limits.max_bytes) if multipart else None
    chunks: list[bytes] = []
    size = 0
    async for chunk in _chunks(receive, read_timeout_s=limits.read_timeout_s, deadline=deadline,
                               timeout_s=limits.timeout_s):
        size += len(chunk)
        if size > cap:
            raise RequestError(413, "too_large", f"the upload exceeds the limit of {limits.max_bytes} bytes "
                                                 f"(--max-bytes); it was cut off at {size} bytes and nothing "
                                                 f"was stored")
        if part is not None:
            part.write(chunk)
        else:
            chunks.append(chunk)
    if part is not None:
        return part.image()
    data = b"".join(chunks)
    chunks.clear()  # one copy at a time: the join and this release run in one step of the event loop
    return data
