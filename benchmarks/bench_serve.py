"""Load test of `pixelwise serve`: dynamic batching on and off at N concurrent clients, and the memory
bounds under an upload flood and a tiny file that declares a huge image.

For each image side in ``--sizes`` and each configuration, the real CLI server starts in a
subprocess (a U-Net/ResNet-18 on 5 classes, ``--threads`` torch threads), is warmed up, and
``--clients`` threads POST a PNG of that size in a loop for ``--seconds``. The queue is deep enough that no request is refused,
so the figures are the server's own: requests/s, p50/p99 latency, the RSS peak.

- ``1 worker``: one image at a time (the default server).
- ``4 workers``: four images at a time, no batching (threads alone).
- ``batched``: 8 workers, ``--batch-max 8 --batch-wait-ms 10``: concurrent forwards run as one.

``--flood`` adds, against a default server (20 MiB uploads, 1 worker, queue 8): 64 concurrent
19 MiB uploads (the server's RSS before and at its peak; the bound is (workers + queue) x
max_bytes), and a 590-byte PNG declaring 2048 × 2048 pixels (status, time, RSS change).
Writes benchmarks/results/serve.json and serve.md (``serve_cuda.*`` with ``--device cuda``).

    PYTHONPATH=src python benchmarks/bench_serve.py --clients 16 --seconds 20 --sizes 96,256 --flood [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from PIL import Image

from common import add_device_args, cpu_model, resolve_device
from common import save as save_results

MiB = 2**20
CONFIGS = {
    "1 worker": ["--workers", "1"],
    "4 workers": ["--workers", "4"],
    "batched": ["--workers", "8", "--batch-max", "8", "--batch-wait-ms", "10"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``pixelwise serve`` in a subprocess on a free port, with a 100 ms RSS sampler."""

    def __init__(self, model: Path, args: list[str], *, device: str, threads: int) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
               "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, "-m", "pixelwise.cli", "serve", str(model), "--port",
                                      str(self.port), "--device", device, *args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(900):
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"the server exited with status {self.proc.returncode}")
                time.sleep(0.1)
        self.ps = psutil.Process(self.proc.pid)
        from pixelwise.serve import ServeLimits

        defaults = ServeLimits()  # the flood runs a default server: (workers + queue) x max_bytes
        self.bound = defaults.capacity * defaults.max_bytes
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rss.append(self.ps.memory_info().rss)
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._sampler.join()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _load(base: str, payload: bytes, *, clients: int, seconds: float) -> dict:
    statuses: Counter = Counter()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{base}/v1/segment", content=payload)
                    with lock:
                        statuses[r.status_code] += 1
                        if r.status_code == 200:
                            latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as err:
                    with lock:
                        failures.append(f"{type(err).__name__}: {err}")

    t_start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    lat = sorted(latencies)
    return {"seconds": round(wall, 1), "requests": sum(statuses.values()),
            "status": {str(k): v for k, v in sorted(statuses.items())}, "transport_failures": len(failures),
            "ok_per_s": round(statuses[200] / wall, 2),
            "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None}


def _flood(base: str, server: Server, *, uploads: int = 64, size: int = 19 * MiB) -> dict:
    body = b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)
    port = int(base.rsplit(":", 1)[1])
    statuses: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(uploads)

    def client() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                head = f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
                barrier.wait()
                sock.sendall(head.encode() + body)
                status = int(sock.recv(64).split()[1])
            with lock:
                statuses[status] += 1
        except Exception as err:  # noqa: BLE001 - reported in the results
            with lock:
                errors.append(f"{type(err).__name__}: {err}")

    time.sleep(0.5)
    start = len(server.rss)
    before = server.ps.memory_info().rss
    threads = [threading.Thread(target=client) for _ in range(uploads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    time.sleep(0.3)
    peak = max([before, *server.rss[start:]])
    return {"uploads": uploads, "upload_mib": round(size / MiB, 1), "seconds": round(wall, 1),
            "status": {str(k): v for k, v in sorted(statuses.items())}, "transport_failures": len(errors),
            "rss_before_mb": round(before / MiB, 1), "rss_peak_mb": round(peak / MiB, 1),
            "growth_mb": round((peak - before) / MiB, 1), "bound_mb": round(server.bound / MiB)}


def _tiny_2048(base: str, server: Server) -> dict:
    buf = io.BytesIO()
    Image.new("1", (2048, 2048)).save(buf, "PNG", optimize=True)
    before = server.ps.memory_info().rss
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/v1/segment", content=buf.getvalue(), timeout=120)
    ms = (time.perf_counter() - t0) * 1000
    after = server.ps.memory_info().rss
    return {"bytes": len(buf.getvalue()), "status": r.status_code, "code": r.json().get("error", {}).get("code"),
            "ms": round(ms, 1), "rss_change_mb": round((after - before) / MiB, 1),
            "message": r.json().get("error", {}).get("message")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sizes", default="96,256", help="image sides to test, comma-separated")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="server torch threads")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    parser.add_argument("--flood", action="store_true", help="also the 64 x 19 MiB flood and the 590-byte PNG")
    add_device_args(parser, amp=False)
    args = parser.parse_args()
    device = resolve_device(args.device)  # fails here, not inside the server, when CUDA is missing

    from pixelwise import create_model, save

    tmp = Path(tempfile.mkdtemp(prefix="pixelwise-bench-serve-"))
    torch.manual_seed(0)
    save(create_model("unet", encoder="resnet18", num_classes=5), tmp / "model",
         {"data": {"num_classes": 5, "class_names": [f"c{i}" for i in range(5)], "ignore_index": 255,
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    runs = {}
    for side in sizes:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)).save(buf, "PNG")
        payload = buf.getvalue()
        for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
            server = Server(tmp / "model", [*CONFIGS[name], "--max-queue", str(args.clients)], device=str(device),
                            threads=args.threads)
            try:
                with httpx.Client(timeout=120) as http:
                    for _ in range(3):
                        http.post(f"{server.base}/v1/segment", content=payload)  # warm-up
                run = _load(server.base, payload, clients=args.clients, seconds=args.seconds)
                run.update(size=side, server=name, args=" ".join(CONFIGS[name]),
                           rss_peak_mb=round(max(server.rss) / MiB, 1))
            finally:
                server.close()
            runs[f"{side} {name}"] = run
            print(side, name, run)
    flood = tiny = None
    if args.flood:
        server = Server(tmp / "model", [], device=str(device), threads=args.threads)
        try:
            httpx.post(f"{server.base}/v1/segment", content=payload, timeout=120)  # warm-up
            flood = _flood(server.base, server)
            tiny = _tiny_2048(server.base, server)
        finally:
            server.close()

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cores": os.cpu_count(),
              "device": str(device), "torch": torch.__version__, "server_threads": args.threads,
              "model": "unet/resnet18, 5 classes", "image_sides": sizes, "clients": args.clients,
              "runs": runs, "flood": flood, "tiny_2048": tiny}
    md = ["# Serving load test", "",
          (f"{result['date']}, {result['cpu']} ({result['cores']} cores, shared), device {device}, "
          f"torch {result['torch']}, server torch threads {args.threads}; {result['model']}, random-pixel PNGs, "
          f"{args.clients} concurrent clients (threads of the benchmark, on the same cores), queue {args.clients} "
          f"(nothing refused)"), "",
          "| image | server | flags | s | requests | lost | OK/s | vs 1 worker | p50 ms | p99 ms | RSS peak MiB |",
          "|" + "---|" * 11]
    for r in runs.values():
        base = runs.get(f"{r['size']} 1 worker", {}).get("ok_per_s")
        ratio = f"{r['ok_per_s'] / base:.2f}x" if base else "-"
        md.append(f"| {r['size']}² | {r['server']} | `{r['args']}` | {r['seconds']} | {r['requests']} | "
                  f"{r['transport_failures']} | {r['ok_per_s']} | {ratio} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['rss_peak_mb']} |")
    if flood:
        md += ["", "## Memory bounds (default limits: 20 MiB uploads, 1 worker, queue 8, 1024 MiB per request)", "",
               (f"- {flood['uploads']} concurrent {flood['upload_mib']} MiB uploads: statuses {flood['status']}, "
               f"{flood['transport_failures']} lost; RSS {flood['rss_before_mb']} MiB before, peak "
               f"{flood['rss_peak_mb']} MiB (+{flood['growth_mb']} MiB; bound (workers + queue) x max_bytes = "
               f"{flood['bound_mb']} MiB)"),
               (f"- a {tiny['bytes']}-byte PNG declaring 2048 x 2048: HTTP {tiny['status']} {tiny['code']} in "
               f"{tiny['ms']} ms, RSS {tiny['rss_change_mb']:+} MiB (\"{tiny['message']}\")")]
    save_results("serve" if device.type == "cpu" else "serve_cuda", result, md)
    if any(r["transport_failures"] for r in runs.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
