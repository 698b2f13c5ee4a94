"""The FastAPI application: ``/v1/segment``, ``/v1/model``, ``/healthz`` and the browser page ``/``.

The model is loaded once. Segmentation runs in a fixed pool of worker threads behind a
bounded queue (:class:`Gate`): a request beyond ``workers + max_queue`` gets HTTP 503 at
once instead of piling up images in memory, so memory stays flat under any load, and
every request gets an answer (a result, or a clean 4xx/5xx JSON error).
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, Callable, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel

from ..segmenter import Segmenter
from .uploads import RequestError, ServeLimits, decode_upload

__all__ = ["create_app", "Gate"]

_IMAGE_BODY = {"type": "string", "format": "binary"}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"image": _IMAGE_BODY},
                                           "required": ["image"]}},
        "application/octet-stream": {"schema": _IMAGE_BODY},
        "image/png": {"schema": _IMAGE_BODY},
        "image/jpeg": {"schema": _IMAGE_BODY},
    },
}


class ClassArea(BaseModel):
    id: int
    name: str
    color: str
    pixels: int
    fraction: float


class EncodedMask(BaseModel):
    format: Literal["png"] = "png"
    encoding: Literal["base64"] = "base64"
    data: str


class ClassRle(BaseModel):
    id: int
    name: str
    size: list[int]
    counts: str


class SegmentResponse(BaseModel):
    width: int
    height: int
    classes: list[ClassArea]
    mask: EncodedMask | None = None
    rle: list[ClassRle] | None = None
    options: dict[str, Any]
    timing_ms: dict[str, float]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 413, 415, 422, 503, 504)}


class Gate:
    """At most ``workers`` jobs run and at most ``max_queue`` wait; the rest are refused.

    A job that outlives the request timeout keeps its worker until it ends (a thread
    cannot be killed), so the number of images in memory never exceeds the bound.
    """

    def __init__(self, workers: int, max_queue: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixelwise-serve")
        self.slots = asyncio.Semaphore(workers)
        self.capacity = workers + max_queue
        self.pending = 0

    async def run(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        if self.pending >= self.capacity:
            raise RequestError(503, "busy", f"the server is busy ({self.pending} requests in progress or queued); "
                                            f"retry in a moment")
        self.pending += 1
        deadline = time.monotonic() + timeout_s
        try:
            try:
                await asyncio.wait_for(self.slots.acquire(), timeout=timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(503, "busy", f"no worker became free within {timeout_s:.0f} s; retry later") \
                    from None
            future = asyncio.get_running_loop().run_in_executor(self.pool, fn)
            future.add_done_callback(lambda _: self.slots.release())
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise RequestError(504, "timeout", f"segmentation took longer than {timeout_s:.0f} s; use a smaller "
                                                   f"image or fewer options (tta, crf)") from None
        finally:
            self.pending -= 1


def _png_base64(labels: np.ndarray, palette: np.ndarray) -> str:
    """Labels as a palette PNG (browsers show the class colours directly), base64."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: min(256, len(palette))] = palette[:256]
    img.putpalette(flat.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _rle(labels: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    out = []
    for cls in np.unique(labels):
        enc = mask_utils.encode(np.asfortranarray(labels == cls, dtype=np.uint8))
        out.append({"id": int(cls), "name": names[int(cls)], "size": [int(s) for s in enc["size"]],
                    "counts": enc["counts"].decode("ascii")})
    return out


def _hex(color: np.ndarray) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in color[:3])


def model_card(segmenter: Segmenter, limits: ServeLimits) -> dict[str, Any]:
    """What a client needs to know: architecture, classes and colours, input conventions, scores."""
    config = getattr(segmenter.model, "config", {})
    return {
        "name": config.get("name", type(segmenter.model).__name__),
        "architecture": config,
        "task": "semantic",
        "classes": [{"id": i, "name": n, "color": _hex(segmenter.palette[i])}
                    for i, n in enumerate(segmenter.class_names)],
        "input": {"color": "RGB (grey and RGBA are converted)", "dtype": "uint8", "any_size": True,
                  "normalisation": {"mean": segmenter.mean, "std": segmenter.std, "scale": "pixel / 255"},
                  "tile_hint": segmenter.tile, "formats": ["PNG", "JPEG", "BMP", "TIFF", "WEBP"]},
        "metrics": segmenter.config.get("scores"),
        "limits": limits.as_dict(),
    }


async def _read_body(request: Request, limits: ServeLimits) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes + 64 * 1024:
        raise RequestError(413, "too_large", f"the request has {declared} bytes; the limit is {limits.max_bytes}")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "missing_image", "multipart requests must carry the file in the field 'image'")
        data = await upload.read(limits.max_bytes + 1)  # starlette spools big parts to a temp file
        await upload.close()
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise RequestError(413, "too_large", f"the upload exceeds the limit of {limits.max_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
    if len(data) > limits.max_bytes:
        raise RequestError(413, "too_large", f"the upload exceeds the limit of {limits.max_bytes} bytes")
    return data


def create_app(segmenter: Segmenter, limits: ServeLimits | None = None) -> FastAPI:
    """The HTTP application serving ``segmenter``."""
    limits = limits or ServeLimits()
    app = FastAPI(title="pixelwise", version="1", description="Semantic segmentation over HTTP.")
    gate = Gate(limits.workers, limits.max_queue)
    card = model_card(segmenter, limits)
    page = resources.files("pixelwise.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse({"error": {"code": err.code, "message": err.message}}, status_code=err.status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_parameter(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": {"code": "invalid_parameter", "message": problems}}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the model is loaded; ``pending`` requests are running or queued."""
        return {"status": "ok", "model": card["name"], "pending": gate.pending}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The model card: architecture, classes with colours, input conventions, training scores, limits."""
        return card

    @app.post("/v1/segment", response_model=SegmentResponse, responses=_ERRORS,
              openapi_extra={"requestBody": _REQUEST_BODY})
    async def segment(
        request: Request,
        tile: int | None = Query(None, ge=32, le=limits.max_tile, description="sliding-window tile (pixels)"),
        overlap: float = Query(0.25, ge=0.0, le=0.75, description="tile overlap fraction"),
        tta: Literal["none", "flip", "flip+scales"] = Query("none", description="test-time augmentation"),
        crf: bool = Query(False, description="dense CRF refinement"),
        output: Literal["png", "rle", "both"] = Query("png", description="mask encoding(s) in the response"),
    ) -> dict[str, Any]:
        """Segment one image (multipart field ``image``, or the raw body)."""
        t0 = time.perf_counter()
        data = await _read_body(request, limits)
        t1 = time.perf_counter()

        def work() -> tuple[np.ndarray, float]:
            image = decode_upload(data, limits)
            start = time.perf_counter()
            result = segmenter(image, tile=tile, overlap=overlap, tta=False if tta == "none" else tta, crf=crf)
            return result.labels, (time.perf_counter() - start) * 1000

        labels, infer_ms = await gate.run(work, limits.timeout_s)
        counts = np.bincount(labels.ravel(), minlength=len(segmenter.class_names))
        total = max(1, labels.size)
        body: dict[str, Any] = {
            "width": int(labels.shape[1]), "height": int(labels.shape[0]),
            "classes": [{"id": i, "name": n, "color": _hex(segmenter.palette[i]), "pixels": int(counts[i]),
                         "fraction": float(counts[i] / total)} for i, n in enumerate(segmenter.class_names)],
            "options": {"tile": tile, "overlap": overlap, "tta": tta, "crf": crf, "output": output},
        }
        if output in ("png", "both"):
            body["mask"] = {"format": "png", "encoding": "base64", "data": _png_base64(labels, segmenter.palette)}
        if output in ("rle", "both"):
            body["rle"] = _rle(labels, segmenter.class_names)
        body["timing_ms"] = {"upload": (t1 - t0) * 1000, "inference": infer_ms,
                             "total": (time.perf_counter() - t0) * 1000}
        return body

    app.state.gate, app.state.segmenter, app.state.limits = gate, segmenter, limits
    return app
