"""CPU inference latency: pixelwise U-Net-ResNet34 eager / bf16 / ONNX Runtime vs smp eager.

Workload: one ``1x3x512x512`` float32 image, 21 classes, random weights (no download;
classifier bias zeroed so the argmax is not one class everywhere), eval mode, ``torch.no_grad``.
Contenders, timed interleaved (one call each per round) so machine noise hits all alike:

- pixelwise eager fp32;
- pixelwise eager bf16 autocast + channels_last (DESIGN.md's "first-class" CPU options);
- pixelwise exported with ``export_onnx`` (dynamic axes) and run by ``OnnxRuntimeModel``
  (``ORT_ENABLE_ALL``, as many intra-op threads as torch uses);
- segmentation_models_pytorch ``smp.Unet("resnet34", encoder_weights=None, classes=21)`` eager fp32.

It reports medians, ratios against smp, and how well each fast path agrees with pixelwise
fp32 (argmax agreement, max |logit difference|). ``--profile`` adds ONNX Runtime's own
per-operator profile (which op types take the time).

    PYTHONPATH=src python benchmarks/bench_onnx.py [--runs 9] [--profile] [--threads N]

Writes ``benchmarks/results/onnx.json`` and ``benchmarks/results/onnx.md`` (``onnx_tN.*``
with ``--threads N``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pixelwise import create_model
from pixelwise.export import OnnxRuntimeModel, export_onnx

RESULTS = Path(__file__).parent / "results"
NUM_CLASSES, SIZE = 21, 512


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux) or ``platform``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, x) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(x)
    return time.perf_counter() - start, out


def ort_profile(path: Path, x: torch.Tensor, threads: int, runs: int = 3) -> list[tuple[str, float]]:
    """Share of ONNX Runtime kernel time per operator type, from its JSON profile."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "ort_profile")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {session.get_inputs()[0].name: x.numpy()})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1.0
    return sorted(((op, us / total) for op, us in per_op.items()), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed rounds (each contender once per round)")
    parser.add_argument("--profile", action="store_true", help="also profile ONNX Runtime per op type")
    parser.add_argument("--threads", type=int, help="torch and ORT threads (default: torch's); results "
                        "then go to onnx_t{N}.json/.md")
    args = parser.parse_args()
    import onnxruntime as ort
    import segmentation_models_pytorch as smp

    if args.threads:
        torch.set_num_threads(args.threads)
    stem = f"onnx_t{args.threads}" if args.threads else "onnx"
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    ours = create_model("unet", encoder="resnet34", encoder_weights=None, num_classes=NUM_CLASSES).eval()
    # With random initialisation the classifier's bias alone picks one class for every pixel,
    # which would make the argmax-agreement figures trivially 100 %; without it the argmax
    # varies over the image with small margins (a strict test for bf16).
    nn.init.zeros_(ours.head[-1].bias)
    theirs = smp.Unet("resnet34", encoder_weights=None, classes=NUM_CLASSES).eval()
    ours_cl = create_model("unet", encoder="resnet34", encoder_weights=None, num_classes=NUM_CLASSES).eval()
    ours_cl.load_state_dict(ours.state_dict())
    ours_cl = ours_cl.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    tmp = Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    report = export_onnx(ours, tmp / "model.onnx", height=SIZE, width=SIZE, verbose=False)
    runner = OnnxRuntimeModel(tmp / "model.onnx", threads=threads)

    def eager(model):
        def run(inp):
            with torch.no_grad():
                return model(inp)
        return run

    def bf16(inp):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return ours_cl(inp.contiguous(memory_format=torch.channels_last)).float()

    contenders = {
        "pixelwise eager fp32": eager(ours),
        "pixelwise eager bf16 autocast + channels_last": bf16,
        "pixelwise ONNX Runtime fp32": runner,
        "smp.Unet eager fp32": eager(theirs),
    }
    outputs = {}
    for name, fn in contenders.items():  # warm-up: allocator, oneDNN primitive caches, ORT arenas
        for _ in range(2):
            _, outputs[name] = timed(fn, x)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.runs):
        for name, fn in contenders.items():
            times[name].append(timed(fn, x)[0])
    medians = {name: statistics.median(v) for name, v in times.items()}

    reference = outputs["pixelwise eager fp32"].float()
    agreement = {}
    for name in ("pixelwise eager bf16 autocast + channels_last", "pixelwise ONNX Runtime fp32"):
        out = outputs[name].float()
        agreement[name] = {"argmax_agreement": (out.argmax(1) == reference.argmax(1)).float().mean().item(),
                           "classes_in_reference_argmax": int(reference.argmax(1).unique().numel()),
                           "max_abs_logit_diff": (out - reference).abs().max().item(),
                           "logit_std": reference.std().item()}
    smp_name = "smp.Unet eager fp32"
    profile = ort_profile(tmp / "model.onnx", x, threads) if args.profile else []

    result = {
        "benchmark": f"U-Net-ResNet34 inference, 1x3x{SIZE}x{SIZE} float32, {NUM_CLASSES} classes, "
                     "random weights, CPU, batch 1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": threads,
                    "ort_intra_op_threads": threads, "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "smp": smp.__version__},
        "runs": args.runs,
        "seconds": times,
        "median_seconds": medians,
        "speedup_vs_smp": {name: medians[smp_name] / medians[name] for name in contenders},
        "agreement_vs_pixelwise_fp32": agreement,
        "export": {"dynamic": report.dynamic, "opset": report.opset, "export_seconds": report.seconds,
                   "parity": [vars(c) for c in report.checks]},
        "ort_profile_share_by_op": profile,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")

    m = result["machine"]
    lines = [
        "# Inference latency: pixelwise (eager, bf16, ONNX Runtime) vs segmentation_models_pytorch",
        "",
        f"{result['benchmark']}; median of {args.runs} interleaved rounds after 2 warm-up calls each.",
        (f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {threads} torch threads = ORT intra-op threads; "
         f"load average at the end {', '.join(f'{v:.1f}' for v in m['load_average_at_end'])} (shared machine); "
         f"torch {torch.__version__}, onnxruntime {ort.__version__}, smp {smp.__version__}; {result['date']}."),
        "",
        "| contender | median ms | min ms | speed-up vs smp eager |",
        "|---|---:|---:|---:|",
    ]
    for name in contenders:
        lines.append(f"| {name} | {1e3 * medians[name]:.0f} | {1e3 * min(times[name]):.0f} | "
                     f"{result['speedup_vs_smp'][name]:.2f}x |")
    lines += ["", "Agreement with pixelwise eager fp32 on the same input:", "",
              "| fast path | argmax agreement | max abs logit diff | logit std | classes in fp32 argmax |",
              "|---|---:|---:|---:|---:|"]
    for name, a in agreement.items():
        lines.append(f"| {name} | {100 * a['argmax_agreement']:.3f}% | {a['max_abs_logit_diff']:.2e} | "
                     f"{a['logit_std']:.2e} | {a['classes_in_reference_argmax']} |")
    parity = "; ".join(f"{list(c.shape)}: max diff {c.max_abs_diff:.1e}" for c in report.checks)
    lines += ["", (f"Export: dynamic={report.dynamic}, opset {report.opset}, {report.seconds:.0f} s including "
                   f"its parity check ({parity}).")]
    if profile:
        lines += ["", "ONNX Runtime kernel time by operator type:", "", "| op | share |", "|---|---:|"]
        lines += [f"| {op} | {100 * share:.1f}% |" for op, share in profile[:8]]
    lines.append("")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
