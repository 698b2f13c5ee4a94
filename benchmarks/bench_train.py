"""CPU training throughput: pixelwise U-Net-ResNet34 vs segmentation_models.pytorch's.

Workload: one training step = forward, cross-entropy (21 classes), backward and an AdamW
update on a batch of 4 x 3 x 256 x 256, on the CPU. Contenders, each in its own fresh
subprocess (so that its peak RSS is its own and no allocator state is shared):

- ``pixelwise fp32``: ``create_model("unet", encoder="resnet34")``, eager, NCHW;
- ``pixelwise bf16+channels_last``: the same model under ``torch.autocast("cpu", bfloat16)``
  with channels_last weights and inputs (``train.amp: bf16``, ``train.channels_last: true``);
- ``smp fp32``: ``smp.Unet("resnet34", encoder_weights=None)``, eager, NCHW (the peer's default);
- ``smp bf16+channels_last``: the peer with the same fast settings (for a fair reading).

Runs are interleaved (A B C D, A B C D, ...) so that machine noise hits all alike; the
report gives each contender's median images/s over its runs and the ratio to ``smp fp32``.

    PYTHONPATH=src python benchmarks/bench_train.py [--repeats 3] [--steps 5]

writes ``benchmarks/results/train.json`` and ``train.md``. With ``--accuracy`` it instead
trains both U-Nets with the same loop, data order, augmentation and seed on the synthetic
set and compares their validation mIoU (``train_accuracy.json`` / ``.md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
BATCH, SIZE, CLASSES = 4, 256, 21
CONTENDERS = {
    "pixelwise fp32": ("pixelwise", "none", False),
    "pixelwise bf16+channels_last": ("pixelwise", "bf16", True),
    "smp fp32": ("smp", "none", False),
    "smp bf16+channels_last": ("smp", "bf16", True),
}
BASELINE = "smp fp32"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux) or ``platform``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(library: str, num_classes: int) -> torch.nn.Module:
    """The U-Net-ResNet34 of ``library`` with random weights (nothing is downloaded)."""
    if library == "pixelwise":
        from pixelwise import create_model

        return create_model("unet", encoder="resnet34", num_classes=num_classes)
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet34", encoder_weights=None, classes=num_classes)


def worker(library: str, amp: str, channels_last: bool, steps: int, warmup: int) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; return seconds per step and peak RSS."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build(library, CLASSES).to(memory_format=fmt).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(BATCH, 3, SIZE, SIZE, generator=g).to(memory_format=fmt)
    target = torch.randint(0, CLASSES, (BATCH, SIZE, SIZE), generator=g)
    times = []
    for i in range(warmup + steps):
        tic = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(image)
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return {"step_seconds": statistics.median(times), "all_step_seconds": times,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "parameters": sum(p.numel() for p in model.parameters())}


def accuracy(library: str, steps: int) -> float:
    """Validation mIoU after ``steps`` AdamW steps on the synthetic set (64 px, batch 8, 5 classes),
    with the same data order, augmentation and seed for both libraries."""
    from pixelwise import config
    from pixelwise.engine.distributed import DistEnv
    from pixelwise.engine.evaluate import evaluate
    from pixelwise.engine.loaders import make_loaders

    cfg = config.from_dict({"data": {"num_classes": 5, "crop_size": 64, "batch_size": 8, "train_samples": 256,
                                     "val_samples": 64, "augment": "standard"}})
    train_loader, val_loader, sampler, dataset = make_loaders(cfg, DistEnv(), out_dir=Path("."))
    torch.manual_seed(0)
    model = build(library, 5).train()
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


def compare_accuracy(steps: int, smp_version: str) -> None:
    """Train both U-Net-ResNet34s identically; write ``train_accuracy.json`` / ``.md``."""
    tic = time.perf_counter()
    miou = {lib: accuracy(lib, steps) for lib in ("pixelwise", "smp")}
    result = {"benchmark": f"validation mIoU after {steps} AdamW steps (lr 1e-3), synthetic set, 64 px crops, "
                           f"batch 8, 5 classes, same data order / augmentation / seed",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "versions": {"torch": torch.__version__, "segmentation_models_pytorch": smp_version},
              "miou": miou, "difference_points": 100 * (miou["pixelwise"] - miou["smp"]),
              "wall_seconds": time.perf_counter() - tic}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Training accuracy: pixelwise vs segmentation_models.pytorch U-Net-ResNet34", "",
             f"{result['benchmark']}; {cpu_model()}; torch {torch.__version__}, smp {smp_version}; {result['date']}.",
             "", "| library | validation mIoU |", "|---|---:|",
             f"| pixelwise | {miou['pixelwise']:.4f} |", f"| smp | {miou['smp']:.4f} |", "",
             f"Difference: {result['difference_points']:+.2f} mIoU points (one seed; run-to-run spread between "
             f"seeds is not measured here).", ""]
    (RESULTS / "train_accuracy.md").write_text("\n".join(lines))
    print("\n".join(lines))


def run_one(name: str, steps: int, warmup: int) -> dict:
    library, amp, cl = CONTENDERS[name]
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_train as b; "
            f"print('RESULT', json.dumps(b.worker({library!r}, {amp!r}, {cl}, {steps}, {warmup})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved subprocess runs per contender")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--accuracy", action="store_true", help="only train both for --accuracy-steps, compare mIoU")
    parser.add_argument("--accuracy-steps", type=int, default=150)
    args = parser.parse_args()
    import segmentation_models_pytorch as smp
    import timm

    if args.accuracy:
        compare_accuracy(args.accuracy_steps, smp.__version__)
        return

    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for r in range(args.repeats):
        for name in CONTENDERS:
            runs[name].append(run_one(name, args.steps, args.warmup))
            print(f"repeat {r + 1}: {name}: {BATCH / runs[name][-1]['step_seconds']:.2f} img/s", flush=True)
    ips = {n: statistics.median(BATCH / x["step_seconds"] for x in v) for n, v in runs.items()}
    rss = {n: statistics.median(x["peak_rss_mib"] for x in v) for n, v in runs.items()}
    result = {
        "benchmark": f"CPU training step (fwd + CE + bwd + AdamW), U-Net-ResNet34, {BATCH}x3x{SIZE}x{SIZE}, "
                     f"{CLASSES} classes",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "segmentation_models_pytorch": smp.__version__,
                     "timm": timm.__version__},
        "repeats": args.repeats, "timed_steps_per_run": args.steps, "warmup_steps": args.warmup,
        "runs": runs, "median_images_per_s": ips, "median_peak_rss_mib": rss,
        "speedup_vs_smp_fp32": {n: ips[n] / ips[BASELINE] for n in CONTENDERS},
        "parameters": {n: v[0]["parameters"] for n, v in runs.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = ["# Training throughput: pixelwise vs segmentation_models.pytorch (CPU)", "",
             f"{result['benchmark']}; median over {args.repeats} interleaved subprocess runs of {args.steps} "
             f"timed steps (after {args.warmup} warm-up steps) each.",
             f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, load average at "
             f"end {m['load_average_at_end'][0]:.1f}; torch {torch.__version__}, smp {smp.__version__}, "
             f"timm {timm.__version__}; {result['date']}.", "",
             "| contender | parameters | median images/s | vs smp fp32 | median peak RSS MiB |",
             "|---|---:|---:|---:|---:|"]
    for n in CONTENDERS:
        lines.append(f"| {n} | {result['parameters'][n]:,} | {ips[n]:.2f} | {ips[n] / ips[BASELINE]:.2f}x | "
                     f"{rss[n]:.0f} |")
    lines.append("")
    (RESULTS / "train.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
