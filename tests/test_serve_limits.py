"""The server bounds what it reads, on real sockets against uvicorn on 127.0.0.1 (issue 18, items 1-3):
admission before the body is read, the size cap while streaming (raw, chunked, multipart; nothing
reaches the disk), slow-client deadlines, the connection cap, one log line per refused client."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time

import httpx
import pytest
import torch

from pixelwise import create_model
from pixelwise.infer.segmenter import Segmenter
from pixelwise.serve import ServeLimits, create_app
from serve_live import NAMES, closed_by_peer, image, png, read_response, request_bytes, running


class Valve:
    """A model function that, while ``hold`` is set, waits for ``release`` before every forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.hold, self.release = model, threading.Event(), threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.hold.is_set():
            self.entered.release()
            self.release.wait(30)
        return self.model(x)


@pytest.fixture(scope="module")
def valve():
    torch.manual_seed(0)
    return Valve(create_model("unet", num_classes=3, base_channels=4, depth=2).eval())


def _segmenter(valve: Valve) -> Segmenter:
    # a plain function, so the memory probe sees it as a PyTorch forward
    return Segmenter(valve.model, mean=[0.5] * 3, std=[0.25] * 3, class_names=NAMES,
                     model_fn=lambda x: valve(x))


def _post(port: int, path: str = "/v1/segment", body: bytes = b"", **headers: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(request_bytes("POST", path, body, headers=headers))
    return sock


def test_admission_comes_before_the_body_is_read(valve):
    """Item 1: with the worker busy and the queue full, a request gets 503 at once, before its body is sent."""
    limits = ServeLimits(workers=1, max_queue=1, read_timeout_s=5.0, max_bytes=8 * 2**20)
    with running(create_app(_segmenter(valve), limits), limits) as (_, port):
        valve.hold.set()
        valve.release.clear()
        body = png(image())
        try:
            running_req = _post(port, body=body)
            assert valve.entered.acquire(timeout=10)  # the only worker is inside the forward
            queued = _post(port, body=body)  # admitted; waits for the worker
            time.sleep(0.3)
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            assert (health["busy"], health["queued"], health["capacity"]) == (1, 1, 2)
            # Headers announcing 7 MiB, and not one byte of the body: the answer must not wait for it.
            refused = socket.create_connection(("127.0.0.1", port))
            refused.sendall(request_bytes("POST", "/v1/segment", headers={"Content-Length": str(7 * 2**20)}))
            t0 = time.monotonic()
            status, headers, payload = read_response(refused, timeout=3)
            assert status == 503 and time.monotonic() - t0 < 2
            assert headers["retry-after"] == "1" and b'"code":"busy"' in payload
        finally:
            valve.release.set()
            valve.hold.clear()
        for sock in (running_req, queued):
            assert read_response(sock, timeout=20)[0] == 200
            sock.close()
        refused.close()


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)


def _spooled_files(folder: str) -> list[str]:
    return [os.path.join(folder, f) for f in os.listdir(folder)]


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_size_limit_holds_while_a_chunked_upload_streams(valve, kind, tmp_path, monkeypatch):
    """Item 2: a chunked upload over the limit (no Content-Length) is answered 413 while it is still being
    sent, and nothing of it reaches the temporary directory (Starlette spools multipart files there)."""
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    limit = 1 * 2**20
    limits = ServeLimits(max_bytes=limit, read_timeout_s=5.0)
    noise = os.urandom(256 * 1024)
    with running(create_app(_segmenter(valve), limits), limits) as (_, port):
        sock = socket.create_connection(("127.0.0.1", port))
        headers = {"Content-Length": None, "Transfer-Encoding": "chunked"}
        if kind == "multipart":
            headers["Content-Type"] = "multipart/form-data; boundary=XyZ"
            sock.sendall(request_bytes("POST", "/v1/segment", headers=headers) + _chunked(
                [(b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
                  b'Content-Type: image/png\r\n\r\n')]))
        else:
            sock.sendall(request_bytes("POST", "/v1/segment", headers=headers))
        sent = 0
        for _ in range(12):  # 3 MiB of a body that would go on for ever, 256 KiB at a time
            sock.sendall(_chunked([noise]))
            sent += len(noise)
            time.sleep(0.02)
        assert _spooled_files(str(spool)) == []  # checked while the connection is open
        status, _, payload = read_response(sock, timeout=5)
        assert status == 413 and b'"too_large"' in payload and sent > limit
        sock.close()
    assert _spooled_files(str(spool)) == []


def test_declared_oversize_is_refused_unread_and_the_client_reads_its_answer(valve):
    """A Content-Length over the limit is refused before reading; a client that keeps sending (and asked
    to close the connection) still gets the JSON 413, not a connection reset."""
    limits = ServeLimits(max_bytes=256 * 1024, read_timeout_s=3.0)
    with running(create_app(_segmenter(valve), limits), limits) as (_, port):
        body = os.urandom(3 * 2**20)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request_bytes("POST", "/v1/segment", headers={"Content-Length": str(len(body)),
                                                                   "Connection": "close"}))
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, payload = read_response(sock, timeout=5)
        assert status == 413 and b"nothing was read" in payload
        sock.close()


def test_stalled_sockets_do_not_stop_the_server(valve, caplog):
    """Item 3: 300 stalled sockets (silent, half a header, half a body) with a cap of 64 connections:
    /healthz answers while they are open, every one of them is closed after the read timeout (408 where
    a request was in progress), a good request then succeeds, and the log has one line per refused
    client and no traceback."""
    limits = ServeLimits(workers=1, max_queue=2, read_timeout_s=1.0, max_connections=64)
    caplog.set_level(logging.INFO)
    stalled: list[socket.socket] = []
    with running(create_app(_segmenter(valve), limits), limits) as (_, port):
        base = f"http://127.0.0.1:{port}"
        caplog.clear()
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", port))
            if i % 3 == 1:
                sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            elif i % 3 == 2:
                sock.sendall(request_bytes("POST", "/v1/segment", b"\x89PNG\r\n",
                                           headers={"Content-Length": "5000"})[:-2])
            stalled.append(sock)
        t0 = time.monotonic()
        health = httpx.get(f"{base}/healthz", timeout=5)
        assert health.status_code == 200 and time.monotonic() - t0 < 2
        assert all(closed_by_peer(s, timeout=4.0) for s in stalled)
        ok = httpx.post(f"{base}/v1/segment", content=png(image()), timeout=20)
        assert ok.status_code == 200, ok.text
        for s in stalled:
            s.close()
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info], "a refused client produced a traceback"
    assert 300 <= len(records) <= 300 + 5, f"{len(records)} warning lines for 300 refused clients"
    reasons = {r.getMessage().split(": ", 1)[1].split(" ")[0] for r in records}
    assert reasons <= {"closed", "sent", "no", "POST", "the"}, reasons


def test_a_stalled_upload_gets_408_and_frees_its_place(valve):
    limits = ServeLimits(workers=1, max_queue=0, read_timeout_s=0.5)
    with running(create_app(_segmenter(valve), limits), limits) as (_, port):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request_bytes("POST", "/v1/segment", png(image())[:50], headers={"Content-Length": "5000"})[:-2])
        t0 = time.monotonic()
        status, headers, payload = read_response(sock, timeout=5)
        assert status == 408 and b'"read_timeout"' in payload and headers.get("connection") == "close"
        assert time.monotonic() - t0 < 3
        assert closed_by_peer(sock, timeout=2)
        sock.close()
        ok = httpx.post(f"http://127.0.0.1:{port}/v1/segment", content=png(image()), timeout=20)
        assert ok.status_code == 200  # the only place was given back
