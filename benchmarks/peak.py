"""Measured matrix-multiply peak of this machine, the yardstick for "fraction of peak".

A model's achieved GFLOP/s means little on its own (a laptop and a server differ by 100x);
divided by what the same device reaches on one large square ``torch.matmul`` in the same
precision, it says how much of the hardware a contender uses. The matrix side is chosen so
one product takes about ``target_s`` (a few hundred ms on a CPU; on CUDA a batch of 8192²
products timed with CUDA events), and the median of ``repeats`` timings is reported.

Precisions without native support (bf16 on a CPU without AVX-512 BF16 / AMX) are measured
like the others: their low "peak" is the honest reason a bf16 contender is slow there.

    PYTHONPATH=src python benchmarks/peak.py [--device cuda] [--repeats 7]

Writes ``benchmarks/results/peak.json`` / ``peak.md`` (``peak_cuda.*`` for a GPU).
"""

from __future__ import annotations

import argparse
import functools

import torch

from common import add_device_args, describe, dtype_name, machine, median, now, resolve_device, save, timed


def _side(device: torch.device, dtype: torch.dtype, target_s: float) -> int:
    """A matrix side (multiple of 256) whose product takes about ``target_s`` here."""
    if device.type == "cuda":
        return 8192
    a = torch.randn(256, 256, dtype=dtype)
    torch.matmul(a, a)
    seconds = min(timed(torch.matmul, a, a)[0] for _ in range(3))
    rate = 2 * 256**3 / max(seconds, 1e-9)
    side = int(round((rate * target_s / 2) ** (1 / 3) / 256)) * 256
    return max(256, min(side, 4096))


@functools.lru_cache(maxsize=None)
def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 7, target_s: float = 0.2) -> dict:
    """``{"gflops": median GFLOP/s, "side": n, "repeats": r}`` of ``n×n @ n×n`` in ``dtype`` on ``device``.

    Cached per process, so every script that asks pays for it once. On CUDA TF32 stays at
    torch's default (off for matmul), so the fp32 figure is true fp32.
    """
    n = _side(device, dtype, target_s)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    inner = 10 if device.type == "cuda" else 1  # a single GPU product is too short to time well

    def run() -> None:
        for _ in range(inner):
            torch.matmul(a, b)

    run()  # warm-up: kernel selection, allocator
    seconds = [timed(run, device=device)[0] for _ in range(repeats)]
    return {"gflops": 2 * n**3 * inner / median(seconds) / 1e9, "side": n, "repeats": repeats}


def peaks(device: torch.device, dtypes=(torch.float32, torch.bfloat16)) -> dict[str, dict]:
    """:func:`matmul_peak` for each dtype, keyed "fp32" / "bf16" / "fp16"."""
    return {dtype_name(d): matmul_peak(device, d) for d in dtypes}


def fraction(gflops: float, peak: dict[str, dict], dtype: torch.dtype) -> float:
    """``gflops`` as a fraction of the measured peak in ``dtype`` (NaN if that was not measured)."""
    entry = peak.get(dtype_name(dtype))
    return gflops / entry["gflops"] if entry else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser, amp=False)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = (torch.float32, torch.bfloat16) + ((torch.float16,) if device.type == "cuda" else ())
    result = {"benchmark": f"square torch.matmul peak on {device.type}", "date": now(),
              "machine": machine(device), "versions": {"torch": torch.__version__},
              "peaks": {dtype_name(d): matmul_peak(device, d, args.repeats) for d in dtypes}}
    lines = ["# Measured matmul peak", "", f"{describe(result['machine'])}; torch {torch.__version__}; "
             f"{result['date']}.", "", "| dtype | side n | median GFLOP/s |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['side']} | {v['gflops']:.1f} |" for k, v in result["peaks"].items()]
    save("peak" if device.type == "cpu" else "peak_cuda", result, lines)


if __name__ == "__main__":
    main()
