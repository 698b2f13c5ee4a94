"""Helpers for the server tests that need real sockets: a uvicorn server on 127.0.0.1 (an
ephemeral port) in a thread or in a subprocess, raw HTTP over sockets, and tiny models."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

from pixelwise import create_model, save
from pixelwise.serve import ServeLimits
from pixelwise.serve.protocol import server_options

NAMES = ["background", "cat", "dog"]
import pixelwise  # noqa: E402

SRC = Path(pixelwise.__file__).resolve().parents[1]  # the pixelwise these tests import, for the subprocess too


def tiny_model_dir(folder: Path) -> Path:
    torch.manual_seed(0)
    save(create_model("unet", num_classes=3, base_channels=4, depth=2), folder,
         {"data": {"num_classes": 3, "class_names": NAMES, "ignore_index": 255, "mean": [0.5] * 3,
                   "std": [0.25] * 3}})
    return folder


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def image(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@contextlib.contextmanager
def running(app, limits: ServeLimits):
    """``app`` served by uvicorn with pixelwise's guarded protocol on 127.0.0.1:<free port>; yields (host, port)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", log_config=None, access_log=False,
                            **server_options(read_timeout_s=limits.read_timeout_s,
                                             max_connections=limits.max_connections))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_healthy(f"http://127.0.0.1:{port}")
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def wait_healthy(base: str, *, seconds: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{base} did not come up within {seconds} s")


@contextlib.contextmanager
def cli_server(model: Path, *args: str, stderr_path: Path | None = None):
    """``pixelwise serve MODEL ARGS`` in a subprocess (one torch thread); yields (base URL, Popen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    err = open(stderr_path, "wb") if stderr_path else subprocess.PIPE
    proc = subprocess.Popen([sys.executable, "-m", "pixelwise.cli", "serve", str(model), "--port", str(port), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc=proc if stderr_path is None else None)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if stderr_path:
            err.close()


def request_bytes(method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None,
                  host: str = "127.0.0.1") -> bytes:
    head = {"Host": host, "Content-Length": str(len(body)), **(headers or {})}
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items() if v is not None), "", ""]
    return "\r\n".join(lines).encode() + body


def read_response(sock: socket.socket, *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from ``sock``: (status, headers, body), read by Content-Length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response header: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def closed_by_peer(sock: socket.socket, *, timeout: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``timeout`` s; data before that is skipped."""
    sock.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False
