"""The FastAPI application of ``pixelwise annotate``: the page ``/`` and the API under ``/v1/annotate``.

Every endpoint is listed in docs/annotate.md. Errors are JSON ``{"error": {"code", "message"}}``
as in ``pixelwise serve``: 400 (a malformed name or body), 404 (no such image or mask),
409 (a job already runs, nothing to do yet), 413 (too large), 415 (not an image / not an
index image), 422 (a value that does not fit: a class outside the project, a mask of the
wrong size, a prompt outside the image). A refused request changes nothing on disk: a mask
is checked completely before the one atomic write.
"""

from __future__ import annotations

import base64
import io
from importlib import resources
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import DataError, PixelwiseError
from ..postprocess.cleanup import clean_mask
from ..serve.uploads import RequestError, ServeLimits
from .classical import classical_proposal, grabcut, watershed
from .exports import export_coco, export_folder, export_labelme
from .jobs import UNCERTAINTY_FILE, Job, JobBusy, ModelSlot, predict_rest
from .prompts import Prompt
from .retrain import retrain, retrain_options
from .store import AnnotationStore
from .uncertainty import MEASURES, rank_by_uncertainty

__all__ = ["create_app", "METHODS"]

METHODS: tuple[str, ...] = ("auto", "grabcut", "watershed", "model", "model+grabcut", "sam")
STATIC = {"annotate.js": "text/javascript", "annotate.css": "text/css"}
_INDEX_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B")


def _hex(color: np.ndarray) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in color[:3])


