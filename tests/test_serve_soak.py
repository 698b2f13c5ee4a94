"""The real `pixelwise serve` process on 127.0.0.1 under load (issue 18, item 1 and the soak test):
its memory stays under (workers + queue) x max_bytes during 64 concurrent near-limit uploads, and flat
over 1,000 mixed good and bad requests; every request gets a JSON answer and the log has no traceback."""

from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time
import zlib
from collections import Counter

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from serve_live import cli_server, image, png, read_response, request_bytes, tiny_model_dir

MiB = 2**20
LIMIT = 4 * MiB
WORKERS, QUEUE = 1, 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("soak")
    model = tiny_model_dir(folder / "model")
    log = folder / "server.log"
    with cli_server(model, "--max-bytes", str(LIMIT), "--workers", str(WORKERS), "--max-queue", str(QUEUE),
                    "--max-memory-mb", "320", "--read-timeout", "3", stderr_path=log) as (base, proc):
        yield base, psutil.Process(proc.pid), log


class Sampler:
    """The server's RSS every 20 ms in a thread: ``peak`` and ``samples``."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.samples, self._stop = proc, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _warm(base: str) -> None:
    with httpx.Client(timeout=30) as http:
        for i in range(10):
            assert http.post(f"{base}/v1/segment", content=png(image(seed=i))).status_code == 200


def test_memory_under_64_concurrent_near_limit_uploads(server):
    base, proc, _ = server
    _warm(base)
    before = proc.memory_info().rss
    body = b"\x89PNG\r\n\x1a\n" + os.urandom(int(0.95 * LIMIT))  # 3.8 MiB, under the 4 MiB limit
    port = int(base.rsplit(":", 1)[1])
    statuses: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(64)

    def client() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                barrier.wait()
                sock.sendall(request_bytes("POST", "/v1/segment", body))
                status, _, _ = read_response(sock, timeout=60)
            with lock:
                statuses[status] += 1
        except Exception as err:  # noqa: BLE001 - any transport failure is a test failure, reported below
            with lock:
                errors.append(f"{type(err).__name__}: {err}")

    with Sampler(proc) as rss:
        threads = [threading.Thread(target=client) for _ in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    growth = (max(rss.samples) - before) / MiB
    bound = (WORKERS + QUEUE) * LIMIT / MiB
    print(f"64 x {len(body) / MiB:.1f} MiB uploads: RSS {before / MiB:.0f} MiB -> peak +{growth:.1f} MiB "
          f"(bound (workers + queue) x limit = {bound:.0f} MiB); statuses {dict(statuses)}")
    assert not errors, errors[:3]
    assert sum(statuses.values()) == 64 and set(statuses) <= {400, 503} and statuses[503] >= 64 - WORKERS - QUEUE - 8
    # 64 bodies read at once would be +243 MiB; admitted ones hold 12 MiB, plus socket buffers and one join copy
    assert growth < bound + 40, f"RSS grew {growth:.0f} MiB"


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[8:33] = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


def _tiny_2048() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (2048, 2048)).save(buf, "PNG", optimize=True)
    return buf.getvalue()  # 590 bytes


def _cases() -> list[tuple[str, dict, int]]:
    good = png(image(32, 40, seed=3))
    return [
        ("good", {"url": "/v1/segment", "content": good}, 200),
        ("good multipart", {"url": "/v1/segment?output=both", "files": {"image": ("a.png", good, "image/png")}}, 200),
        ("not an image", {"url": "/v1/segment", "content": b"GIF? no: " * 40}, 415),
        ("truncated", {"url": "/v1/segment", "content": good[: len(good) // 2]}, 400),
        ("bomb header", {"url": "/v1/segment", "content": _png_claiming(100_000, 100_000)}, 413),
        ("590 B 2048x2048", {"url": "/v1/segment", "content": _tiny_2048()}, 413),
        ("unknown option", {"url": "/v1/segment?ttaa=flip", "content": good}, 422),
        ("bad value", {"url": "/v1/segment?tile=5", "content": good}, 422),
        ("no route", {"url": "/v2/segment", "content": good}, 404),
        ("no image field", {"url": "/v1/segment", "files": {"file": ("a.png", good, "image/png")}}, 400),
        ("foreign Host", {"url": "/v1/segment", "content": good, "headers": {"Host": "evil.example"}}, 403),
        ("empty", {"url": "/v1/segment", "content": b""}, 400),
    ]


def test_soak_memory_is_flat_over_1000_mixed_requests(server):
    base, proc, log = server
    _warm(base)
    cases = _cases()
    too_big = os.urandom(LIMIT + 1)
    statuses: Counter = Counter()
    wrong: list[str] = []
    lock = threading.Lock()
    marks: dict[int, int] = {}
    done = [0]

    def client(worker: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            for i in range(worker, 1000, 4):
                if i % 100 == 99:
                    name, kwargs, want = "over max-bytes", {"url": "/v1/segment", "content": too_big}, 413
                else:
                    name, kwargs, want = cases[i % len(cases)]
                for _ in range(200):  # a polite client retries a 503 (the server holds 3 requests at a time)
                    resp = http.post(**kwargs)
                    if resp.status_code != 503:
                        break
                    assert resp.headers["retry-after"] == "1" and resp.json()["error"]["code"] == "busy"
                    with lock:
                        statuses["503 then retried"] += 1
                    time.sleep(0.005)
                ok = resp.status_code == want and (want == 200 or set(resp.json()) == {"error"})
                with lock:
                    statuses[resp.status_code] += 1
                    done[0] += 1
                    if done[0] in (200, 1000):
                        marks[done[0]] = proc.memory_info().rss
                    if not ok:
                        wrong.append(f"{name}: {resp.status_code} {resp.text[:200]}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    seconds = time.monotonic() - t0
    growth = (marks[1000] - marks[200]) / MiB
    print(f"1000 mixed requests in {seconds:.1f} s: {dict(statuses)}; RSS after 200 {marks[200] / MiB:.0f} MiB, "
          f"after 1000 {marks[1000] / MiB:.0f} MiB ({growth:+.1f} MiB)")
    assert not wrong, wrong[:5]
    assert sum(n for k, n in statuses.items() if k != "503 then retried") == 1000
    assert growth < 16, f"RSS grew {growth:.1f} MiB over 800 requests"
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Exception in ASGI application" not in text
