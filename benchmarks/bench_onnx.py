"""Inference latency: pixelwise U-Net-ResNet34 eager / autocast / ONNX Runtime vs smp eager.

Workload: one ``1x3x512x512`` float32 image, 21 classes, random weights (no download;
classifier bias zeroed so the argmax is not one class everywhere), eval mode, ``torch.no_grad``.
Contenders, timed interleaved (one call each per round) so machine noise hits all alike:

- pixelwise eager fp32;
- pixelwise eager bf16 (fp16 on CUDA) autocast + channels_last (DESIGN.md's "first-class"
  options), where the device has native kernels for it (``--amp on`` forces it);
- pixelwise exported with ``export_onnx`` (dynamic axes) and run by ``OnnxRuntimeModel``
  (``ORT_ENABLE_ALL``, as many intra-op threads as torch uses; with ``--device cuda`` only
  if onnxruntime has its CUDA provider);
- segmentation_models_pytorch ``smp.Unet("resnet34", encoder_weights=None, classes=21)`` eager fp32.

It reports medians, ratios against smp, and how well each fast path agrees with pixelwise
fp32 (argmax agreement, max |logit difference|). ``--profile`` adds ONNX Runtime's own
per-operator profile (which op types take the time). ``bench_latency.py`` runs the same
comparison for seven architectures and two input shapes.

    PYTHONPATH=src python benchmarks/bench_onnx.py [--runs 9] [--profile] [--threads N] [--device cuda]

Writes ``benchmarks/results/onnx.json`` and ``benchmarks/results/onnx.md`` (``onnx_tN.*``
with ``--threads N``, ``onnx_cuda.*`` on a GPU).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch

from bench_latency import ort_available
from common import (
    add_device_args,
    amp_dtype,
    autocast,
    describe,
    dtype_name,
    interleave,
    machine,
    median,
    native_low_precision,
    now,
    resolve_device,
    save,
    timed,
)
from pixelwise.export.backends import OnnxRuntimeModel
from pixelwise.export.onnx import export_onnx
from zoo import build_peer, build_pixelwise, zero_class_bias

NUM_CLASSES, SIZE = 21, 512


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
    parser.add_argument("--profile", action="store_true", help="also profile ONNX Runtime per op type (CPU)")
    parser.add_argument("--threads", type=int, help="torch and ORT threads (default: torch's); results "
                        "then go to onnx_t{N}.json/.md")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                        help="autocast contender: auto = only with native hardware support")
    add_device_args(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    import segmentation_models_pytorch as smp

    if args.threads:
        torch.set_num_threads(args.threads)
    stem = f"onnx_t{args.threads}" if args.threads else "onnx"
    stem = stem if device.type == "cpu" else stem + "_cuda"
    threads = torch.get_num_threads()
    dtype = amp_dtype(device, args.amp_dtype)
    use_amp = args.amp == "on" or (args.amp == "auto" and native_low_precision(device, dtype))
    ort_missing = ort_available(device)
    torch.manual_seed(0)
    ours = build_pixelwise("unet_resnet34", NUM_CLASSES).eval().to(device)
    zero_class_bias(ours, NUM_CLASSES)
    theirs = build_peer("unet_resnet34", NUM_CLASSES).eval().to(device)
    ours_cl = build_pixelwise("unet_resnet34", NUM_CLASSES).eval()
    ours_cl.load_state_dict(ours.state_dict())
    ours_cl = ours_cl.to(device, memory_format=torch.channels_last)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(device)

    def eager(model):
        def run(inp):
            with torch.no_grad():
                return model(inp)
        return run

    def amp(inp):
        with torch.no_grad(), autocast(device, dtype):
            return ours_cl(inp.contiguous(memory_format=torch.channels_last)).float()

    amp_name = f"pixelwise eager {dtype_name(dtype)} autocast + channels_last"
    contenders = {"pixelwise eager fp32": eager(ours)}
    if use_amp:
        contenders[amp_name] = amp
    tmp = Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    report = None
    if not ort_missing:
        report = export_onnx(ours, tmp / "model.onnx", height=SIZE, width=SIZE, verbose=False)
        providers = ["cuda"] if device.type == "cuda" else None
        contenders["pixelwise ONNX Runtime fp32"] = OnnxRuntimeModel(tmp / "model.onnx", threads=threads,
                                                                     providers=providers)
    smp_name = "smp.Unet eager fp32"
    contenders[smp_name] = eager(theirs)
    outputs = {}

    def measure(name: str) -> float:  # warm-up rounds fill the allocator, oneDNN caches, ORT arenas
        seconds, outputs[name] = timed(contenders[name], x, device=device)
        return seconds

    times = interleave({name: name for name in contenders}, args.runs, measure, warmup=2)
    medians = {name: median(v) for name, v in times.items()}

    reference = outputs["pixelwise eager fp32"].float().cpu()
    agreement = {}
    for name in contenders:
        if name in ("pixelwise eager fp32", smp_name):
            continue
        out = outputs[name].float().cpu()
        agreement[name] = {"argmax_agreement": (out.argmax(1) == reference.argmax(1)).float().mean().item(),
                           "classes_in_reference_argmax": int(reference.argmax(1).unique().numel()),
                           "max_abs_logit_diff": (out - reference).abs().max().item(),
                           "logit_std": reference.std().item()}
    profile = ort_profile(tmp / "model.onnx", x.cpu(), threads) if args.profile and report else []
    notes = [] if use_amp else [f"no {dtype_name(dtype)} autocast contender: "
                                + ("--amp off" if args.amp == "off" else f"no native {dtype_name(dtype)} kernels "
                                   f"on this {device.type}")]
    notes += [f"no ONNX Runtime contender: {ort_missing}"] if ort_missing else []

    ort_version = "-" if ort_missing == "onnxruntime is not installed" else __import__("onnxruntime").__version__
    result = {
        "benchmark": f"U-Net-ResNet34 inference, 1x3x{SIZE}x{SIZE} float32, {NUM_CLASSES} classes, "
                     f"random weights, {device.type}, batch 1",
        "date": now(),
        "machine": machine(device, threads) | {"ort_intra_op_threads": threads},
        "versions": {"torch": torch.__version__, "onnxruntime": ort_version, "smp": smp.__version__},
        "runs": args.runs, "notes": notes,
        "seconds": times,
        "median_seconds": medians,
        "speedup_vs_smp": {name: medians[smp_name] / medians[name] for name in contenders},
        "agreement_vs_pixelwise_fp32": agreement,
        "export": None if report is None else {
            "dynamic": report.dynamic, "opset": report.opset, "export_seconds": report.seconds,
            "parity": [vars(c) | {"shape": list(c.shape)} for c in report.checks]},
        "ort_profile_share_by_op": profile,
    }
    lines = [
        "# Inference latency: pixelwise (eager, autocast, ONNX Runtime) vs segmentation_models_pytorch",
        "",
        f"{result['benchmark']}; median of {args.runs} interleaved rounds after 2 warm-up calls each.",
        (f"{describe(result['machine'])}; ORT intra-op threads = torch threads; torch {torch.__version__}, "
         f"onnxruntime {ort_version}, smp {smp.__version__}; {result['date']}."),
        "",
    ]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += ["| contender | median ms | min ms | speed-up vs smp eager |", "|---|---:|---:|---:|"]
    for name in contenders:
        lines.append(f"| {name} | {1e3 * medians[name]:.0f} | {1e3 * min(times[name]):.0f} | "
                     f"{result['speedup_vs_smp'][name]:.2f}x |")
    lines += ["", "Agreement with pixelwise eager fp32 on the same input:", "",
              "| fast path | argmax agreement | max abs logit diff | logit std | classes in fp32 argmax |",
              "|---|---:|---:|---:|---:|"]
    for name, a in agreement.items():
        lines.append(f"| {name} | {100 * a['argmax_agreement']:.3f}% | {a['max_abs_logit_diff']:.2e} | "
                     f"{a['logit_std']:.2e} | {a['classes_in_reference_argmax']} |")
    if report is not None:
        parity = "; ".join(f"{list(c.shape)}: max diff {c.max_abs_diff:.1e}" for c in report.checks)
        lines += ["", (f"Export: dynamic={report.dynamic}, opset {report.opset}, {report.seconds:.0f} s including "
                       f"its parity check ({parity}).")]
    if profile:
        lines += ["", "ONNX Runtime kernel time by operator type:", "", "| op | share |", "|---|---:|"]
        lines += [f"| {op} | {100 * share:.1f}% |" for op, share in profile[:8]]
    save(stem, result, lines)


if __name__ == "__main__":
    main()
