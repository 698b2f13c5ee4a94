"""Load test of `pixelwise serve`: N concurrent clients on loopback for a bounded time.

Starts the real CLI server in a subprocess (a U-Net/ResNet-18 on 5 classes), then runs
``--clients`` threads that POST a 256×256 PNG in a loop for ``--seconds``. Reports
requests/s (answered with 200), p50/p95 latency of successful requests, the status mix
(200 / 503 busy / other), transport failures (must be 0: every request gets an answer),
and the server's RSS sampled every 100 ms (peak, and start vs end of the load to show
memory stays flat). ``--device cuda`` runs the server's model on the GPU (``serve --device``).
Writes benchmarks/results/serve.json and serve.md (``serve_cuda.*`` on a GPU).

    PYTHONPATH=src python benchmarks/bench_serve.py --clients 16 --seconds 30 [--device cuda]
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    add_device_args(parser, amp=False)
    args = parser.parse_args()
    device = resolve_device(args.device)  # fails here, not inside the server, when CUDA is missing

    from pixelwise import create_model, save

    tmp = Path(tempfile.mkdtemp(prefix="pixelwise-bench-serve-"))
    torch.manual_seed(0)
    save(create_model("unet", encoder="resnet18", num_classes=5), tmp / "model",
         {"data": {"num_classes": 5, "class_names": [f"c{i}" for i in range(5)], "ignore_index": 255,
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)).save(buf, "PNG")
    payload = buf.getvalue()

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    server = subprocess.Popen([sys.executable, "-m", "pixelwise.cli", "serve", str(tmp / "model"), "--port", str(port),
                               "--workers", str(args.workers), "--max-queue", str(args.max_queue),
                               "--device", str(device)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        proc = psutil.Process(server.pid)
        httpx.post(f"{base}/v1/segment", content=payload, timeout=60)  # warm-up
        rss: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss.append((time.perf_counter(), proc.memory_info().rss))
                time.sleep(0.1)

        statuses: Counter = Counter()
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()
        end = time.perf_counter() + args.seconds

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    try:
                        r = http.post(f"{base}/v1/segment", content=payload)
                        dt = time.perf_counter() - t0
                        with lock:
                            statuses[r.status_code] += 1
                            if r.status_code == 200:
                                latencies.append(dt)
                            elif r.status_code == 503:
                                time.sleep(0.05)  # a polite client backs off
                    except httpx.HTTPError as err:
                        with lock:
                            failures.append(f"{type(err).__name__}: {err}")

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_start
        stop.set()
        sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=30)

    mem = [m for _, m in rss]
    tenth = max(1, len(mem) // 10)
    lat = sorted(latencies)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "device": str(device), "torch": torch.__version__,
        "model": "unet/resnet18, 5 classes", "image": f"{args.size}x{args.size} PNG",
        "clients": args.clients, "seconds": round(wall, 1), "workers": args.workers, "max_queue": args.max_queue,
        "requests": sum(statuses.values()), "status": {str(k): v for k, v in sorted(statuses.items())},
        "transport_failures": len(failures), "ok_per_s": round(statuses[200] / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 1) if lat else None,
        "rss_peak_mb": round(max(mem) / 2**20, 1),
        "rss_first_10pct_mb": round(statistics.median(mem[:tenth]) / 2**20, 1),
        "rss_last_10pct_mb": round(statistics.median(mem[-tenth:]) / 2**20, 1),
    }
    md = ["# Serving load test", "", f"{result['date']}, {result['cpu']}, device {device}, torch {result['torch']}", "",
          "| clients | workers | queue | s | requests | 200 | 503 | lost | OK/s | p50 ms | p95 ms | RSS start MB | "
          "RSS end MB | RSS peak MB |", "|" + "---|" * 14,
          f"| {args.clients} | {args.workers} | {args.max_queue} | {result['seconds']} | {result['requests']} | "
          f"{statuses[200]} | {statuses[503]} | {len(failures)} | {result['ok_per_s']} | {result['p50_ms']} | "
          f"{result['p95_ms']} | {result['rss_first_10pct_mb']} | {result['rss_last_10pct_mb']} | "
          f"{result['rss_peak_mb']} |", ""]
    save_results("serve" if device.type == "cpu" else "serve_cuda", result, md)
    if failures:
        print("transport failures:", failures[:5])
        sys.exit(1)


if __name__ == "__main__":
    main()
