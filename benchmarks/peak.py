"""Measured compute peak of this device, the yardstick for "fraction of peak".

A model's achieved GFLOP/s means little on its own (a laptop and a server differ by 100x);
divided by the best rate the same device reaches on large dense kernels in the same
precision, it says how much of the hardware a contender uses. Two kernels are timed, each
the median of ``repeats`` calls after a warm-up:

- a large square ``torch.matmul`` (2048² on a CPU, 8192² on CUDA, 10 products per timing
  there, with CUDA events);
- a 3×3 convolution, 256 -> 256 channels, channels_last (1×256×128×128 on a CPU,
  16×256×128×128 on CUDA), the kernel segmentation networks spend their time in.

The peak is the larger of the two. Both are reported because they can differ a lot: on
AMD CPUs the MKL ``sgemm`` behind ``torch.matmul`` reaches well below what oneDNN's own
convolution kernels reach, and a matmul-only yardstick then puts convolutional networks
"above 100 %". Precisions without native support (bf16 on a CPU without AVX-512 BF16 /
AMX) are measured on smaller shapes: their low peak is the honest reason a bf16
contender is slow there.

    PYTHONPATH=src python benchmarks/peak.py [--device cuda] [--repeats 7]

Writes ``benchmarks/results/peak.json`` / ``peak.md`` (``peak_cuda.*`` for a GPU).
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F

from common import (
    add_device_args,
    describe,
    dtype_name,
    machine,
    median,
    native_low_precision,
    now,
    resolve_device,
    save,
    timed,
)


def _rate(device: torch.device, flops: float, fn, repeats: int) -> float:
    """GFLOP/s of ``fn`` (``flops`` per call): median of ``repeats`` timings after a warm-up."""
    inner = 10 if device.type == "cuda" else 1  # one GPU call is too short to time well

    def run() -> None:
        for _ in range(inner):
            fn()

    run()  # warm-up: kernel selection, allocator, oneDNN primitive cache
    return flops * inner / median(timed(run, device=device)[0] for _ in range(repeats)) / 1e9


@functools.lru_cache(maxsize=None)
def device_peak(device: torch.device, dtype: torch.dtype, repeats: int = 7) -> dict:
    """``{"gflops": peak, "matmul_gflops", "conv_gflops", "matmul_side", "conv_input"}`` for ``dtype``.

    Cached per process, so every script that asks pays for it once. On CUDA TF32 stays at
    torch's default (off for matmul), so the fp32 matmul figure is true fp32.
    """
    cuda = device.type == "cuda"
    fast = dtype == torch.float32 or native_low_precision(device, dtype)
    side = 8192 if cuda else 2048 if fast else 512
    a, b = (torch.randn(side, side, device=device).to(dtype) for _ in range(2))
    matmul = _rate(device, 2 * side**3, lambda: torch.matmul(a, b), repeats)
    n, hw = (16, 128) if cuda else (1, 128) if fast else (1, 32)
    x = torch.randn(n, 256, hw, hw, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv = _rate(device, 2 * n * 256 * 256 * 9 * hw * hw, lambda: F.conv2d(x, w, padding=1), repeats)
    return {"gflops": max(matmul, conv), "matmul_gflops": matmul, "conv_gflops": conv, "matmul_side": side,
            "conv_input": f"{n}x256x{hw}x{hw}", "repeats": repeats}


def peaks(device: torch.device, dtypes=(torch.float32, torch.bfloat16)) -> dict[str, dict]:
    """:func:`device_peak` for each dtype, keyed "fp32" / "bf16" / "fp16"."""
    return {dtype_name(d): device_peak(device, d) for d in dtypes}


def fraction(gflops: float, peak: dict[str, dict], dtype: torch.dtype) -> float:
    """``gflops`` as a fraction of the measured peak in ``dtype`` (NaN if that was not measured)."""
    entry = peak.get(dtype_name(dtype))
    return gflops / entry["gflops"] if entry else float("nan")


def describe_peak(peak: dict[str, dict]) -> str:
    """"fp32 95 GFLOP/s (matmul 60, conv 95), ..." for the reports."""
    return ", ".join(f"{k} {v['gflops']:.0f} GFLOP/s (matmul {v['matmul_gflops']:.0f}, 3x3 conv "
                     f"{v['conv_gflops']:.0f})" for k, v in peak.items())


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
    result = {"benchmark": f"dense-kernel peak on {device.type}: square matmul and 3x3 convolution",
              "date": now(), "machine": machine(device), "versions": {"torch": torch.__version__},
              "peaks": {dtype_name(d): device_peak(device, d, args.repeats) for d in dtypes}}
    lines = ["# Measured compute peak", "", f"{describe(result['machine'])}; torch {torch.__version__}; "
             f"{result['date']}; median of {args.repeats} timings each.", "",
             "| dtype | matmul side | matmul GFLOP/s | 3x3 conv input | conv GFLOP/s | peak GFLOP/s |",
             "|---|---:|---:|---|---:|---:|"]
    lines += [f"| {k} | {v['matmul_side']} | {v['matmul_gflops']:.1f} | {v['conv_input']} | {v['conv_gflops']:.1f} | "
              f"{v['gflops']:.1f} |" for k, v in result["peaks"].items()]
    save("peak" if device.type == "cpu" else "peak_cuda", result, lines)


if __name__ == "__main__":
    main()
