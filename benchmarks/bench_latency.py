"""Inference latency of seven architectures: pixelwise (eager, channels_last, autocast, ONNX
Runtime) against the peer library's eager model, with FLOPs and fraction of measured peak.

Models (``zoo.py``): U-Net-ResNet34, DeepLabV3+-ResNet50, FPN-ResNet34, PSPNet-ResNet34
against segmentation_models_pytorch, and FCN-ResNet50, DeepLabV3-ResNet50,
LR-ASPP-MobileNetV3-Large against ``torchvision.models.segmentation``; 21 classes, random
weights (classifier bias zeroed so the argmax varies), eval mode, ``torch.no_grad``.
Inputs: ``1x3x512x512`` and ``4x3x256x256`` by default. Contenders, interleaved (one call
each per round, after warm-up rounds) so that machine noise hits all alike:

- ``pixelwise eager fp32`` and ``pixelwise eager fp32 channels_last``;
- ``pixelwise {bf16|fp16} autocast + channels_last``: on a CPU only where the CPU has
  native bf16 (AVX-512 BF16 / AMX; ``--amp on`` forces it), since elsewhere oneDNN falls
  back to reference kernels ~50x slower than fp32 (see ``peak.py``'s bf16 figure);
- ``pixelwise ONNX Runtime fp32``: ``export_onnx`` traced at each input size (batch axis
  free), run by ``OnnxRuntimeModel`` with as many intra-op threads as torch; on CUDA only
  if onnxruntime has its CUDA provider. ``--no-ort a,b`` skips it for some models;
- ``pixelwise ONNX Runtime int8`` (CPU only): that file statically quantised by
  ``pixelwise.export.quantize.quantize_onnx`` (QDQ, per-channel int8 weights, uint8 activations),
  calibrated on 4 uniform-noise RGB images of the input size (the weights are random too, so
  there is nothing more typical to calibrate on; docs/export.md has the agreement of a trained
  model). ``--no-int8`` leaves it out. No int8 peak is measured: its "of peak" column is empty;
- ``pixelwise OpenVINO fp32`` / ``bf16`` / ``int8`` (CPU, when openvino is installed): the same
  ONNX file compiled by OpenVINO's CPU plugin (``OpenVinoModel``, inference precision set
  explicitly; bf16 only where OpenVINO reports native bf16), and an int8 IR from
  ``quantize_openvino`` (NNCF) on the same noise calibration images. ``--no-openvino`` leaves them out;
- the peer's eager fp32 model, the baseline of every ratio.

Reported per model and input: median ms, speed-up over the peer, GFLOP/s (FLOPs from
``torch.utils.flop_counter``, counted for each side's own network) and the fraction of
this device's measured peak in the contender's precision, and each fast path's
argmax agreement and max |logit difference| with pixelwise eager fp32.

    PYTHONPATH=src python benchmarks/bench_latency.py [--models all] [--sizes 1x512,4x256]
        [--rounds 5] [--threads N] [--device cpu|cuda] [--no-ort a,b] [--quick]

Writes ``benchmarks/results/latency.json`` / ``.md`` (``latency_cuda``, ``latency_quick``).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from common import (
    add_device_args,
    amp_dtype,
    autocast,
    count_flops,
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
from peak import describe_peak, fraction, peaks
from zoo import ZOO, build_peer, build_pixelwise, parse_models, peer_version, zero_class_bias

NUM_CLASSES = 21
EAGER = "pixelwise eager fp32"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"1x512,4x256" -> [(1, 512), (4, 256)] (batch x side)."""
    try:
        return [(int(b), int(s)) for b, s in (item.lower().split("x") for item in text.split(","))]
    except ValueError:
        raise SystemExit(f"--sizes wants BATCHxSIDE[,BATCHxSIDE...], e.g. 1x512,4x256; got {text!r}") from None


