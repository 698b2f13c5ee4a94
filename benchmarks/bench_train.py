"""Training step time, GFLOP/s and peak memory: pixelwise vs the peers, model by model.

Workload: one training step = forward, cross-entropy (21 classes), backward and an AdamW
update on a batch of 4 x 3 x 256 x 256. Models: the zoo of ``zoo.py`` (``--models``,
default U-Net-ResNet34 only; ``all`` for the seven), each against its peer
(segmentation_models_pytorch or torchvision, random weights, auxiliary heads off on both
sides). Contenders per model, each in its own fresh subprocess (so that its peak RSS,
``VmHWM``, is its own and no allocator state is shared):

- ``pixelwise fp32`` (eager, NCHW) and ``pixelwise fp32 channels_last``;
- ``pixelwise {bf16|fp16}+channels_last`` (``train.amp`` + ``train.channels_last``) and the
  peer with the same settings: only where the device has native support for that dtype
  (``--amp on`` forces them; see ``bench_latency.py`` for why);
- the peer's ``fp32`` (its default), the baseline of every ratio.

Runs are interleaved (A B C, A B C, ...) so that machine noise hits all alike; the report
gives each contender's median step time over its runs, images/s, the ratio to the peer's
fp32, training GFLOP/s (3x the forward FLOPs counted by ``torch.utils.flop_counter``:
backward = grad-input + grad-weight, each as much as the forward) as a fraction of the
device's measured peak, and peak memory (RSS on
the CPU; ``torch.cuda.max_memory_allocated`` on CUDA).

    PYTHONPATH=src python benchmarks/bench_train.py [--models all] [--repeats 2] [--steps 3]
        [--device cpu|cuda] [--threads N]

writes ``benchmarks/results/train.json`` / ``.md`` (``train_zoo`` for other model lists,
``_cuda`` on a GPU). With ``--accuracy`` it instead trains both U-Nets with the same loop,
data order, augmentation and seed on the synthetic set and compares their validation mIoU
(``train_accuracy.json`` / ``.md``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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
    machine,
    median,
    native_low_precision,
    now,
    peak_rss_mib,
    resolve_device,
    save,
    synchronize,
)
from zoo import ZOO, build_peer, build_pixelwise, parse_models, peer_version

BATCH, SIZE, CLASSES = 4, 256, 21


def contenders(key: str, dtype: torch.dtype, use_amp: bool) -> dict[str, tuple[str, str, bool]]:
    """``{name: (library, amp dtype name or "none", channels_last)}``; the peer's fp32 comes last."""
    peer = ZOO[key].peer
    out = {"pixelwise fp32": ("pixelwise", "none", False),
           "pixelwise fp32 channels_last": ("pixelwise", "none", True)}
    if use_amp:
        amp = dtype_name(dtype)
        out[f"pixelwise {amp}+channels_last"] = ("pixelwise", amp, True)
        out[f"{peer} {amp}+channels_last"] = ("peer", amp, True)
    out[f"{peer} fp32"] = ("peer", "none", False)
    return out


def build(key: str, library: str, num_classes: int) -> torch.nn.Module:
    return build_pixelwise(key, num_classes) if library == "pixelwise" else build_peer(key, num_classes)


