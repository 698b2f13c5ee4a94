"""Confusion-matrix accumulation speed: pixelwise ConfusionMatrix vs torchmetrics.

Workload: 16 label masks of 512x512, 21 classes, 5 % of the target pixels set to the
ignore index 255, predictions that agree with the target 70 % of the time; one
``update`` call per run with the whole (16, 512, 512) batch, on ``--device`` (default the
CPU; on CUDA the masks and both metrics live on the GPU and runs are timed with CUDA
events). Runs of the
two libraries are interleaved so that machine noise hits both alike; the report gives
medians and the ratio of medians, and checks that both give the same per-class IoU.

    PYTHONPATH=src python benchmarks/bench_metrics.py [--runs 15] [--device cuda]

Writes ``benchmarks/results/metrics.json`` and ``benchmarks/results/metrics.md``
(``metrics_cuda.*`` on a GPU).
"""

from __future__ import annotations

import argparse

import torch

from common import add_device_args, describe, interleave, machine, median, now, resolve_device, save, timed
from pixelwise.metrics import ConfusionMatrix

NUM_CLASSES, IGNORE, SHAPE = 21, 255, (16, 512, 512)


def make_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, target)`` int64 ``(16, 512, 512)``, as a model's argmax and a loader give."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, SHAPE, generator=generator)
    noise = torch.randint(0, NUM_CLASSES, SHAPE, generator=generator)
    pred = torch.where(torch.rand(SHAPE, generator=generator) < 0.7, target, noise)
    target[torch.rand(SHAPE, generator=generator) < 0.05] = IGNORE
    return pred, target


def time_update(make_metric, pred, target) -> float:
    """Seconds for one ``update`` on a fresh metric (on the masks' device)."""
    metric = make_metric()
    return timed(metric.update, pred, target, device=pred.device)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per library (>= 10)")
    add_device_args(parser, amp=False)
    args = parser.parse_args()
    device = resolve_device(args.device)
    from torchmetrics import __version__ as tm_version
    from torchmetrics.classification import MulticlassJaccardIndex

    pred, target = (t.to(device) for t in make_batch(seed=0))
    contenders = {
        "pixelwise ConfusionMatrix.update": (
            lambda: ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE, device=device)
        ),
        "torchmetrics MulticlassJaccardIndex.update": lambda: MulticlassJaccardIndex(
            num_classes=NUM_CLASSES, ignore_index=IGNORE, average=None
        ).to(device),
        # Not the default: shows how much of torchmetrics' time is input validation.
        "torchmetrics MulticlassJaccardIndex.update (validate_args=False)": (
            lambda: MulticlassJaccardIndex(
                num_classes=NUM_CLASSES, ignore_index=IGNORE, average=None, validate_args=False
            ).to(device)
        ),
    }
    # One warm-up round (allocator, lazy imports), then interleaved timed rounds.
    times = interleave(contenders, args.runs, lambda make: time_update(make, pred, target))
    medians = {name: median(values) for name, values in times.items()}

    ours = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE, device=device)
    ours.update(pred, target)
    theirs = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE, average=None).to(device)
    theirs.update(pred, target)
    iou_ours, iou_theirs = ours.iou().cpu(), theirs.compute().double().cpu()
    same = bool(torch.allclose(iou_ours, iou_theirs, rtol=1e-6, atol=1e-7))
    matrix_same = bool(torch.equal(ours.matrix.cpu(), theirs.confmat.long().cpu()))

    names = list(contenders)
    baseline = medians[names[0]]
    result = {
        "benchmark": "confusion-matrix update, (16, 512, 512) int64 masks, 21 classes, "
                     f"5% ignored (255), {device.type}",
        "date": now(),
        "machine": machine(device),
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
    lines = [
        "# Metric accumulation: ConfusionMatrix vs torchmetrics",
        "",
        f"{result['benchmark']}; median of {args.runs} interleaved runs, one `update` each.",
        f"{describe(result['machine'])}; torch {torch.__version__}, torchmetrics {tm_version}; {result['date']}.",
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
    ]
    save("metrics" if device.type == "cpu" else "metrics_cuda", result, lines)
    if not same:
        raise SystemExit("per-class IoU differs between pixelwise and torchmetrics")


if __name__ == "__main__":
    main()