def ort_runner(model: torch.nn.Module, side: int, folder: Path, threads: int, device: torch.device):
    """Export ``model`` traced at ``side`` (batch free) and load it; ``(runner, export seconds)``."""
    from pixelwise.export.backends import OnnxRuntimeModel
    from pixelwise.export.onnx import export_onnx

    tic = time.perf_counter()
    # The exported graph is checked below against eager fp32 on the benchmark's own input
    # (argmax agreement), so the exporter's own parity run is skipped to save minutes.
    export_onnx(model, folder / f"model_{side}.onnx", height=side, width=side, dynamic=True, check=False,
                verbose=False)
    seconds = time.perf_counter() - tic
    providers = ["cuda"] if device.type == "cuda" else None
    return OnnxRuntimeModel(folder / f"model_{side}.onnx", threads=threads, providers=providers), seconds


def int8_runner(fp32_file: Path, side: int, threads: int):
    """Quantise ``fp32_file`` (see the module docstring); ``(runner, seconds)``."""
    import numpy as np

    from pixelwise.export.backends import OnnxRuntimeModel
    from pixelwise.export.quantize import quantize_onnx

    tic = time.perf_counter()
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(4)]
    target = fp32_file.with_suffix(".int8.onnx")
    quantize_onnx(fp32_file, target, calibration, max_side=None, min_agreement=0.0, verbose=False)
    return OnnxRuntimeModel(target, threads=threads), time.perf_counter() - tic


def openvino_runners(fp32_file: Path, side: int, threads: int, *, int8: bool) -> dict:
    """OpenVINO contenders for the ONNX file: ``{name: (runner, precision, seconds to prepare)}``."""
    import numpy as np

    from pixelwise.export.openvino import OpenVinoModel, cpu_has_bf16, quantize_openvino

    out = {}
    tic = time.perf_counter()
    out["pixelwise OpenVINO fp32"] = (OpenVinoModel(fp32_file, threads=threads), torch.float32,
                                      time.perf_counter() - tic)
    if cpu_has_bf16():
        tic = time.perf_counter()
        out["pixelwise OpenVINO bf16"] = (OpenVinoModel(fp32_file, precision="bf16", threads=threads), torch.bfloat16,
                                          time.perf_counter() - tic)
    if int8:
        tic = time.perf_counter()
        rng = np.random.default_rng(0)
        calibration = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(4)]
        target = fp32_file.with_name(fp32_file.stem + ".ov-int8.xml")
        quantize_openvino(fp32_file, target, calibration, max_side=None, min_agreement=0.0, verbose=False)
        out["pixelwise OpenVINO int8"] = (OpenVinoModel(target, files=(target.name,), threads=threads), torch.int8,
                                          time.perf_counter() - tic)
    return out