def worker(key: str, library: str, amp: str, channels_last: bool, steps: int, warmup: int, device: str,
           threads: int, batch: int = BATCH, size: int = SIZE) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; seconds per step, FLOPs, peak memory."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build(key, library, CLASSES).to(dev, memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, size, size, generator=g).to(dev).contiguous(memory_format=fmt)
    target = torch.randint(0, CLASSES, (batch, size, size), generator=g).to(dev)
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    # fp16 gradients need loss scaling (as train.amp: fp16 does); bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    rss_built = peak_rss_mib("VmRSS")  # libraries imported, weights and data in memory

    def step() -> None:
        with autocast(dev, dtype):
            logits = model(image)
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    # Backward is not counted directly: torch's FlopCounterMode over-counts convolution_backward
    # of grouped (depthwise) convolutions, up to 37x for MobileNetV3 in torch 2.14.
    with autocast(dev, dtype):
        flops = 3 * count_flops(model, image)
    times = []
    for i in range(warmup + steps):
        synchronize(dev)
        tic = time.perf_counter()
        step()
        synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    out = {"step_seconds": median(times), "all_step_seconds": times, "flops_per_step": flops,
           "peak_rss_mib": peak_rss_mib(), "rss_after_build_mib": rss_built,
           "parameters": sum(p.numel() for p in model.parameters())}
    if dev.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def run_one(key: str, spec: tuple[str, str, bool], args) -> dict:
    """:func:`worker` in a fresh interpreter; its JSON line back."""
    library, amp, cl = spec
    call = (f"b.worker({key!r}, {library!r}, {amp!r}, {cl}, {args.steps}, {args.warmup}, {args.device!r}, "
            f"{args.threads}, {args.batch}, {args.size})")
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_train as b; "
            f"print('RESULT', json.dumps({call}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{key} {spec} failed:\n{done.stderr[-3000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def accuracy(library: str, steps: int) -> float:
    """Validation mIoU after ``steps`` AdamW steps on the synthetic set (64 px, batch 8, 5 classes),
    with the same data order, augmentation and seed for both libraries."""
    from pixelwise import config
    from pixelwise.tasks.semantic import evaluate
    from pixelwise.train.distributed import DistEnv
    from pixelwise.train.loaders import make_loaders

    cfg = config.from_dict({"data": {"num_classes": 5, "crop_size": 64, "batch_size": 8, "train_samples": 256,
                                     "val_samples": 64, "augment": "standard"}})
    train_loader, val_loader, sampler, dataset = make_loaders(cfg, DistEnv(), out_dir=Path("."))
    torch.manual_seed(0)
    model = build("unet_resnet34", library, 5).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    step, epoch = 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        dataset.set_epoch_seed(epoch)
        for batch in train_loader:
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["mask"], ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
        epoch += 1
    return evaluate(model, val_loader, num_classes=5, progress=False).miou()


def compare_accuracy(steps: int) -> None:
    """Train both U-Net-ResNet34s identically; write ``train_accuracy.json`` / ``.md``."""
    tic = time.perf_counter()
    miou = {"pixelwise": accuracy("pixelwise", steps), "smp": accuracy("peer", steps)}
    result = {"benchmark": f"validation mIoU after {steps} AdamW steps (lr 1e-3), synthetic set, 64 px crops, "
                           f"batch 8, 5 classes, same data order / augmentation / seed",
              "date": now(), "machine": machine(),
              "versions": {"torch": torch.__version__, "peer": peer_version("unet_resnet34")},
              "miou": miou, "difference_points": 100 * (miou["pixelwise"] - miou["smp"]),
              "wall_seconds": time.perf_counter() - tic}
    lines = ["# Training accuracy: pixelwise vs segmentation_models.pytorch U-Net-ResNet34", "",
             f"{result['benchmark']}; {describe(result['machine'])}; torch {torch.__version__}, "
             f"{result['versions']['peer']}; {result['date']}.",
             "", "| library | validation mIoU |", "|---|---:|",
             f"| pixelwise | {miou['pixelwise']:.4f} |", f"| smp | {miou['smp']:.4f} |", "",
             f"Difference: {result['difference_points']:+.2f} mIoU points (one seed; run-to-run spread between "
             f"seeds is not measured here)."]
    save("train_accuracy", result, lines)


def summarise(key: str, specs: dict, runs: dict[str, list[dict]], peak: dict, device: torch.device,
              batch: int) -> list[dict]:
    """One row per contender: medians over its runs, ratios against the peer's fp32."""
    from peak import fraction

    peer_fp32 = list(specs)[-1]
    base = median(r["step_seconds"] for r in runs[peer_fp32])
    rows = []
    for name, (library, amp, cl) in specs.items():
        step_s = median(r["step_seconds"] for r in runs[name])
        flops = runs[name][0]["flops_per_step"]
        precision = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        row = {"model": key, "title": ZOO[key].title, "contender": name, "library": library, "amp": amp,
               "channels_last": cl, "parameters": runs[name][0]["parameters"], "gflop_per_step": flops / 1e9,
               "median_step_ms": 1e3 * step_s, "images_per_s": batch / step_s, "speedup_vs_peer_fp32": base / step_s,
               "gflop_per_s": flops / step_s / 1e9, "fraction_of_peak": fraction(flops / step_s / 1e9, peak, precision),
               "median_peak_rss_mib": median(r["peak_rss_mib"] for r in runs[name]),
               "median_rss_after_build_mib": median(r["rss_after_build_mib"] for r in runs[name]),
               "runs": runs[name]}
        if device.type == "cuda":
            row["median_cuda_max_allocated_mib"] = median(r["cuda_max_allocated_mib"] for r in runs[name])
        rows.append(row)
    return rows