def _png(array: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    if palette is None:
        ok, data = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
        return data.tobytes()
    img = Image.fromarray(array.astype(np.uint8), mode="L")
    img.putpalette(palette[:256].astype(np.uint8).tobytes())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "too_large", f"the request has {declared} bytes; the limit here is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "too_large", f"the request exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_mask_bytes(data: bytes, content_type: str, *, height: int, width: int,
                      max_pixels: int) -> np.ndarray:
    """A mask sent by a client -> ``(H, W)`` int64, or :class:`RequestError`.

    ``application/octet-stream``: ``H * W`` bytes, one class index per pixel, row by row.
    Anything else must be a single-channel index image (PNG/TIFF, mode L, P or 16-bit),
    whose pixel values are the class indices.
    """
    if not data:
        raise RequestError(400, "empty_body", "the request holds no mask; send H*W raw bytes "
                                              "(application/octet-stream) or an index PNG (image/png)")
    if content_type.startswith("application/octet-stream"):
        if len(data) != height * width:
            raise RequestError(422, "wrong_size", f"the raw mask has {len(data)} bytes but the image is {width}x"
                                                  f"{height} = {height * width} pixels; send one byte per pixel")
        return np.frombuffer(data, np.uint8).reshape(height, width).astype(np.int64)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, (w, h) = img.format, img.mode, img.size
            if fmt not in ("PNG", "TIFF"):
                raise RequestError(415, "unsupported_type", f"{fmt} masks are not accepted; send an index PNG")
            if w * h > max_pixels:
                raise RequestError(413, "too_many_pixels", f"the mask is {w}x{h} pixels; the limit is {max_pixels}")
            if mode not in _INDEX_MODES:
                raise RequestError(415, "not_an_index_image",
                                   f"the mask is a {mode} image; masks are single-channel index or palette PNGs "
                                   f"whose pixel values are class indices (colour masks are ambiguous)")
            img.load()
            array = np.asarray(img).astype(np.int64)
    except (UnidentifiedImageError, DecompressionBombError):
        raise RequestError(415, "not_an_image", "the mask bytes are not an image; send an index PNG (image/png) "
                                                "or H*W raw bytes (application/octet-stream)") from None
    except RequestError:
        raise
    except Exception as err:  # a truncated or corrupt file
        raise RequestError(400, "corrupt_image", f"the mask cannot be decoded ({type(err).__name__}: {err})") \
            from None
    if array.shape != (height, width):
        raise RequestError(422, "wrong_size", f"the mask is {array.shape[1]}x{array.shape[0]} (WxH) but the image is "
                                              f"{width}x{height}; send one class index per image pixel")
    return array


def create_app(store: AnnotationStore, *, slot: ModelSlot | None = None, sam=None,
               limits: ServeLimits | None = None, device: str = "cpu") -> FastAPI:
    """The annotation server for ``store``; ``slot`` holds the proposing model (if any), ``sam`` a
    :class:`~pixelwise.annotate.sam.SamProposer` (or None)."""
    limits = limits or ServeLimits()
    slot = slot or ModelSlot()
    predict_job, retrain_job = Job("predict"), Job("retrain")
    app = FastAPI(title="pixelwise annotate", version="1",
                  description="Semi-automatic labelling: proposals from prompts, masks, exports, retraining.")
    package = resources.files("pixelwise.annotate").joinpath("static")
    page = package.joinpath("index.html").read_text(encoding="utf-8")

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": {"code": err.code, "message": err.message}}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": {"code": "invalid_parameter", "message": problems}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            # Also where a name holding '/' (say ../../etc) lands: it matches no route.
            message = (f"no endpoint {request.url.path!r}; the API is listed at /docs, and image names never "
                       f"contain '/' (GET /v1/annotate/images lists them)")
            return JSONResponse({"error": {"code": "not_found", "message": message}}, status_code=404)
        return JSONResponse({"error": {"code": "http_error", "message": str(err.detail)}}, status_code=err.status_code)

    def entry(name: str):
        try:
            return store.entry(name)
        except DataError as err:
            raise RequestError(400, "bad_name", str(err)) from None
        except KeyError as err:
            raise RequestError(404, "no_such_image", err.args[0]) from None

    def info(name: str) -> dict[str, Any]:
        height, width = store.image(entry(name).name).shape[:2]
        names = [e.name for e in store.entries()]
        i = names.index(name)
        scores = store.read_state(UNCERTAINTY_FILE, {})
        return {"name": name, "width": width, "height": height, "labelled": store.mask_path(name).is_file(),
                "proposal": store.proposal_path(name).is_file(), "uncertainty": scores.get(name),
                "index": i, "previous": names[i - 1] if i > 0 else None,
                "next": names[i + 1] if i + 1 < len(names) else None}

    def project() -> dict[str, Any]:
        proposer = slot.get()
        available = ["grabcut", "watershed"] + (["model", "model+grabcut"] if proposer else []) + \
            (["sam"] if sam else [])
        return {"root": str(store.root), "images_dir": str(store.images_dir), "masks_dir": str(store.masks_dir),
                "classes": [{"id": i, "name": n, "color": _hex(store.palette[i])} for i, n in enumerate(store.classes)],
                "progress": store.progress(),
                "model": {"source": proposer.source, "classes": proposer.segmenter.class_names} if proposer else None,
                "sam": sam.source if sam else None, "methods": ["auto", *available]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/static/{file}", include_in_schema=False)
    async def static(file: str) -> Response:
        if file not in STATIC:
            raise RequestError(404, "not_found", f"no static file {file!r}")
        return Response(package.joinpath(file).read_bytes(), media_type=STATIC[file])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness and progress."""
        return {"status": "ok", **store.progress()}

    @app.get("/v1/annotate/project")
    async def get_project() -> dict[str, Any]:
        """Classes with colours, progress, the proposing model and SAM, the proposal methods."""
        return project()

    @app.get("/v1/annotate/images")
    async def list_images() -> dict[str, Any]:
        """Every image with whether it is labelled, has a model proposal, and its uncertainty."""
        labelled, scores = set(store.labelled()), store.read_state(UNCERTAINTY_FILE, {})
        items = [{"name": e.name, "file": e.path.name, "labelled": e.name in labelled,
                  "proposal": store.proposal_path(e.name).is_file(), "uncertainty": scores.get(e.name)}
                 for e in store.entries()]
        return {"images": items, "progress": store.progress()}

    @app.get("/v1/annotate/images/{name}")
    async def get_image_info(name: str) -> dict[str, Any]:
        """Size, state and neighbours (previous / next by name) of one image."""
        return await run_in_threadpool(info, name)

    @app.get("/v1/annotate/images/{name}/image", response_class=Response)
    async def get_image(name: str) -> Response:
        """The image as an RGB PNG (the pixels the masks refer to)."""
        rgb = await run_in_threadpool(store.image, entry(name).name)
        return Response(await run_in_threadpool(_png, rgb), media_type="image/png")

    @app.get("/v1/annotate/images/{name}/mask", response_class=Response)
    async def get_mask(name: str, source: str = Query("saved", pattern="^(saved|proposal|any)$"),
                       format: str = Query("png", pattern="^(png|raw)$")) -> Response:
        """The saved mask (or the model's proposal) as an index PNG or ``H*W`` raw bytes.
        ``source=any``: the saved mask, else the proposal. Header ``X-Mask-Source`` says which."""
        entry(name)
        found, labels = None, None
        for kind in (("saved", "proposal") if source == "any" else (source,)):
            labels = await run_in_threadpool(store.read_mask, name, source=kind)
            if labels is not None:
                found = kind
                break
        if labels is None:
            raise RequestError(404, "no_mask", f"{name!r} has no {'mask or proposal' if source == 'any' else source} "
                                               f"mask yet")
        headers = {"X-Mask-Source": found, "X-Width": str(labels.shape[1]), "X-Height": str(labels.shape[0]),
                   "Cache-Control": "no-store"}
        if format == "raw":
            return Response(labels.tobytes(), media_type="application/octet-stream", headers=headers)
        return Response(_png(labels, store.palette), media_type="image/png", headers=headers)

    async def _labels_from(request: Request, name: str) -> np.ndarray:
        height, width = (await run_in_threadpool(store.image, entry(name).name)).shape[:2]
        data = await _body(request, max(limits.max_bytes, height * width + 1))
        labels = decode_mask_bytes(data, request.headers.get("content-type", ""), height=height, width=width,
                                   max_pixels=limits.max_pixels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(store.classes)):
            bad = np.unique(labels[(labels < 0) | (labels >= len(store.classes))])[:10].tolist()
            raise RequestError(422, "unknown_class", f"the mask has class(es) {bad}; this project's classes are "
                                                     f"0..{len(store.classes) - 1} ({', '.join(store.classes)})")
        return labels

    @app.put("/v1/annotate/images/{name}/mask")
    async def put_mask(name: str, request: Request) -> dict[str, Any]:
        """Save the mask of ``name`` (raw ``H*W`` bytes or an index PNG); atomic."""
        labels = await _labels_from(request, name)
        try:
            await run_in_threadpool(store.save_mask, name, labels)
        except DataError as err:
            raise RequestError(422, "invalid_mask", str(err)) from None
        counts = np.bincount(labels.ravel(), minlength=len(store.classes))
        return {"name": name, "saved": True, "pixels": {n: int(counts[i]) for i, n in enumerate(store.classes)},
                "progress": store.progress()}

    @app.post("/v1/annotate/images/{name}/cleanup", response_class=Response)
    async def cleanup(name: str, request: Request, min_size: int = Query(0, ge=0, le=10 ** 8),
                      fill_holes: bool = Query(False)) -> Response:
        """Remove components under ``min_size`` pixels and/or fill holes in the mask sent (raw or PNG);
        returns the result as raw bytes. Saves nothing."""
        labels = await _labels_from(request, name)
        out = await run_in_threadpool(lambda: clean_mask(labels, min_size=min_size, fill_holes=fill_holes,
                                                         ignore_index=None))
        return Response(out.astype(np.uint8).tobytes(), media_type="application/octet-stream")

    def propose(name: str, body: dict[str, Any]) -> dict[str, Any]:
        rgb = store.image(name)
        height, width = rgb.shape[:2]
        method = body.get("method", "auto")
        if method not in METHODS:
            raise RequestError(422, "unknown_method", f"method {method!r} is not known; use one of {METHODS}")
        try:
            prompt = Prompt.parse(body, height=height, width=width, num_classes=len(store.classes))
        except DataError as err:
            raise RequestError(422, "invalid_prompt", str(err)) from None
        proposer = slot.get()
        if method == "auto":
            method = "sam" if sam else "grabcut" if prompt.box is not None else "model" if proposer else "watershed"
        if method == "grabcut" and prompt.box is None:
            raise RequestError(422, "invalid_prompt", "grabcut needs a box; draw one, or use watershed for clicks")
        if method == "watershed" and not prompt.positives_given():
            raise RequestError(422, "invalid_prompt", "watershed needs at least one positive click or scribble")
        if method == "model+grabcut" and prompt.box is None:
            raise RequestError(422, "invalid_prompt", "model+grabcut needs a box; draw one, or use model for clicks")
        if method in ("model", "model+grabcut") and proposer is None:
            raise RequestError(409, "no_model", "no model proposes yet: start with --model MODEL_DIR, or label a few "
                                                "images and retrain")
        if method == "sam" and sam is None:
            raise RequestError(409, "no_sam", "no SAM model is loaded: start with --sam SAM_DIR (a folder written by "
                                              "transformers' SamModel.save_pretrained)")
        if method == "grabcut":
            mask = grabcut(rgb, prompt)
        elif method == "watershed":
            mask = watershed(rgb, prompt)
        elif method == "model":
            mask = proposer.propose(rgb, prompt, name)
        elif method == "model+grabcut":
            mask = proposer.refine(rgb, prompt, name)
        elif method == "sam":
            mask = sam.propose(rgb, prompt, name)
        else:
            mask, method = classical_proposal(rgb, prompt)
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            return {"method": method, "class_id": prompt.class_id, "area": 0, "bbox": [0, 0, 0, 0], "data": ""}
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
        return {"method": method, "class_id": prompt.class_id, "area": int(len(ys)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                "data": base64.b64encode(crop.tobytes()).decode("ascii")}

    @app.post("/v1/annotate/images/{name}/proposal")
    async def post_proposal(name: str, request: Request) -> dict[str, Any]:
        """A proposal for one object from a prompt (JSON: method, class_id, box, points, scribbles).

        Returns the object's bounding box ``[x, y, w, h]`` and its mask inside it, base64 of
        ``w*h`` bytes (0/1, row by row). Saves nothing: the page merges it, then saves."""
        try:
            body = await request.json()
        except ValueError:
            raise RequestError(400, "invalid_json", "the proposal request body must be JSON") from None
        if not isinstance(body, dict):
            raise RequestError(400, "invalid_json", "the proposal request body must be a JSON object")
        name = entry(name).name
        return await run_in_threadpool(propose, name, body)

    @app.get("/v1/annotate/next")
    async def next_image(after: str | None = None,
                         strategy: str = Query("uncertainty", pattern="^(uncertainty|order)$"),
                         measure: str = Query("entropy", pattern="^(entropy|margin)$")) -> dict[str, Any]:
        """The next unlabelled image: the most uncertain one (after "predict the rest"), else the
        next in name order after ``after``."""
        names = [e.name for e in store.entries()]
        labelled = set(store.labelled())
        todo = [n for n in names if n not in labelled and n != after]
        if not todo:
            return {"name": None, "strategy": strategy, "progress": store.progress()}
        if strategy == "uncertainty":
            scores = store.read_state(UNCERTAINTY_FILE, {})
            ranked = rank_by_uncertainty(scores, todo, measure=measure)
            if ranked:
                return {"name": ranked[0], "strategy": "uncertainty", "measure": measure,
                        "score": scores[ranked[0]][measure], "progress": store.progress()}
        start = names.index(after) + 1 if after in names else 0
        ordered = names[start:] + names[:start]
        return {"name": next(n for n in ordered if n in todo), "strategy": "order", "progress": store.progress()}

    async def _json(request: Request) -> dict[str, Any]:
        data = await request.body()
        if not data:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise RequestError(400, "invalid_json", "the request body must be JSON (or empty)") from None
        if not isinstance(body, dict):
            raise RequestError(400, "invalid_json", "the request body must be a JSON object")
        return body

    def start(job: Job, work) -> JSONResponse:
        try:
            return JSONResponse(job.start(work), status_code=202)
        except JobBusy as err:
            raise RequestError(409, "busy", str(err)) from None

    @app.post("/v1/annotate/predict")
    async def start_predict(request: Request) -> JSONResponse:
        """Start "predict the rest": proposals and uncertainties for every unlabelled image."""
        body = await _json(request)
        if slot.get() is None:
            raise RequestError(409, "no_model", "no model to predict with: start with --model MODEL_DIR, or label a "
                                                "few images and retrain")
        return start(predict_job, lambda job: predict_rest(store, slot, job, overwrite=bool(body.get("overwrite"))))

    @app.get("/v1/annotate/predict")
    async def predict_status() -> dict[str, Any]:
        """Progress of "predict the rest" (``done`` of ``total``)."""
        return predict_job.status()

    @app.post("/v1/annotate/retrain")
    async def start_retrain(request: Request) -> JSONResponse:
        """Start a retrain round on the labelled images (JSON options: steps, batch_size, lr, model, ...)."""
        body = await _json(request)
        if len(store.labelled()) < 2:
            raise RequestError(409, "too_few_labels", f"retraining needs at least 2 labelled images; "
                                                      f"{len(store.labelled())} so far")
        try:
            retrain_options(store, body, slot.get())  # a bad option is the client's 422, not a failed job
        except PixelwiseError as err:
            raise RequestError(422, "invalid_option", str(err)) from None
        return start(retrain_job, lambda job: retrain(store, slot, job, body, device=device))

    @app.get("/v1/annotate/retrain")
    async def retrain_status() -> dict[str, Any]:
        """Progress of the retrain round: phase, step of total_steps, loss, then held-out mIoU old/new
        and whether the new model was swapped in."""
        return retrain_job.status()

    @app.post("/v1/annotate/export")
    async def export(request: Request) -> dict[str, Any]:
        """Write the labelled images as ``labelme``, ``coco`` or ``folder`` under
        ``DATA_DIR/.pixelwise-annotate/exports/FORMAT`` (JSON body ``{"format": ...}``)."""
        body = await _json(request)
        fmt = body.get("format")
        writers = {"labelme": export_labelme, "coco": export_coco, "folder": export_folder}
        if fmt not in writers:
            raise RequestError(422, "unknown_format", f"format {fmt!r} is not known; use one of {sorted(writers)}")
        if not store.labelled():
            raise RequestError(409, "nothing_labelled", "no image is labelled yet; save a mask first")
        try:
            return await run_in_threadpool(writers[fmt], store, store.state_dir / "exports" / fmt)
        except PixelwiseError as err:
            raise RequestError(422, "export_failed", str(err)) from None

    app.state.store, app.state.slot, app.state.sam = store, slot, sam
    app.state.jobs = {"predict": predict_job, "retrain": retrain_job}
    app.state.measures = MEASURES
    return app
