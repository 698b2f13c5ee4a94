"""The FastAPI application: ``/v1/segment``, ``/v1/model``, ``/healthz`` and the browser page ``/``.

The model is loaded once: a semantic :class:`~pixelwise.infer.segmenter.Segmenter` or an instance
:class:`~pixelwise.serve.instance.InstanceSegmenter`, which is called the same way and whose
responses add an ``instances`` list; query options of the other kind of model, and unknown
ones, are refused (HTTP 422), never ignored.

A request to ``/v1/segment`` goes through, in order: the Host check and the bearer token
(:mod:`.access`), the query options, admission (:class:`~.gate.Gate`: a place or 503, before
a byte of the body is read), the upload read with its size cap and deadlines (:mod:`.body`),
the header probe and the memory budget (:mod:`.budget`, 413 before decoding), and a worker
thread (optionally with dynamic batching, :mod:`.batching`). Every error, the framework's
own 404/405/422 included, is ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import time
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError
from ..infer.segmenter import Segmenter
from .access import AccessGuard
from .batching import Batcher
from .body import ClientGone, read_upload
from .budget import MemoryBudget
from .gate import Gate
from .instance import SEMANTIC_ONLY, InstanceSegmenter, instance_items
from .schema import ERROR_RESPONSES, REQUEST_BODY, SegmentResponse, hex_color, png_base64, rle
from .uploads import RequestError, ServeLimits, decode_upload, log_rejection, probe_upload

__all__ = ["create_app", "Gate", "model_card", "QUERY_OPTIONS"]

QUERY_OPTIONS = ("tile", "overlap", "tta", "crf", "score_threshold", "output")


def _task(segmenter: Segmenter | InstanceSegmenter) -> str:
    return getattr(segmenter, "task", "semantic")


def _public(value: Any) -> Any:
    """``value`` with every absolute file path cut to its file name: clients see what the model
    is, not where the server keeps its files (weight sources, data roots, run folders)."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    if isinstance(value, str) and (value.startswith("/") or (len(value) > 2 and value[1] == ":" and value[2] in "\\/")):
        return Path(value).name
    return value


def _input_card(segmenter: Segmenter | InstanceSegmenter) -> dict[str, Any]:
    """The card's input conventions: 8-bit RGB, or the stored values of a raw-mode model."""
    formats = ["PNG", "JPEG", "BMP", "TIFF", "WEBP"]
    if getattr(segmenter, "raw", False):
        prep = segmenter.preprocessing
        return {"color": f"stored values, {segmenter.in_channels} channel(s) (data.image_mode: raw)",
                "dtype": "any (uint8, uint16, int16, float32, ...)", "any_size": True,
                "normalisation": {**prep.to_dict(), "description": prep.describe()},
                "tile_hint": segmenter.tile, "formats": formats + ["NPY"]}
    return {"color": "RGB (grey and RGBA are converted)", "dtype": "uint8", "any_size": True,
            "normalisation": {"mean": segmenter.mean, "std": segmenter.std, "scale": "pixel / 255"},
            "tile_hint": segmenter.tile, "formats": formats}


def model_card(segmenter: Segmenter | InstanceSegmenter, limits: ServeLimits,
               budget: MemoryBudget | None = None) -> dict[str, Any]:
    """What a client needs to know: architecture, task, query options, classes and colours, input
    conventions, scores, limits and the measured memory figures."""
    config = getattr(segmenter.model, "config", {})
    task = _task(segmenter)
    card = {
        "name": config.get("name", type(segmenter.model).__name__),
        "architecture": _public(config),
        "task": task,
        "options": ["score_threshold", "output"] if task == "instance" else [*SEMANTIC_ONLY, "output"],
        "classes": [{"id": i, "name": n, "color": hex_color(segmenter.palette[i])}
                    for i, n in enumerate(segmenter.class_names)],
        "input": _input_card(segmenter),
        "metrics": _public(segmenter.config.get("scores")),
        "limits": limits.as_dict(),
    }
    if budget is not None:
        card["memory"] = budget.describe()
    if task == "instance":  # the detector resizes every image itself: short side min_size, long side <= max_size
        card["input"]["resize"] = {"min_size": config.get("min_size"), "max_size": config.get("max_size")}
        keypoints = (segmenter.config.get("data") or {}).get("keypoints")
        if keypoints:  # what each instance's "keypoints" [x, y, score] * P means
            card["keypoints"] = {"names": keypoints["names"], "skeleton": keypoints.get("skeleton", [])}
    return card


