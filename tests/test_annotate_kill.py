"""SIGKILL of `pixelwise annotate` while masks are being saved loses no acknowledged mask and leaves no
half-written one: every mask on disk is a complete version, at least the last one the server confirmed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from annotate_helpers import CLASSES, free_port, make_folder, wait_healthy
from pixelwise.data import read_mask

SIZE, STEP = 256, 53  # version v of a mask has its first v*STEP pixels set: the count names the version


def _version(v: int) -> np.ndarray:
    mask = np.zeros(SIZE * SIZE, np.uint8)
    mask[:v * STEP] = 1 + v % (len(CLASSES) - 1)
    return mask.reshape(SIZE, SIZE)


def _start(folder, port, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pixelwise", "annotate", str(folder), "--port", str(port),
                             "--classes", ",".join(CLASSES)], stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_healthy(f"http://127.0.0.1:{port}")
    return proc


def test_sigkill_while_saving_loses_no_saved_mask(tmp_path):
    folder = tmp_path / "data"
    make_folder(folder, count=4, size=SIZE, seed=2)
    names = [f"img{i}" for i in range(4)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "wb") as log:
        proc = _start(folder, port, log)
        acked = dict.fromkeys(names, 0)
        sent = dict.fromkeys(names, 0)
        stop = threading.Event()

        def writer(name: str) -> None:
            with httpx.Client(timeout=10) as client:
                v = 0
                while not stop.is_set():
                    v += 1
                    sent[name] = v
                    try:
                        r = client.put(f"{base}/v1/annotate/images/{name}/mask", content=_version(v).tobytes(),
                                       headers={"content-type": "application/octet-stream"})
                    except httpx.TransportError:
                        return  # the server is gone
                    assert r.status_code == 200, r.text
                    acked[name] = v

        threads = [threading.Thread(target=writer, args=(n,)) for n in names]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while min(acked.values()) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no shutdown handler runs: as if the power went
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=20)

        assert min(acked.values()) >= 5, acked
        on_disk = {}
        for name in names:
            mask = read_mask(folder / "masks" / f"{name}.png")  # complete and decodable
            version = int((mask > 0).sum()) // STEP
            assert acked[name] <= version <= sent[name], (name, acked[name], version, sent[name])
            assert (mask == _version(version)).all()
            on_disk[name] = mask

        # A restarted server serves exactly those masks and has swept the temporary files.
        proc = _start(folder, port, log)
        try:
            for name in names:
                r = httpx.get(f"{base}/v1/annotate/images/{name}/mask?format=raw")
                assert (np.frombuffer(r.content, np.uint8).reshape(SIZE, SIZE) == on_disk[name]).all()
            assert httpx.get(f"{base}/v1/annotate/project").json()["progress"]["labelled"] == 4
            assert not [p.name for p in (folder / "masks").iterdir() if p.name.startswith(".")]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
