"""Box supervision quality: full masks vs filled boxes vs GrabCut vs GrabCut + refinement rounds.

Workload: the built-in synthetic shapes (5 classes) at a small size; the same tiny U-Net,
the same optimiser, steps, batch size and seed for every contender. Box annotations are
simulated from the true training masks (one box per connected component per class); the
true masks are used only to score the pseudo-labels. Each training round is
``--steps`` steps; refinement rounds continue from the previous round's weights (BoxSup),
so a row with ``r`` refinement rounds has trained ``(r + 1) * steps`` steps in all; the
optional "full masks, long" row (``--long``) trains as many steps as the longest box row,
to separate "more steps" from "better labels".

    PYTHONPATH=src python benchmarks/bench_box_supervision.py [--steps 600] [--rounds 1] [--ignore-variants] [--long]
        [--device cuda]

Writes ``benchmarks/results/box_supervision.json`` and ``.md`` (``box_supervision_cuda.*`` on
a GPU, where ``--amp`` means fp16 autocast). This is a quality
benchmark (mIoU), not a timing one; wall-clock seconds are reported for information.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from common import add_device_args, cpu_model, now, resolve_device, save
from pixelwise import create_model
from pixelwise.recipes.weak import (
    boxes_from_mask,
    fit,
    predict,
    pseudo_label_scores,
    pseudo_mask,
    synthetic_arrays,
    train_from_boxes,
)

NUM_CLASSES = 5


def val_miou(model, images: np.ndarray, masks: np.ndarray, amp: bool, device: torch.device) -> float:
    from pixelwise.metrics import ConfusionMatrix

    cm = ConfusionMatrix(NUM_CLASSES, ignore_index=255)
    cm.update(torch.from_numpy(predict(model, images, amp=amp, device=device)), torch.from_numpy(masks))
    return cm.compute()["miou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=200, help="training images")
    parser.add_argument("--val", type=int, default=100, help="validation images")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=600, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=1, help="refinement rounds after the first training")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-fraction", type=float, default=0.2, help="reset a box below this kept fraction")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on the CPU, fp16 on CUDA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny convs)")
    parser.add_argument("--ignore-variants", action="store_true", help="also filled-ignore and grabcut-ignore")
    parser.add_argument("--long", action="store_true", help="also full masks trained (rounds + 1) x steps")
    add_device_args(parser, amp=False)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train_x, train_y = synthetic_arrays(args.train, image_size=args.size, seed=args.seed)
    val_x, val_y = synthetic_arrays(args.val, image_size=args.size, seed=args.seed + 1_000_003)
    boxes = [boxes_from_mask(m) for m in train_y]

    def factory():
        return create_model("unet", num_classes=NUM_CLASSES, base_channels=args.base_channels, depth=3, norm="batch")

    common = {"steps_per_round": args.steps, "batch_size": args.batch_size, "lr": args.lr, "amp": args.amp,
              "seed": args.seed, "min_fraction": args.min_fraction, "device": device}
    rows: list[dict] = []

    def full(steps: int, label: str) -> None:
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        model = factory()
        fit(model, train_x, train_y, steps=steps, batch_size=args.batch_size, lr=args.lr, amp=args.amp,
            seed=args.seed, device=device)
        rows.append({"method": label, "steps": steps, "pseudo_miou": 1.0, "pseudo_coverage": 1.0,
                     "val_miou": val_miou(model, val_x, val_y, args.amp, device), "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)

    full(args.steps, "full masks")
    t0 = time.perf_counter()
    grabcut_labels = np.stack([pseudo_mask(x, b, mode="grabcut") for x, b in zip(train_x, boxes)])
    grabcut_seconds = (time.perf_counter() - t0) / len(train_x)
    modes = ("filled", "filled-ignore", "grabcut", "grabcut-ignore") if args.ignore_variants else ("filled", "grabcut")
    for mode in modes:
        t0 = time.perf_counter()
        rounds = args.rounds if mode in ("filled", "grabcut") else 0
        result = train_from_boxes(train_images=train_x, train_boxes=boxes, train_masks=train_y, val_images=val_x,
                                  val_masks=val_y, num_classes=NUM_CLASSES, model_factory=factory, pseudo=mode,
                                  rounds=rounds, **common)
        for entry in result.history:
            label = mode if entry["round"] == 0 else f"{mode} + {entry['round']} refinement round(s)"
            rows.append({"method": label, "steps": (entry["round"] + 1) * args.steps,
                         "pseudo_miou": entry["pseudo_miou"], "pseudo_coverage": entry["pseudo_coverage"],
                         "resets": entry["resets"], "val_miou": entry["val_miou"],
                         "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    if args.long:
        full((args.rounds + 1) * args.steps, "full masks, long")
    total = time.perf_counter() - started
    meta = {"date": now(), "cpu": cpu_model(), "device": str(device), "torch": torch.__version__,
            "numpy": np.__version__, "opencv": __import__("cv2").__version__, "python": platform.python_version(),
            "config": vars(args), "grabcut_seconds_per_image": grabcut_seconds, "total_seconds": total,
            "grabcut_pseudo": pseudo_label_scores(grabcut_labels, train_y, num_classes=NUM_CLASSES)}
    lines = [
        "# Box supervision on the synthetic shapes",
        "",
        (f"{meta['date']}, {meta['cpu']}, device {meta['device']}, torch {meta['torch']}, OpenCV {meta['opencv']}, "
         f"{args.threads} thread(s), total {total:.0f} s."),
        (f"{args.train} training / {args.val} validation images of {args.size}x{args.size}, U-Net base "
         f"{args.base_channels} depth 3 (batch norm), batch {args.batch_size}, AdamW lr {args.lr} cosine, "
         f"{args.steps} steps per round, seed {args.seed}, refinement reset below {args.min_fraction:.0%} of a box"
         + ((", bf16 autocast." if device.type == "cpu" else ", fp16 autocast.") if args.amp else ".")),
        ("Pseudo-label mIoU: training labels vs the hidden true masks over the pixels they label (coverage = "
         "that fraction). Single run, one seed: differences of a few points are within run-to-run noise."),
        "",
        "| method | total steps | pseudo-label mIoU | coverage | boxes reset | val mIoU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['method']} | {row['steps']} | {row['pseudo_miou']:.3f} | {row['pseudo_coverage']:.3f} "
                     f"| {row.get('resets', '-')} | {row['val_miou']:.3f} |")
    lines.append("")
    lines.append(f"GrabCut: {1000 * grabcut_seconds:.1f} ms per image ({args.size}x{args.size}).")
    save("box_supervision" if device.type == "cpu" else "box_supervision_cuda", {"meta": meta, "rows": rows}, lines)


if __name__ == "__main__":
    main()
