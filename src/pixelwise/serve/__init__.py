"""Serving: ``pixelwise serve CHECKPOINT`` — an HTTP API (FastAPI + uvicorn) and a browser page.

``create_app(load_segmenter(folder))`` gives the ASGI app for any ASGI server; :func:`serve`
runs it with uvicorn. A semantic model is served through :class:`pixelwise.segmenter.Segmenter`,
an instance model (Mask R-CNN) through :class:`pixelwise.serve.instance.InstanceSegmenter`.
"""

from __future__ import annotations

from .uploads import ALLOWED_FORMATS, RequestError, ServeLimits, decode_upload

__all__ = ["create_app", "load_segmenter", "serve", "ServeLimits", "RequestError", "decode_upload",
           "ALLOWED_FORMATS"]


def create_app(segmenter, limits: ServeLimits | None = None):
    """The FastAPI app for ``segmenter`` (see :mod:`pixelwise.serve.app`)."""
    _require_serve()
    from .app import create_app as _create

    return _create(segmenter, limits)


def load_segmenter(folder: str, *, device: str = "cpu", amp: str = "none", backend: str = "torch"):
    """The saved model in ``folder``, ready to serve: a ``Segmenter`` for a semantic model, an
    ``InstanceSegmenter`` for an instance model (which runs on PyTorch only)."""
    from ..engine.instance_cli import is_instance_checkpoint
    from ..errors import ConfigError
    from ..segmenter import Segmenter

    if is_instance_checkpoint(folder):
        from .instance import InstanceSegmenter

        if backend != "torch":
            raise ConfigError(f"{folder!r} holds an instance model, which is served with --backend torch only "
                              f"(got {backend!r}); leave --backend out")
        return InstanceSegmenter.from_pretrained(folder, device=device, amp=amp)
    return Segmenter.from_pretrained(folder, device=device, amp=amp, backend=backend)


def serve(folder: str, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", amp: str = "none",
          backend: str = "torch", limits: ServeLimits | None = None) -> None:
    """Load the saved model (semantic or instance) in ``folder`` once and serve it until interrupted."""
    _require_serve()
    import uvicorn

    segmenter = load_segmenter(folder, device=device, amp=amp, backend=backend)
    print(f"serving {segmenter!r} on http://{host}:{port}/ (API docs: http://{host}:{port}/docs)")
    uvicorn.run(create_app(segmenter, limits), host=host, port=port, log_level="info")


def _require_serve() -> None:
    from ..optional import require

    for module in ("fastapi", "uvicorn", "multipart"):
        require(module, "pixelwise serve")
