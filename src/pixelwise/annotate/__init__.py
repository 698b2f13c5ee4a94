"""Semi-automatic labelling: ``pixelwise annotate DATA_DIR [--model MODEL_DIR] [--classes a,b,c]``.

A browser page and an HTTP API (``/v1/annotate/...``, FastAPI + uvicorn like ``pixelwise
serve``) over a folder of images: proposals from a box, clicks or scribbles (GrabCut and
watershed with no model, the pixelwise model given with ``--model``, a SAM model with
``--sam``), brush / eraser / polygon editing, masks autosaved atomically as index PNGs in
``DATA_DIR/masks``, exports to LabelMe and COCO, "predict the rest", uncertainty ranking,
and retraining in the background with the new model swapped in when it is better.

    from pixelwise.annotate import open_project, create_app
    store, slot, sam = open_project("my_images", model="runs/demo/best")
    app = create_app(store, slot=slot, sam=sam)      # any ASGI server

Parts: :mod:`.store` (folder, masks, classes), :mod:`.prompts`, :mod:`.classical`,
:mod:`.model_proposals`, :mod:`.sam`, :mod:`.uncertainty`, :mod:`.exports`, :mod:`.jobs`,
:mod:`.retrain`, :mod:`.app`, and the page in ``static/``.
"""

from __future__ import annotations

from pathlib import Path

from .store import STATE_DIR, AnnotationStore, parse_classes

__all__ = ["AnnotationStore", "STATE_DIR", "annotate", "create_app", "open_project", "parse_classes"]


def open_project(data_dir: str | Path, *, model: str | Path | None = None, classes: str | list[str] | None = None,
                 sam: str | Path | None = None, device: str = "cpu"):
    """Open ``data_dir``: ``(AnnotationStore, ModelSlot, SamProposer or None)``.

    The proposing model is ``model`` if given, else the one a previous retrain swapped in
    (``.pixelwise-annotate/model.json``), else none. Classes: ``classes``, else those saved
    with the folder, else the model's, else ``background,foreground``.
    """
    from ..infer.segmenter import Segmenter
    from .jobs import ModelSlot
    from .model_proposals import ModelProposer
    from .retrain import MODEL_FILE

    data_dir = Path(data_dir)
    segmenter, source = None, None
    if model is not None:
        segmenter, source = Segmenter.from_pretrained(model, device=device), str(model)
    else:
        recorded = AnnotationStore.recorded_model(data_dir, MODEL_FILE)
        if recorded is not None:
            segmenter, source = Segmenter.from_pretrained(recorded, device=device), str(recorded)
    store = AnnotationStore(data_dir, classes=parse_classes(classes),
                            model_classes=segmenter.class_names if segmenter else None)
    slot = ModelSlot(ModelProposer(segmenter, store.classes, source=source) if segmenter else None)
    proposer = None
    if sam is not None:
        from .sam import load_sam

        proposer = load_sam(sam, device=device)
    return store, slot, proposer


def create_app(store: AnnotationStore, **kwargs):
    """The FastAPI app (see :func:`pixelwise.annotate.app.create_app`)."""
    _require_serve()
    from .app import create_app as _create

    return _create(store, **kwargs)


def annotate(data_dir: str | Path, *, model: str | Path | None = None, classes: str | None = None,
             sam: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    """Open ``data_dir`` and serve the labelling page until interrupted."""
    _require_serve()
    import uvicorn

    store, slot, proposer = open_project(data_dir, model=model, classes=classes, sam=sam, device=device)
    progress = store.progress()
    print(f"annotating {store.images_dir} ({progress['labelled']}/{progress['total']} labelled, classes "
          f"{', '.join(store.classes)}) on http://{host}:{port}/ (API docs: http://{host}:{port}/docs)")
    uvicorn.run(create_app(store, slot=slot, sam=proposer, device=device), host=host, port=port, log_level="info")


def _require_serve() -> None:
    # Before any model is loaded: the page needs the serve extra (FastAPI + uvicorn).
    from ..optional import require

    for module in ("fastapi", "uvicorn"):
        require(module, "pixelwise annotate")
