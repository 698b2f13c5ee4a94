"""The FastAPI application: ``/v1/segment``, ``/v1/model``, ``/healthz`` and the browser page ``/``.

The model is loaded once: a semantic :class:`~pixelwise.segmenter.Segmenter` or an instance
:class:`~pixelwise.serve.instance.InstanceSegmenter`, which is called the same way and whose
responses add an ``instances`` list; query options of the other kind of model are refused
(HTTP 422), never ignored. Segmentation runs in a fixed pool of worker threads behind a
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

from ..optional import require
from ..segmenter import Segmenter
from .instance import SEMANTIC_ONLY, InstanceSegmenter, instance_items
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


class MaskRle(BaseModel):
    size: list[int]
    counts: str


class InstanceItem(BaseModel):
    id: int
    class_id: int
    class_name: str
    score: float
    box: list[float]
    area: int
    color: str
    rle: MaskRle


class SegmentResponse(BaseModel):
    width: int
    height: int
    classes: list[ClassArea]
    mask: EncodedMask | None = None
    rle: list[ClassRle] | None = None
    instances: list[InstanceItem] | None = None
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

    def __init__(self, workers: int, max_queue: int, *, hint: str = "use a smaller image or fewer options (tta, crf)") -> None:
        self.hint = hint  # what the 504 message suggests
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
                raise RequestError(504, "timeout", f"segmentation took longer than {timeout_s:.0f} s; {self.hint}") from None
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
    mask_utils = require("pycocotools.mask", "RLE output")

    out = []
    for cls in np.unique(labels):
        enc = mask_utils.encode(np.asfortranarray(labels == cls, dtype=np.uint8))
        out.append({"id": int(cls), "name": names[int(cls)], "size": [int(s) for s in enc["size"]],
                    "counts": enc["counts"].decode("ascii")})
    return out


def _hex(color: np.ndarray) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in color[:3])


def _task(segmenter: Segmenter | InstanceSegmenter) -> str:
    return getattr(segmenter, "task", "semantic")


def model_card(segmenter: Segmenter | InstanceSegmenter, limits: ServeLimits) -> dict[str, Any]:
    """What a client needs to know: architecture, task, query options, classes and colours, input
    conventions, scores."""
    config = getattr(segmenter.model, "config", {})
    task = _task(segmenter)
    card = {
        "name": config.get("name", type(segmenter.model).__name__),
        "architecture": config,
        "task": task,
        "options": ["score_threshold", "output"] if task == "instance" else [*SEMANTIC_ONLY, "output"],
        "classes": [{"id": i, "name": n, "color": _hex(segmenter.palette[i])}
                    for i, n in enumerate(segmenter.class_names)],
        "input": {"color": "RGB (grey and RGBA are converted)", "dtype": "uint8", "any_size": True,
                  "normalisation": {"mean": segmenter.mean, "std": segmenter.std, "scale": "pixel / 255"},
                  "tile_hint": segmenter.tile, "formats": ["PNG", "JPEG", "BMP", "TIFF", "WEBP"]},
        "metrics": segmenter.config.get("scores"),
        "limits": limits.as_dict(),
    }
    if task == "instance":  # the detector resizes every image itself: short side min_size, long side <= max_size
        card["input"]["resize"] = {"min_size": config.get("min_size"), "max_size": config.get("max_size")}
    return card


def _refuse_inapplicable(task: str, request: Request, *, tile: int | None, tta: str, crf: bool) -> None:
    """HTTP 422 naming every query option that has no meaning for this server's kind of model.

    No-op values (``tta=none``, ``crf=false``) pass: they ask for nothing the model cannot do.
    """
    query = request.query_params
    if task == "instance":
        asked = [name for name, given in (("tile", tile is not None), ("overlap", "overlap" in query),
                                          ("tta", tta != "none"), ("crf", crf)) if given]
        if asked:
            raise RequestError(422, "inapplicable_option",
                               f"{', '.join(asked)}: semantic-model option{'s' if len(asked) > 1 else ''}; this "
                               f"server has an instance model (Mask R-CNN sees the whole image), so leave "
                               f"{'them' if len(asked) > 1 else 'it'} out. Its options are score_threshold and output")
    elif "score_threshold" in query:
        raise RequestError(422, "inapplicable_option",
                           "score_threshold: instance-model option; this server has a semantic model, so leave it "
                           "out. Its options are tile, overlap, tta, crf and output")


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


def create_app(segmenter: Segmenter | InstanceSegmenter, limits: ServeLimits | None = None) -> FastAPI:
    """The HTTP application serving ``segmenter`` (semantic or instance)."""
    limits = limits or ServeLimits()
    task = _task(segmenter)
    app = FastAPI(title="pixelwise", version="1", description="Semantic and instance segmentation over HTTP.")
    # tta/crf do not exist for instance models, so their 504 must not suggest dropping them.
    gate = Gate(limits.workers, limits.max_queue,
                hint="use a smaller image or fewer options (tta, crf)" if task == "semantic" else
                "use a smaller image, or start the server with a longer --timeout")
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
        """The model card: architecture, task, options, classes with colours, input conventions, scores, limits."""
        return card

    @app.post("/v1/segment", response_model=SegmentResponse, responses=_ERRORS,
              openapi_extra={"requestBody": _REQUEST_BODY})
    async def segment(
        request: Request,
        tile: int | None = Query(None, ge=32, le=limits.max_tile,
                                 description="sliding-window tile (pixels); semantic models only"),
        overlap: float = Query(0.25, ge=0.0, le=0.75, description="tile overlap fraction; semantic models only"),
        tta: Literal["none", "flip", "flip+scales"] = Query("none",
                                                            description="test-time augmentation; semantic models only"),
        crf: bool = Query(False, description="dense CRF refinement; semantic models only"),
        score_threshold: float = Query(0.5, ge=0.0, le=1.0,
                                       description="lowest detection score returned; instance models only"),
        output: Literal["png", "rle", "both"] = Query("png", description="mask encoding(s) in the response"),
    ) -> dict[str, Any]:
        """Segment one image (multipart field ``image``, or the raw body)."""
        _refuse_inapplicable(task, request, tile=tile, tta=tta, crf=crf)
        if task == "instance":
            call = {"score_threshold": score_threshold}
            options: dict[str, Any] = {"score_threshold": score_threshold, "output": output}
        else:
            call = {"tile": tile, "overlap": overlap, "tta": False if tta == "none" else tta, "crf": crf}
            options = {"tile": tile, "overlap": overlap, "tta": tta, "crf": crf, "output": output}
        t0 = time.perf_counter()
        data = await _read_body(request, limits)
        t1 = time.perf_counter()

        def work() -> tuple[np.ndarray, list[dict[str, Any]] | None, float]:
            image = decode_upload(data, limits)
            start = time.perf_counter()
            result = segmenter(image, **call)
            infer_ms = (time.perf_counter() - start) * 1000
            return result.labels, instance_items(result) if task == "instance" else None, infer_ms

        labels, instances, infer_ms = await gate.run(work, limits.timeout_s)
        counts = np.bincount(labels.ravel(), minlength=len(segmenter.class_names))
        total = max(1, labels.size)
        body: dict[str, Any] = {
            "width": int(labels.shape[1]), "height": int(labels.shape[0]),
            "classes": [{"id": i, "name": n, "color": _hex(segmenter.palette[i]), "pixels": int(counts[i]),
                         "fraction": float(counts[i] / total)} for i, n in enumerate(segmenter.class_names)],
            "options": options,
        }
        if output in ("png", "both"):
            body["mask"] = {"format": "png", "encoding": "base64", "data": _png_base64(labels, segmenter.palette)}
        if output in ("rle", "both"):
            body["rle"] = _rle(labels, segmenter.class_names)
        if instances is not None:
            body["instances"] = instances
        body["timing_ms"] = {"upload": (t1 - t0) * 1000, "inference": infer_ms,
                             "total": (time.perf_counter() - t0) * 1000}
        return body

    app.state.gate, app.state.segmenter, app.state.limits = gate, segmenter, limits
    return app