def markdown(result: dict) -> list[str]:
    from peak import describe_peak

    m, rows, cuda = result["machine"], result["rows"], result["device"] != "cpu"
    peak = describe_peak(result["peak"])
    lines = [f"# Training step: pixelwise vs segmentation_models_pytorch / torchvision ({result['device']})", "",
             f"{result['benchmark']}; median over {result['repeats']} interleaved subprocess runs of "
             f"{result['timed_steps_per_run']} timed steps (after {result['warmup_steps']} warm-up step(s)) each.", "",
             f"{describe(m)}; torch {result['versions']['torch']}, {result['versions']['peers']}; measured "
             f"peak {peak}; {result['date']}.", ""]
    lines += [f"- {note}" for note in result["notes"]]
    memory = "CUDA max allocated MiB" if cuda else "peak RSS MiB (RSS before the first step)"
    lines += ["", f"| model | contender | params | GFLOP/step | step ms | images/s | vs peer fp32 | GFLOP/s | "
              f"of peak | {memory} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = (f"{r['median_cuda_max_allocated_mib']:.0f}" if cuda else
               f"{r['median_peak_rss_mib']:.0f} ({r['median_rss_after_build_mib']:.0f})")
        lines.append(f"| {r['title']} | {r['contender']} | {r['parameters'] / 1e6:.1f} M | {r['gflop_per_step']:.1f} | "
                     f"{r['median_step_ms']:.0f} | {r['images_per_s']:.2f} | {r['speedup_vs_peer_fp32']:.2f}x | "
                     f"{r['gflop_per_s']:.1f} | {100 * r['fraction_of_peak']:.0f}% | {mem} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet_resnet34", help=f"comma-separated or 'all': {', '.join(ZOO)}")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved subprocess runs per contender")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per run")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                        help="autocast contenders: auto = only with native hardware support")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--size", type=int, default=SIZE, help="image side")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2 of 64x64, 1 run of 1 step")
    parser.add_argument("--out", help="results file stem (default train / train_zoo, + _cuda on a GPU)")
    parser.add_argument("--accuracy", action="store_true", help="only train both U-Nets, compare mIoU")
    parser.add_argument("--accuracy-steps", type=int, default=150)
    add_device_args(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.accuracy:
        compare_accuracy(args.accuracy_steps)
        return
    from peak import peaks

    if args.quick:
        args.batch, args.size, args.repeats, args.steps, args.warmup = 2, 64, 1, 1, 0
        args.out = args.out or "train_quick"
    args.device = str(device)
    keys = parse_models(args.models)
    dtype = amp_dtype(device, args.amp_dtype)
    use_amp = args.amp == "on" or (args.amp == "auto" and native_low_precision(device, dtype))
    torch.set_num_threads(args.threads)
    peak = peaks(device, (torch.float32, dtype))
    notes = [] if use_amp else [f"no {dtype_name(dtype)} autocast contenders: "
                                + ("--amp off" if args.amp == "off" else
                                   f"no native {dtype_name(dtype)} kernels on this {device.type} (see the measured "
                                   f"{dtype_name(dtype)} peak)")]
    notes += [f"{ZOO[k].title}: {ZOO[k].note}" for k in keys if ZOO[k].note]
    notes.append("GFLOP/step: 3x the forward's convolution and matmul FLOPs (torch.utils.flop_counter); "
                 "backward is not counted directly because FlopCounterMode over-counts convolution_backward of "
                 "grouped/depthwise convolutions (37x for LR-ASPP's MobileNetV3); the optimizer is not counted")
    rows: list[dict] = []
    for key in keys:
        specs = contenders(key, dtype, use_amp)
        runs: dict[str, list[dict]] = {name: [] for name in specs}
        for r in range(args.repeats):
            for name, spec in specs.items():
                runs[name].append(run_one(key, spec, args))
                print(f"{key} repeat {r + 1}: {name}: {1e3 * runs[name][-1]['step_seconds']:.0f} ms/step, peak RSS "
                      f"{runs[name][-1]['peak_rss_mib']:.0f} MiB", flush=True)
        rows += summarise(key, specs, runs, peak, device, args.batch)
    result = {"benchmark": f"training step (fwd + CE + bwd + AdamW), {args.batch}x3x{args.size}x{args.size}, "
                           f"{CLASSES} classes, "
                           f"random weights, {device.type}",
              "date": now(), "device": device.type, "machine": machine(device, args.threads),
              "versions": {"torch": torch.__version__, "peers": ", ".join(dict.fromkeys(peer_version(k) for k in keys))},
              "repeats": args.repeats, "timed_steps_per_run": args.steps, "warmup_steps": args.warmup,
              "peak": peak, "notes": notes, "rows": rows}
    stem = args.out or ("train" if keys == ["unet_resnet34"] else "train_zoo")
    save(stem if device.type == "cpu" else f"{stem}_cuda", result, markdown(result))


if __name__ == "__main__":
    main()
