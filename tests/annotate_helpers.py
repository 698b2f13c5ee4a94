"""Shared pieces of the annotate tests: a generated folder of synthetic shapes and a local server."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from scipy import ndimage

from pixelwise.data import write_image
from pixelwise.data.synthetic import CLASS_NAMES, SyntheticShapes

CLASSES = list(CLASS_NAMES)  # background, circle, rectangle, triangle, star


def make_folder(root: Path, *, count: int = 4, size: int = 64, seed: int = 3) -> dict[str, np.ndarray]:
    """``root/images/imgK.png`` for K < count; returns the true masks by name."""
    truth = {}
    data = SyntheticShapes(count, image_size=size, seed=seed)
    for i in range(count):
        image, mask = data.generate(i)
        write_image(root / "images" / f"img{i}.png", image)
        truth[f"img{i}"] = mask
    return truth


def objects(mask: np.ndarray, *, min_area: int = 30) -> list[tuple[int, list[int], np.ndarray]]:
    """``(class, [x0, y0, x1, y1] exclusive, bool mask)`` of every 8-connected object, largest first."""
    out = []
    for cls in range(1, int(mask.max()) + 1):
        pieces, count = ndimage.label(mask == cls, structure=np.ones((3, 3), bool))
        for k, (rows, cols) in enumerate(ndimage.find_objects(pieces), start=1):
            obj = pieces == k
            if obj.sum() >= min_area:
                out.append((cls, [cols.start, rows.start, cols.stop, rows.stop], obj))
    return sorted(out, key=lambda o: -o[2].sum())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Chromium found: install it with `apt-get install chromium` (make test does this)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base} did not answer /healthz within {timeout} s")


@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn on a free local port in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
