"""Confusion-matrix accumulation speed: pixelwise ConfusionMatrix vs torchmetrics.

Workload: 16 label masks of 512x512, 21 classes, 5 % of the target pixels set to the
ignore index 255, predictions that agree with the target 70 % of the time; one
``update`` call per run with the whole (16, 512, 512) batch, on the CPU. Runs of the
two libraries are interleaved so that machine noise hits both alike; the report gives
medians and the ratio of medians, and checks that both give the same per-class IoU.

    PYTHONPATH=src python benchmarks/bench_metrics.py [--runs 15]

Writes ``benchmarks/results/metrics.json`` and ``benchmarks/results/metrics.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pixelwise.metrics import ConfusionMatrix

NUM_CLASSES, IGNORE, SHAPE = 21, 255, (16, 512, 512)
RESULTS = Path(__file__).parent / "results"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux) or ``platform``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` int64 ``(16, 512, 512)``, as a model's argmax and a loader give."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, SHAPE, generator=generator)
    noise = torch.randint(0, NUM_CLASSES, SHAPE, generator=generator)
    pred = torch.where(torch.rand(SHAPE, generator=generator) < 0.7, target, noise)
    target[torch.rand(SHAPE, generator=generator) < 0.05] = IGNORE
    return pred, target


def time_update(make_metric, pred, target) -> float:
    """Seconds for one ``update`` on a fresh metric."""
    metric = make_metric()
    start = time.perf_counter()
    metric.update(pred, target)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per library (>= 10)")
    args = parser.parse_args()
    from torchmetrics import __version__ as tm_version
    from torchmetrics.classification import MulticlassJaccardIndex

    pred, target = make_batch(seed=0)
    contenders = {
        "pixelwise ConfusionMatrix.update": (
            lambda: ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE)
        ),
        "torchmetrics MulticlassJaccardIndex.update": lambda: MulticlassJaccardIndex(
            num_classes=NUM_CLASSES, ignore_index=IGNORE, average=None
        ),
        # Not the default: shows how much of torchmetrics' time is input validation.
        "torchmetrics MulticlassJaccardIndex.update (validate_args=False)": (
            lambda: MulticlassJaccardIndex(
                num_classes=NUM_CLASSES, ignore_index=IGNORE, average=None, validate_args=False
            )
        ),
    }
    for make in contenders.values():  # warm-up: allocator, lazy imports
        time_update(make, pred, target)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.runs):
        for name, make in contenders.items():
            times[name].append(time_update(make, pred, target))
    medians = {name: statistics.median(values) for name, values in times.items()}

    ours = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE)
    ours.update(pred, target)
    theirs = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE, average=None)
    theirs.update(pred, target)
    iou_ours, iou_theirs = ours.iou(), theirs.compute().double()
    same = bool(torch.allclose(iou_ours, iou_theirs, rtol=1e-6, atol=1e-7))
    matrix_same = bool(torch.equal(ours.matrix, theirs.confmat.long()))

    names = list(contenders)
    baseline = medians[names[0]]
    result = {
        "benchmark": "confusion-matrix update, (16, 512, 512) int64 masks, 21 classes, "
                     "5% ignored (255), CPU",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {"torch": torch.__version__, "torchmetrics": tm_version},
        "runs": args.runs,
        "seconds": times,
        "median_seconds": medians,
        "speedup_vs_pixelwise": {name: medians[name] / baseline for name in names},
        "iou_allclose": same,
        "confusion_matrix_equal": matrix_same,
        "iou_pixelwise": iou_ours.tolist(),
        "iou_torchmetrics": iou_theirs.tolist(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")

    lines = [
        "# Metric accumulation: ConfusionMatrix vs torchmetrics",
        "",
        f"{result['benchmark']}; median of {args.runs} interleaved runs, one `update` each.",
        f"{result['machine']['cpu']}, {result['machine']['logical_cpus']} logical CPUs, "
        f"{result['machine']['torch_threads']} torch threads; torch {torch.__version__}, "
        f"torchmetrics {tm_version}; {result['date']}.",
        "",
        "| update | median ms | min ms | slower than pixelwise |",
        "|---|---:|---:|---:|",
    ]
    for name in names:
        lines.append(
            f"| {name} | {1e3 * medians[name]:.1f} | {1e3 * min(times[name]):.1f} | "
            f"{medians[name] / baseline:.1f}x |"
        )
    lines += [
        "",
        f"Per-class IoU identical (allclose): **{same}**; confusion matrices equal: "
        f"**{matrix_same}**.",
        "",
        "| class | " + " | ".join(str(c) for c in range(NUM_CLASSES)) + " |",
        "|---|" + "---:|" * NUM_CLASSES,
        "| IoU | " + " | ".join(f"{v:.4f}" for v in iou_ours.tolist()) + " |",
        "",
    ]
    (RESULTS / "metrics.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if not same:
        raise SystemExit("per-class IoU differs between pixelwise and torchmetrics")


if __name__ == "__main__":
    main()
