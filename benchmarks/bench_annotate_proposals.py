"""Proposal quality of `pixelwise annotate`: GrabCut from a box vs the model after a retrain through the loop.

Workload: the built-in synthetic shapes (5 classes). ``--labelled`` generated images are
saved as masks of an annotation folder (the true masks, as a user who labelled them would
have), then one retrain round runs exactly as the page's "retrain" button runs it
(:func:`pixelwise.annotate.retrain.retrain`: folder export, a ``pixelwise train``
subprocess, held-out comparison). The proposals are then scored on ``--test`` other
images, on every object (8-connected component of one class, at least 1% of the image):

- box prompt = the object's tight bounding box: GrabCut vs the model (its prediction of
  the object's class inside the box) vs the two together ("model+grabcut": GrabCut seeded
  with the model's proposal, :meth:`ModelProposer.refine`);
- one click = the object's most interior pixel (largest distance to its border):
  watershed vs the model (the piece of its prediction under the click).

IoU is against the object's true mask; the mean, median and 10th percentile over all
objects are reported.

    PYTHONPATH=src python benchmarks/bench_annotate_proposals.py [--labelled 400] [--test 40] [--steps 1500]

Writes ``benchmarks/results/annotate_proposals.json`` and ``.md``. A quality benchmark;
seconds are for information.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from common import cpu_model, describe, machine, now, save
from pixelwise.annotate import open_project
from pixelwise.annotate.classical import grabcut, watershed
from pixelwise.annotate.jobs import Job
from pixelwise.annotate.prompts import Click, Prompt
from pixelwise.annotate.retrain import retrain
from pixelwise.data import write_image
from pixelwise.data.synthetic import CLASS_NAMES, SyntheticShapes


def objects(mask: np.ndarray, min_area: int):
    for cls in range(1, len(CLASS_NAMES)):
        pieces, _ = ndimage.label(mask == cls, structure=np.ones((3, 3), bool))
        for k, (rows, cols) in enumerate(ndimage.find_objects(pieces), start=1):
            obj = pieces == k
            if obj.sum() >= min_area:
                yield cls, (cols.start, rows.start, cols.stop, rows.stop), obj


def interior(obj: np.ndarray) -> tuple[int, int]:
    distance = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), obj.shape)
    return int(x), int(y)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def summary(values: list[float]) -> dict:
    v = np.asarray(values)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "n": len(v)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labelled", type=int, default=400)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    root = Path(tempfile.mkdtemp(prefix="annotate-bench-"))
    train = SyntheticShapes(args.labelled, image_size=args.size, seed=0)
    test = SyntheticShapes(args.test, image_size=args.size, seed=99)
    truths = {}
    for i in range(args.labelled):
        image, mask = train.generate(i)
        write_image(root / "images" / f"train{i:04d}.png", image)
        truths[f"train{i:04d}"] = mask
    tests = [test.generate(i) for i in range(args.test)]
    for i, (image, _) in enumerate(tests):
        write_image(root / "images" / f"test{i:04d}.png", image)
    store, slot, _ = open_project(root, classes=list(CLASS_NAMES))
    for name, mask in truths.items():
        store.save_mask(name, mask)

    model = {"name": "unet", "args": {"base_channels": 16, "depth": 4, "norm": "batch"}}
    job = Job("retrain")
    t0 = time.perf_counter()
    status = job.start(lambda j: retrain(store, slot, j, {"steps": args.steps, "batch_size": args.batch_size,
                                                          "model": model, "device": "cpu"}))
    status = job.wait()
    retrain_s = time.perf_counter() - t0
    if status["state"] != "done":
        raise SystemExit(f"retrain failed: {status.get('error')}")
    proposer = slot.get()

    scores: dict[str, list[float]] = {k: [] for k in ("box_grabcut", "box_model", "box_model_grabcut", "click_watershed",
                                                "click_model")}
    min_area = int(0.01 * args.size * args.size)
    timing = {"grabcut": 0.0, "model": 0.0, "model+grabcut": 0.0}
    for i, (image, mask) in enumerate(tests):
        name = f"test{i:04d}"
        for cls, box, obj in objects(mask, min_area):
            x, y = interior(obj)
            boxed = Prompt(class_id=cls, box=box)
            clicked = Prompt(class_id=cls, clicks=(Click(x, y, True),))
            t = time.perf_counter()
            scores["box_grabcut"].append(iou(grabcut(image, boxed), obj))
            timing["grabcut"] += time.perf_counter() - t
            t = time.perf_counter()
            scores["box_model"].append(iou(proposer.propose(image, boxed, name), obj))
            timing["model"] += time.perf_counter() - t
            t = time.perf_counter()
            scores["box_model_grabcut"].append(iou(proposer.refine(image, boxed, name), obj))
            timing["model+grabcut"] += time.perf_counter() - t
            scores["click_watershed"].append(iou(watershed(image, clicked), obj))
            scores["click_model"].append(iou(proposer.propose(image, clicked, name), obj))

    result = {"date": now(), "machine": machine(threads=1), "args": vars(args), "retrain": {
        "seconds": retrain_s, "holdout_images": len(status["holdout"]), "new_holdout_miou": status["new_miou"],
        "steps": args.steps, "model": model}, "scores": {k: summary(v) for k, v in scores.items()},
        "ms_per_object": {k: 1000 * v / max(1, len(scores["box_grabcut"])) for k, v in timing.items()},
        "total_seconds": time.perf_counter() - start}
    rows = [("box", "GrabCut (no model)", "box_grabcut"), ("box", "model after the retrain", "box_model"),
            ("box", "model after the retrain + GrabCut (model+grabcut)", "box_model_grabcut"),
            ("one click", "watershed (no model)", "click_watershed"),
            ("one click", "model after the retrain", "click_model")]
    md = ["# Annotation proposals on the synthetic shapes", "",
          f"{result['date']}, {describe(result['machine'])}; total {result['total_seconds']:.0f} s.",
          f"{args.labelled} labelled {args.size}x{args.size} images, one retrain round through the page's loop "
          f"(`pixelwise train` subprocess): U-Net base 16 depth 4, batch {args.batch_size}, {args.steps} steps, "
          f"{retrain_s:.0f} s; held-out mIoU of the new model {status['new_miou']:.3f} on "
          f"{len(status['holdout'])} held-out labelled images.",
          f"Scored on {len(scores['box_grabcut'])} objects of {args.test} other images (IoU with the object's true "
          f"mask). Single run, one seed.", "",
          "| prompt | proposal | mean IoU | median | 10th percentile |", "|---|---|---:|---:|---:|"]
    for prompt, label, key in rows:
        s = result["scores"][key]
        md.append(f"| {prompt} | {label} | {s['mean']:.3f} | {s['median']:.3f} | {s['p10']:.3f} |")
    md += ["", f"Time per object: GrabCut {result['ms_per_object']['grabcut']:.1f} ms, model (box) "
               f"{result['ms_per_object']['model']:.1f} ms (one forward pass per image, cached), model+grabcut "
               f"{result['ms_per_object']['model+grabcut']:.1f} ms. CPU: {cpu_model()}."]
    save("annotate_proposals", result, md)


if __name__ == "__main__":
    main()