def _known_options(request: Request) -> None:
    """HTTP 422 naming every query option this API does not have (a typo is never silently ignored)."""
    unknown = [name for name in request.query_params if name not in QUERY_OPTIONS]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, QUERY_OPTIONS, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RequestError(422, "unknown_option", f"unknown query option{'s' if len(unknown) > 1 else ''} "
                                                  f"{', '.join(hints)}; the options are {', '.join(QUERY_OPTIONS)}")


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


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error in one shape, ``{"error": {"code", "message"}}``, and one log line per refusal."""

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError) -> JSONResponse:
        log_rejection(request.client, request.method, request.url.path, err.status, err.code, err.message)
        headers = {"Retry-After": "1"} if err.status == 503 else None
        if err.status == 408:  # the client stalled: do not wait for the rest of its body
            headers = {"Connection": "close"}
        return _error(err.status, err.code, err.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_parameter(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in err.errors())
        log_rejection(request.client, request.method, request.url.path, 422, "invalid_parameter", problems)
        return _error(422, "invalid_parameter", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if err.status_code == 404:
            code, message = "not_found", (f"no such endpoint: {where}; the API is POST /v1/segment, GET /v1/model "
                                          f"and GET /healthz (see /docs)")
        elif err.status_code == 405:
            allowed = (err.headers or {}).get("allow", "another method")
            code, message = "method_not_allowed", f"{where} is not allowed; {request.url.path} accepts {allowed}"
        else:
            code, message = f"http_{err.status_code}", str(err.detail)
        log_rejection(request.client, request.method, request.url.path, err.status_code, code, message)
        return _error(err.status_code, code, message, dict(err.headers or {}))

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, err: ClientGone) -> Response:
        log_rejection(request.client, request.method, request.url.path, 499, "client_gone", str(err))
        return Response(status_code=400)  # nobody reads it: the connection is closed

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        return _error(500, "internal_error", f"the server failed on this request ({type(err).__name__}); the "
                                             f"server log has the details")


def create_app(segmenter: Segmenter | InstanceSegmenter, limits: ServeLimits | None = None, *,
               host: str | None = None, token: str | None = None) -> FastAPI:
    """The HTTP application serving ``segmenter`` (semantic or instance).

    Args:
        segmenter: the model to serve (:func:`pixelwise.serve.load_segmenter`).
        limits: sizes, counts and times (:class:`ServeLimits`).
        host: the address the server listens on; a loopback one turns on the Host check
            (DNS rebinding protection). ``None``: unknown, no Host check.
        token: when given, every API path needs ``Authorization: Bearer <token>``.
    """
    limits = limits or ServeLimits()
    task = _task(segmenter)
    if limits.batch_max > 1 and task != "semantic":
        raise ConfigError(f"dynamic batching (batch_max={limits.batch_max}) is for semantic models; this is an "
                          f"instance model (each Mask R-CNN image runs alone): leave --batch-max out")
    # tta/crf do not exist for instance models, so their 504 must not suggest dropping them.
    gate = Gate(limits.workers, limits.max_queue,
                hint="use a smaller image or fewer options (tta, crf)" if task == "semantic" else
                "use a smaller image, or start the server with a longer --timeout")
    budget = MemoryBudget(segmenter, limits.max_memory_mb)
    runner: Any = segmenter
    batcher: Batcher | None = None
    if limits.batch_max > 1:
        batcher = Batcher(segmenter.model_fn, max_batch=limits.batch_max, max_wait_s=limits.batch_wait_ms / 1000,
                          pad_multiple=int(getattr(segmenter.model, "pad_multiple", 1) or 1))
        runner = copy.copy(segmenter)  # the same model and preprocessing; its forwards go through the batcher
        runner.model_fn = batcher
    card = model_card(segmenter, limits, budget)
    page = resources.files("pixelwise.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if batcher is not None:
            batcher.close()
        gate.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="pixelwise", version="1", description="Semantic and instance segmentation over HTTP.",
                  lifespan=lifespan)
    _install_error_handlers(app)
    app.add_middleware(AccessGuard, bind_host=host, token=token)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness and load: ``busy`` of ``workers`` threads are segmenting now (a job whose request
        timed out included), ``queued`` admitted requests are uploading or waiting for one;
        ``capacity`` is how many the server holds before it answers 503."""
        return {"status": "ok", "model": card["name"], "workers": gate.workers, "busy": gate.busy,
                "queued": gate.queued, "pending": gate.busy + gate.queued, "capacity": gate.capacity}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The model card: architecture, task, options, classes with colours, input conventions, scores, limits."""
        return card

    @app.post("/v1/segment", response_model=SegmentResponse, responses=ERROR_RESPONSES,
              openapi_extra={"requestBody": REQUEST_BODY}, dependencies=[Depends(_known_options)])
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
        output: Literal["png", "rle", "both"] = Query("png", description="label map as palette PNG, COCO RLE, or both"),
    ) -> dict[str, Any]:
        """Segment one image (multipart field ``image``, or the raw body)."""
        _refuse_inapplicable(task, request, tile=tile, tta=tta, crf=crf)
        if task == "instance":
            call: dict[str, Any] = {"score_threshold": score_threshold}
            options: dict[str, Any] = {"score_threshold": score_threshold, "output": output}
        else:
            call = {"tile": tile, "overlap": overlap, "tta": False if tta == "none" else tta, "crf": crf}
            options = {"tile": tile, "overlap": overlap, "tta": tta, "crf": crf, "output": output}
        t0 = time.perf_counter()
        deadline = time.monotonic() + limits.timeout_s
        with gate.admit() as ticket:  # a place, or 503, before a byte of the body is read
            data = await read_upload(request.receive, request.headers, limits, deadline=deadline)
            t1 = time.perf_counter()
            _, width, height = probe_upload(data, limits, raw=bool(getattr(segmenter, "raw", False)))
            if task == "semantic":
                budget.check(height, width, tile=tile if tile is not None else segmenter.tile, overlap=overlap,
                             tta=tta, crf=crf)
            else:
                budget.check(height, width)

            def work() -> tuple[np.ndarray, list[dict[str, Any]] | None, float]:
                try:
                    image = decode_upload(data, limits, segmenter)
                    start = time.perf_counter()
                    result = runner(image, **call)
                    infer_ms = (time.perf_counter() - start) * 1000
                    return result.labels, instance_items(result) if task == "instance" else None, infer_ms
                except MemoryError:
                    raise RequestError(503, "out_of_memory", "the server ran out of memory on this image; retry "
                                                             "later, or send a smaller image or a tile") from None

            labels, instances, infer_ms = await gate.execute(ticket, work, deadline=deadline,
                                                             timeout_s=limits.timeout_s)
            counts = np.bincount(labels.ravel(), minlength=len(segmenter.class_names))
            total = max(1, labels.size)
            body: dict[str, Any] = {
                "width": int(labels.shape[1]), "height": int(labels.shape[0]),
                "classes": [{"id": i, "name": n, "color": hex_color(segmenter.palette[i]), "pixels": int(counts[i]),
                             "fraction": float(counts[i] / total)} for i, n in enumerate(segmenter.class_names)],
                "options": options,
            }
            if output in ("png", "both"):
                body["mask"] = {"format": "png", "encoding": "base64", "data": png_base64(labels, segmenter.palette)}
            if output in ("rle", "both"):
                body["rle"] = rle(labels, segmenter.class_names)
            if instances is not None:
                body["instances"] = instances
            body["timing_ms"] = {"upload": (t1 - t0) * 1000, "inference": infer_ms,
                                 "total": (time.perf_counter() - t0) * 1000}
            return body

    app.state.gate, app.state.segmenter, app.state.limits = gate, segmenter, limits
    app.state.budget, app.state.batcher = budget, batcher
    return app
