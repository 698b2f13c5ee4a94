"""Serving: ``pixelwise serve CHECKPOINT`` — an HTTP API (FastAPI + uvicorn) and a browser page.

``create_app(load_segmenter(folder))`` gives the ASGI app for any ASGI server; :func:`serve`
runs it with uvicorn. A semantic model is served through :class:`pixelwise.infer.segmenter.Segmenter`,
an instance model (Mask R-CNN) through :class:`pixelwise.serve.instance.InstanceSegmenter`.
"""

from __future__ import annotations

import contextlib

from .uploads import ALLOWED_FORMATS, RequestError, ServeLimits, decode_upload

__all__ = ["create_app", "load_segmenter", "serve", "ServeLimits", "RequestError", "decode_upload",
           "ALLOWED_FORMATS"]


def create_app(segmenter, limits: ServeLimits | None = None, *, host: str | None = None, token: str | None = None):
    """The FastAPI app for ``segmenter`` (see :mod:`pixelwise.serve.app`); ``host`` (the bind address)
    turns on the Host check for loopback binds, ``token`` requires a bearer token."""
    _require_serve()
    from .app import create_app as _create

    return _create(segmenter, limits, host=host, token=token)


def load_segmenter(folder: str, *, device: str = "cpu", amp: str = "none", backend: str = "torch"):
    """The saved model in ``folder``, ready to serve: a ``Segmenter`` for a semantic model, an
    ``InstanceSegmenter`` for an instance model (which runs on PyTorch only)."""
    from ..errors import ConfigError
    from ..hub import is_instance_folder
    from ..infer.segmenter import Segmenter

    if is_instance_folder(folder):
        from .instance import InstanceSegmenter

        if backend != "torch":
            raise ConfigError(f"{folder!r} holds an instance model, which is served with --backend torch only "
                              f"(got {backend!r}); leave --backend out")
        return InstanceSegmenter.from_pretrained(folder, device=device, amp=amp)
    return Segmenter.from_pretrained(folder, device=device, amp=amp, backend=backend)


def serve(folder: str, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", amp: str = "none",
          backend: str = "torch", limits: ServeLimits | None = None, token: str | None = None) -> None:
    """Load the saved model (semantic or instance) in ``folder`` once and serve it until interrupted.

    ``token`` (default: the ``PIXELWISE_TOKEN`` environment variable) is required for a
    ``host`` other than this machine. The server runs uvicorn with the guarded protocol of
    :mod:`pixelwise.serve.protocol` (header deadline, connection cap).
    """
    _require_serve()
    import copy
    import os

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from .access import check_bind
    from .protocol import LOGGER_NAME, server_options

    limits = limits or ServeLimits()
    token = token if token is not None else os.environ.get("PIXELWISE_TOKEN") or None
    check_bind(host, token)
    max_connections = _room_for_connections(limits.max_connections)
    segmenter = load_segmenter(folder, device=device, amp=amp, backend=backend)
    app = create_app(segmenter, limits, host=host, token=token)
    login = "#token=<your token>" if token else ""
    print(f"serving {segmenter!r} on http://{host}:{port}/{login} (API docs: http://{host}:{port}/docs)")
    print(_budget_line(app.state.budget))
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"][LOGGER_NAME] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config,
                **server_options(read_timeout_s=limits.read_timeout_s, max_connections=max_connections))


def _require_serve() -> None:
    from ..optional import require

    # python_multipart: the module name since python-multipart 0.0.13 (pixelwise.serve.body parses uploads with it)
    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "pixelwise serve")


def _budget_line(budget) -> str:
    """What the per-request memory budget lets through, said at startup (a budget too small for the
    model shows here, not as a 413 on every request)."""
    side = budget.largest_side()
    line = (f"per-request memory budget {budget.limit >> 20} MiB (--max-memory-mb): images up to about "
            f"{side} x {side} pixels with the default options")
    if side < 512:
        need = budget.estimate(1024, 1024, tile=budget.default_tile if budget.task == "semantic" else None)
        line += (f"; a 1024 x 1024 image would need about {need >> 20} MiB: raise --max-memory-mb to serve "
                 f"larger images")
    return line


def _room_for_connections(wanted: int) -> int:
    """``wanted``, or fewer if the file-descriptor limit (raised to its hard maximum first) has no
    room for them plus the model's files: running out of descriptors makes every accept fail."""
    try:
        import resource
    except ImportError:  # not on Windows
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    room = max(16, soft - 128)
    if wanted > room:
        print(f"--max-connections {wanted} lowered to {room}: the open-file limit is {soft} (ulimit -n)")
    return min(wanted, room)
