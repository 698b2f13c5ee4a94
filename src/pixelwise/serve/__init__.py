"""Serving: ``pixelwise serve CHECKPOINT`` — an HTTP API (FastAPI + uvicorn) and a browser page.

``create_app(Segmenter.from_pretrained(folder))`` gives the ASGI app for any ASGI server;
:func:`serve` runs it with uvicorn.
"""

from __future__ import annotations

from .uploads import ALLOWED_FORMATS, RequestError, ServeLimits, decode_upload

__all__ = ["create_app", "serve", "ServeLimits", "RequestError", "decode_upload", "ALLOWED_FORMATS"]


def create_app(segmenter, limits: ServeLimits | None = None):
    """The FastAPI app for ``segmenter`` (see :mod:`pixelwise.serve.app`)."""
    from .app import create_app as _create

    return _create(segmenter, limits)


def serve(folder: str, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", amp: str = "none",
          backend: str = "torch", limits: ServeLimits | None = None) -> None:
    """Load the saved model in ``folder`` once and serve it until interrupted."""
    import uvicorn

    from ..segmenter import Segmenter

    segmenter = Segmenter.from_pretrained(folder, device=device, amp=amp, backend=backend)
    print(f"serving {segmenter!r} on http://{host}:{port}/ (API docs: http://{host}:{port}/docs)")
    uvicorn.run(create_app(segmenter, limits), host=host, port=port, log_level="info")
