"""Helpers every benchmark script shares: machine description, device choice and timing,
interleaved rounds, FLOP counting, peak memory and writing results.

The scripts are run as ``python benchmarks/bench_x.py``, so this folder is on ``sys.path``
and ``from common import ...`` finds this file. Nothing here imports a peer library, so
it works in the project's own environment.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

# PIXELWISE_BENCH_RESULTS redirects every script's output (gpu_check.sh writes into its own folder).
RESULTS = Path(os.environ.get("PIXELWISE_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux) or ``platform``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mib(field: str = "VmHWM") -> float:
    """This process's peak resident memory (``VmHWM``; ``field="VmRSS"``: the current one) in MiB.

    Not ``getrusage().ru_maxrss``: on Linux that maximum is inherited through fork + exec, so
    a child started by a big parent reports the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status; RSS figures need Linux")


# --- device -------------------------------------------------------------------------------

def add_device_args(parser: argparse.ArgumentParser, *, amp: bool = True) -> None:
    """``--device`` (cpu | cuda | cuda:N) and, with ``amp``, ``--amp-dtype`` (the fast path's autocast)."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    if amp:
        parser.add_argument("--amp-dtype", choices=["bf16", "fp16"],
                            help="autocast dtype of the fast path (default: bf16 on cpu, fp16 on cuda)")


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, failing with a plain message when CUDA is asked for but absent."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SystemExit(f"--device {name!r} is not a device torch knows ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA (CPU-only build)"
            raise SystemExit(f"--device {name} asked for CUDA, but torch.cuda.is_available() is False here "
                             f"(torch {torch.__version__} built with {built}; no visible GPU or driver). "
                             "Run on a machine with an NVIDIA GPU, or use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise SystemExit(f"--device {name}: these benchmarks support cpu and cuda only")
    return device


def amp_dtype(device: torch.device, choice: str | None = None) -> torch.dtype:
    """The autocast dtype: ``choice`` ("bf16" / "fp16"), else bf16 on the CPU and fp16 on CUDA."""
    if choice is None:
        choice = "bf16" if device.type == "cpu" else "fp16"
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int8: "int8"}[dtype]


def native_low_precision(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` convolutions/matmuls run on native hardware support (not emulated).

    On CPUs without AVX-512 BF16 / AMX, oneDNN has no bf16 kernels and PyTorch falls back to
    reference code that is tens of times slower than fp32, so a bf16 row would only measure
    the fallback."""
    if device.type == "cuda":
        return dtype != torch.bfloat16 or torch.cuda.is_bf16_supported()
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context for ``None`` / fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[..., Any], *args: Any, device: torch.device | None = None) -> tuple[float, Any]:
    """``(seconds, fn(*args))``. On CUDA the time is the GPU's, from CUDA events recorded around
    the call (kernels are asynchronous, so a host clock alone would time the launches)."""
    if device is not None and device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        out = fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, out
    tic = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - tic, out


def interleave(contenders: dict[str, Any], rounds: int, measure: Callable[[Any], Any],
               warmup: int = 1) -> dict[str, list]:
    """Run ``measure(item)`` for every contender once per round, ``rounds`` rounds, after
    ``warmup`` untimed rounds, so that machine noise hits all contenders alike."""
    for _ in range(warmup):
        for item in contenders.values():
            measure(item)
    out: dict[str, list] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, item in contenders.items():
            out[name].append(measure(item))
    return out


def median(values) -> float:
    return statistics.median(list(values))


# --- counting ------------------------------------------------------------------------------

def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """FLOPs of ``fn(*args)`` by ``torch.utils.flop_counter`` (a multiply-add counts as 2;
    convolutions and matrix products only, which is where nearly all the work is)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


# --- describing and saving -------------------------------------------------------------------

def machine(device: torch.device | None = None, threads: int | None = None) -> dict:
    """What the numbers were measured on: CPU, threads, OS, Python, load average, GPU if used."""
    info = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "torch_threads": threads or torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1_5_15": os.getloadavg()}
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def describe(m: dict) -> str:
    """One Markdown sentence from :func:`machine`'s dict."""
    load = ", ".join(f"{v:.1f}" for v in m["load_average_1_5_15"])
    gpu = f"; GPU {m['gpu']} ({m['gpu_memory_gib']} GiB, CUDA {m['cuda']})" if "gpu" in m else ""
    return (f"{m['cpu']} ({m['logical_cpus']} logical CPUs, {m['cpu_capability']}), {m['torch_threads']} torch "
            f"threads{gpu}; load average {load} (1/5/15 min)")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save(stem: str, result: dict, markdown: list[str] | str) -> None:
    """Write ``results/<stem>.json`` and ``results/<stem>.md`` and print the Markdown."""
    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(text.rstrip("\n") + "\n")
    print(text)