def openvino_missing() -> str | None:
    """``None`` if OpenVINO (and NNCF for int8) can be imported, else why not."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as err:
        return f"openvino/nncf not installed ({err})"
    return None


def reuse_or_export(runners: dict, model: torch.nn.Module, x: torch.Tensor, folder: Path,
                    device: torch.device) -> dict:
    """An ONNX Runtime runner for ``x``'s size: a graph exported at another size if it gives the
    same argmax here (>= 99.9 %; exports take minutes), else a new export traced at this size
    (size-specific constants, e.g. adaptive pooling windows, are then right by construction)."""
    side = x.shape[-1]
    with torch.no_grad():
        labels = model(x).argmax(1)
    for entry in list(runners.values()):
        try:
            agree = (entry["runner"](x).argmax(1) == labels).float().mean().item()
        except Exception:  # noqa: BLE001 - the graph does not run at this size: export anew
            continue
        if agree >= 0.999:
            return {**entry, "export_seconds": 0.0}
    runner, seconds = ort_runner(model, side, folder, torch.get_num_threads(), device)
    return {"runner": runner, "export_seconds": seconds, "traced_at": side}


def ort_available(device: torch.device) -> str | None:
    """``None`` if ONNX Runtime can run on ``device``, else why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def bench_model(key: str, sizes, args, device: torch.device, dtype: torch.dtype, use_amp: bool,
                use_ort: bool, peak: dict, use_int8: bool = False) -> list[dict]:
    """All contenders of one model at every input size; one row per (size, contender)."""
    torch.manual_seed(0)
    ours = build_pixelwise(key, NUM_CLASSES).eval().to(device)
    zero_class_bias(ours, NUM_CLASSES)
    ours_cl = build_pixelwise(key, NUM_CLASSES).eval()
    ours_cl.load_state_dict(ours.state_dict())
    ours_cl = ours_cl.to(device, memory_format=torch.channels_last)
    peer = build_peer(key, NUM_CLASSES).eval().to(device)
    peer_name = f"{ZOO[key].peer} eager fp32"
    tmp = tempfile.TemporaryDirectory(prefix="bench_latency_")

    def eager(model, channels_last=False, amp=None):
        def run(x):
            with torch.no_grad(), autocast(device, amp):
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return model(x).float()
        return run

    rows, runners, int8 = [], {}, {}
    for batch, side in sizes:
        x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1)).to(device)
        contenders = {EAGER: (eager(ours), torch.float32),
                      "pixelwise eager fp32 channels_last": (eager(ours_cl, True), torch.float32)}
        if use_amp:
            contenders[f"pixelwise {dtype_name(dtype)} autocast + channels_last"] = (eager(ours_cl, True, dtype), dtype)
        if use_ort:
            if side not in runners:
                runners[side] = reuse_or_export(runners, ours, x, Path(tmp.name), device)
                print(f"  {key} {side}px: ONNX graph traced at {runners[side]['traced_at']} px, export "
                      f"{runners[side]['export_seconds']:.0f} s", flush=True)
            runner = runners[side]["runner"]
            fixed = getattr(runner, "input_shape", None)
            if fixed and all(isinstance(d, int) for d in fixed) and list(fixed) != list(x.shape):
                # The model did not export with dynamic axes (the exporter fell back to a static file).
                print(f"  {key}: ONNX file is static {list(fixed)}; no ONNX Runtime row at {list(x.shape)}",
                      flush=True)
                use_int8_here = False
            else:
                contenders["pixelwise ONNX Runtime fp32"] = (runner, torch.float32)
                use_int8_here = use_int8
            if use_int8_here:
                fp32_file = runners[side]["runner"].path
                if fp32_file not in int8:
                    int8[fp32_file] = int8_runner(fp32_file, side, torch.get_num_threads())
                    print(f"  {key} {side}px: int8 quantisation {int8[fp32_file][1]:.0f} s", flush=True)
                contenders["pixelwise ONNX Runtime int8"] = (int8[fp32_file][0], torch.int8)
            if use_ort and args.openvino and "pixelwise ONNX Runtime fp32" in contenders:
                fp32_file = runners[side]["runner"].path
                key_ov = ("ov", fp32_file)
                if key_ov not in int8:
                    int8[key_ov] = openvino_runners(fp32_file, side, torch.get_num_threads(), int8=not args.no_int8)
                    print(f"  {key} {side}px: OpenVINO compile/quantise " + ", ".join(
                        f"{n.split()[-1]} {v[2]:.0f} s" for n, v in int8[key_ov].items()), flush=True)
                for name, (runner, precision, _) in int8[key_ov].items():
                    contenders[name] = (runner, precision)
        contenders[peer_name] = (eager(peer), torch.float32)
        with torch.no_grad():
            flops = {"pixelwise": count_flops(ours, x), "peer": count_flops(peer, x)}
        outputs: dict[str, torch.Tensor] = {}

        def measure(name: str) -> float:
            seconds, outputs[name] = timed(contenders[name][0], x, device=device)
            return seconds

        times = interleave({name: name for name in contenders}, args.rounds, measure, warmup=args.warmup)
        reference = outputs[EAGER].float()
        ref_labels = reference.argmax(1)
        peer_median = median(times[peer_name])
        for name, (_, precision) in contenders.items():
            own = "peer" if name == peer_name else "pixelwise"
            med = median(times[name])
            gflops = flops[own] / med / 1e9
            row = {"model": key, "title": ZOO[key].title, "input": f"{batch}x3x{side}x{side}", "contender": name,
                   "precision": dtype_name(precision), "gflop": flops[own] / 1e9, "seconds": times[name],
                   "median_ms": 1e3 * med, "min_ms": 1e3 * min(times[name]), "speedup_vs_peer": peer_median / med,
                   "gflop_per_s": gflops, "fraction_of_peak": fraction(gflops, peak, precision)}
            if own == "pixelwise" and name != EAGER:
                out = outputs[name].float().cpu()
                row["argmax_agreement"] = (out.argmax(1) == ref_labels.cpu()).float().mean().item()
                row["max_abs_logit_diff"] = (out - reference.cpu()).abs().max().item()
            if name == EAGER:
                row["classes_in_argmax"] = int(ref_labels.unique().numel())
                row["logit_std"] = reference.std().item()
            if name == "pixelwise ONNX Runtime int8":
                row["quantize_seconds"] = int8[runners[side]["runner"].path][1]
            if name == "pixelwise ONNX Runtime fp32":
                row["export_seconds"] = runners[side]["export_seconds"]
                row["onnx_traced_at"] = runners[side]["traced_at"]
            rows.append(row)
            print(f"  {key} {row['input']:>12} {name:45s} {row['median_ms']:9.1f} ms  x{row['speedup_vs_peer']:.2f} "
                  f"{gflops:7.1f} GFLOP/s  agree {row.get('argmax_agreement', float('nan')):.4f}", flush=True)
    del ours, ours_cl, peer, runners, int8
    gc.collect()
    tmp.cleanup()
    gc.collect()
    return rows


def _percent(value: float) -> str:
    return "" if value != value else f"{100 * value:.0f}%"  # NaN: no measured peak for that precision


def markdown(result: dict) -> list[str]:
    """Headline table (best pixelwise path per model and input) and the full table."""
    rows, m = result["rows"], result["machine"]
    peak = describe_peak(result["peak"])
    lines = ["# Inference latency: pixelwise vs segmentation_models_pytorch / torchvision", "",
             f"{result['benchmark']}; median of {result['rounds']} interleaved rounds after {result['warmup']} "
             f"warm-up round(s).", "",
             f"{describe(m)}; torch {result['versions']['torch']}, {result['versions']['peers']}, onnxruntime "
             f"{result['versions'].get('onnxruntime', '-')}, openvino {result['versions'].get('openvino', '-')}; measured peak {peak}; {result['date']}.", ""]
    lines += [f"- {note}" for note in result["notes"]]
    lines += ["", "## Headline: fastest pixelwise path vs the peer's eager fp32", "",
              "| model | input | peer ms | fastest pixelwise path | ms | speed-up | argmax agreement | "
              "GFLOP pixelwise / peer |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for (model, inp) in dict.fromkeys((r["model"], r["input"]) for r in rows):
        group = [r for r in rows if r["model"] == model and r["input"] == inp]
        peer = next(r for r in group if not r["contender"].startswith("pixelwise"))
        best = min((r for r in group if r["contender"].startswith("pixelwise")), key=lambda r: r["median_ms"])
        agree = f"{100 * best['argmax_agreement']:.2f}%" if "argmax_agreement" in best else "(reference)"
        lines.append(f"| {best['title']} | {inp} | {peer['median_ms']:.0f} | {best['contender']} | "
                     f"{best['median_ms']:.0f} | {best['speedup_vs_peer']:.2f}x | {agree} | "
                     f"{best['gflop']:.3g} / {peer['gflop']:.3g} |")
    lines += ["", "## All contenders", "",
              "| model | input | contender | GFLOP | median ms | min ms | vs peer | GFLOP/s | of peak | argmax "
              "agreement | max abs logit diff |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        agree = f"{100 * r['argmax_agreement']:.2f}%" if "argmax_agreement" in r else ""
        diff = f"{r['max_abs_logit_diff']:.1e}" if "max_abs_logit_diff" in r else ""
        lines.append(f"| {r['title']} | {r['input']} | {r['contender']} | {r['gflop']:.3g} | {r['median_ms']:.0f} | "
                     f"{r['min_ms']:.0f} | {r['speedup_vs_peer']:.2f}x | {r['gflop_per_s']:.1f} | "
                     f"{_percent(r['fraction_of_peak'])} | {agree} | {diff} |")
    lines += ["", "Reference (pixelwise eager fp32) logits: " + "; ".join(
        f"{r['title']} {r['input']}: {r['classes_in_argmax']} classes in the argmax, logit std {r['logit_std']:.1e}"
        for r in rows if "classes_in_argmax" in r) + "."]
    exports = [r for r in rows if "export_seconds" in r]
    if exports:
        lines += ["", "ONNX export time (torch.export + dynamo exporter, no parity run): " + "; ".join(
            f"{r['title']} {r['input']}: " + (f"{r['export_seconds']:.0f} s" if r["export_seconds"] else
                                               f"graph traced at {r['onnx_traced_at']} px reused")
            for r in exports) + "."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all", help=f"comma-separated, from: {', '.join(ZOO)}")
    parser.add_argument("--sizes", default="1x512,4x256", help="BATCHxSIDE list (default 1x512,4x256)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each contender once per round)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (kernel caches, ORT arenas)")
    parser.add_argument("--threads", type=int, help="torch threads = ORT intra-op threads (default: torch's)")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                        help="autocast contender: auto = only with native hardware support")
    parser.add_argument("--no-ort", default="", help="models to run without the ONNX Runtime contender ('all': none)")
    parser.add_argument("--no-int8", action="store_true", help="leave out the int8 contenders (ONNX Runtime, OpenVINO)")
    parser.add_argument("--no-openvino", dest="openvino", action="store_false",
                        help="leave out the OpenVINO contenders")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1x64,2x64, 1 round, no warm-up")
    parser.add_argument("--out", help="results file stem (default latency / latency_cuda / latency_quick)")
    add_device_args(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.quick:
        args.sizes, args.rounds, args.warmup = "1x64,2x64", 1, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    keys, sizes = parse_models(args.models), parse_sizes(args.sizes)
    dtype = amp_dtype(device, args.amp_dtype)
    native = native_low_precision(device, dtype)
    use_amp = args.amp == "on" or (args.amp == "auto" and native)
    no_ort = set(ZOO) if args.no_ort == "all" else set(parse_models(args.no_ort)) if args.no_ort else set()
    ort_missing = ort_available(device)
    notes = []
    if not use_amp:
        notes.append(f"no {dtype_name(dtype)} autocast contender: "
                     + (f"this {device.type} has no native {dtype_name(dtype)} kernels (oneDNN would fall back to "
                        f"reference code; see the measured {dtype_name(dtype)} peak)" if not native
                        else "--amp off"))
    if ort_missing:
        notes.append(f"no ONNX Runtime contender: {ort_missing}")
    ov_missing = openvino_missing() if device.type == "cpu" else "OpenVINO runs on the CPU here"
    if args.openvino and ov_missing:
        notes.append(f"no OpenVINO contender: {ov_missing}")
        args.openvino = False
    if no_ort and not ort_missing:
        notes.append(f"ONNX Runtime skipped (--no-ort) for: {', '.join(ZOO[k].title for k in keys if k in no_ort)}")
    notes += [f"{ZOO[k].title}: {ZOO[k].note}" for k in keys if ZOO[k].note]
    peak = peaks(device, (torch.float32, dtype))
    print("measured peak:", describe_peak(peak), flush=True)

    rows: list[dict] = []
    for key in keys:
        print(f"{ZOO[key].title} vs {ZOO[key].peer_call}", flush=True)
        use_ort = not ort_missing and key not in no_ort
        rows += bench_model(key, sizes, args, device, dtype, use_amp, use_ort, peak,
                            use_int8=use_ort and device.type == "cpu" and not args.no_int8)
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                "peers": ", ".join(dict.fromkeys(peer_version(k) for k in keys))}
    if not ort_missing:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    if args.openvino:
        import openvino

        versions["openvino"] = openvino.__version__
    result = {"benchmark": f"inference latency, {NUM_CLASSES} classes, random weights, {device.type}, eval, no_grad, "
                           f"inputs {', '.join(f'{b}x3x{s}x{s}' for b, s in sizes)}",
              "date": now(), "machine": machine(device), "versions": versions, "rounds": args.rounds,
              "warmup": args.warmup, "peak": peak, "notes": notes, "rows": rows}
    stem = args.out or ("latency_quick" if args.quick else "latency" if device.type == "cpu" else "latency_cuda")
    save(stem, result, markdown(result))


if __name__ == "__main__":
    main()
