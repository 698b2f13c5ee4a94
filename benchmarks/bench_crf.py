"""Dense CRF: does it sharpen coarse predictions, and how fast is it?

(a) Quality. For ``--images`` SyntheticShapes samples (``--size`` px, seed 1), coarse
class probabilities are made from the ground truth the way a low-resolution network
output looks: one-hot masks area-downsampled 8x, 16x or 32x, upsampled bilinearly (soft,
misplaced boundaries), then Gaussian noise on the log-probabilities so some pixels are
wrong. The CRF
(defaults of :func:`pixelwise.postprocess.dense_crf`, the DeepLab / pydensecrf values,
and a variant with the bilateral position bandwidth scaled to the image) refines them;
``clean_mask(min_size=...)`` is shown on top. Scores: mIoU (dataset-level confusion
matrix) and boundary F-score (Csurka et al. 2013, tolerance 0.75 % of the diagonal)
from :mod:`pixelwise.metrics`.

(b) Speed. One 512x512 SyntheticShapes image, 21 classes of random softmax
probabilities, 5 mean-field iterations, CPU; median of ``--runs`` runs, with the lattice
construction timed on its own. ``pydensecrf`` (the C++ reference) is timed in the same
loop, interleaved, only if it is importable; it is not a dependency of pixelwise and is
reported as not available otherwise.

    PYTHONPATH=src python benchmarks/bench_crf.py [--runs 5] [--images 16] [--size 256]

Writes ``benchmarks/results/crf.json`` and ``benchmarks/results/crf.md``.
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

import cv2
import numpy as np
import torch

from pixelwise.data import SyntheticShapes
from pixelwise.metrics import ConfusionMatrix, SurfaceMetrics
from pixelwise.postprocess import CRFKernels, clean_mask, dense_crf

RESULTS = Path(__file__).parent / "results"
NUM_CLASSES = 5  # SyntheticShapes


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux) or ``platform``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


LEVELS = ((8, 0.6), (16, 1.0), (32, 1.0))  # (downsampling factor, log-space noise std)


def coarse_probs(mask: np.ndarray, rng: np.random.Generator, *, factor: int, noise: float) -> torch.Tensor:
    """``(C, H, W)`` probabilities that look like a ``factor``-x downsampled network output."""
    h, w = mask.shape
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[mask]
    small = cv2.resize(onehot, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    soft = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    logits = np.log(0.9 * soft + 0.1 / NUM_CLASSES) + rng.normal(0.0, noise, soft.shape)
    return torch.softmax(torch.from_numpy(logits.astype(np.float32)), 0)


def quality(images: int, size: int, *, factor: int, noise: float) -> dict:
    data = SyntheticShapes(images, image_size=size, seed=1)
    rng = np.random.default_rng(0)
    variants = {
        "coarse input": None,
        "dense_crf defaults": {},
        f"dense_crf sxy_bilateral={size // 8}": {"sxy_bilateral": float(size // 8)},
    }
    clean_name = f"dense_crf defaults + clean_mask(min_size={size * size // 400})"
    names = list(variants) + [clean_name]
    confusion = {name: ConfusionMatrix(NUM_CLASSES) for name in names}
    surface = {name: SurfaceMetrics(NUM_CLASSES) for name in names}
    seconds = []
    for index in range(images):
        image, mask = data.generate(index)
        probs = coarse_probs(mask, rng, factor=factor, noise=noise)
        target = torch.from_numpy(mask)[None]
        for name, kwargs in variants.items():
            if kwargs is None:
                labels = probs.argmax(0)
            else:
                start = time.perf_counter()
                labels = dense_crf(image, probs, **kwargs).argmax(0)
                seconds.append(time.perf_counter() - start)
            confusion[name].update(labels[None], target)
            surface[name].update(labels[None], target)
            if name == "dense_crf defaults":
                cleaned = clean_mask(labels, min_size=size * size // 400)
                confusion[clean_name].update(cleaned[None], target)
                surface[clean_name].update(cleaned[None], target)
    scores = {
        name: {"miou": confusion[name].miou(), "pixel_accuracy": float(confusion[name].pixel_accuracy()),
               "wrong_pixels": int(confusion[name].matrix.sum() - confusion[name].matrix.trace()),
               "boundary_f": surface[name].compute()["mean_boundary_fscore"]}
        for name in names
    }
    return {"downsample": factor, "noise_std": noise, "scores": scores,
            "median_seconds_per_image": statistics.median(seconds)}


def speed(runs: int) -> dict:
    image, _ = SyntheticShapes(1, image_size=512, seed=0).generate(0)
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(21, 512, 512, generator=generator), 0)
    try:
        import pydensecrf.densecrf as pydensecrf  # the C++ reference, optional
    except ImportError:
        pydensecrf = None

    def ours() -> None:
        dense_crf(image, probs, iterations=5)

    def build() -> None:
        CRFKernels(torch.from_numpy(image).permute(2, 0, 1).float(), sxy_gaussian=3.0,
                   sxy_bilateral=80.0, srgb_bilateral=13.0)

    def reference() -> None:
        crf = pydensecrf.DenseCRF2D(512, 512, 21)
        crf.setUnaryEnergy(np.ascontiguousarray(-np.log(probs.numpy().reshape(21, -1))))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image), compat=10)
        crf.inference(5)

    contenders = {"pixelwise dense_crf (5 iterations)": ours, "pixelwise lattice + filters build only": build}
    if pydensecrf is not None:
        contenders["pydensecrf (C++)"] = reference
    for run in contenders.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {
        "workload": "512x512 RGB, 21 classes, 5 mean-field iterations, CPU",
        "seconds": times,
        "median_seconds": {name: statistics.median(values) for name, values in times.items()},
        "pydensecrf": "available" if pydensecrf is not None else
                      "not available (not installed; it needs a compiler and pip, outside pixelwise's dependencies)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs at 512x512")
    parser.add_argument("--images", type=int, default=16, help="synthetic images for the quality part")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic images")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    levels = [quality(args.images, args.size, factor=factor, noise=noise) for factor, noise in LEVELS]
    timing = speed(args.runs)
    result = {
        "benchmark": "dense CRF refinement: quality on coarse synthetic predictions, speed at 512x512",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__},
        "quality": {"images": args.images, "size": args.size, "levels": levels},
        "speed": timing | {"runs": args.runs},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "crf.json").write_text(json.dumps(result, indent=2) + "\n")

    machine = result["machine"]
    lines = [
        "# Dense CRF: quality and speed",
        "",
        (f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['torch_threads']} torch threads; "
         f"torch {torch.__version__}, numpy {np.__version__}, opencv {cv2.__version__}; {result['date']}."),
        "",
        f"## Quality: {args.images} SyntheticShapes images of {args.size} px, coarse input",
        "",
        ("Coarse input = ground truth one-hot, area-downsampled by the factor, upsampled "
         "bilinearly, plus Gaussian noise of the given std on the log-probabilities."),
        "",
        "| downsample, noise | prediction | mIoU | boundary F | pixel accuracy | wrong pixels |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for level in levels:
        for name, value in level["scores"].items():
            lines.append(f"| {level['downsample']}x, {level['noise_std']} | {name} | {value['miou']:.4f} | "
                         f"{value['boundary_f']:.4f} | {value['pixel_accuracy']:.4f} | {value['wrong_pixels']} |")
    lines += [
        "",
        (f"Median CRF time per {args.size} px image (5 classes): "
         f"{1e3 * statistics.median(level['median_seconds_per_image'] for level in levels):.0f} ms."),
        "",
        f"## Speed: {timing['workload']}; median of {args.runs} interleaved runs",
        "",
        "| contender | median s | min s |",
        "|---|---:|---:|",
    ]
    for name, values in timing["seconds"].items():
        lines.append(f"| {name} | {timing['median_seconds'][name]:.2f} | {min(values):.2f} |")
    lines += ["", f"pydensecrf: {timing['pydensecrf']}.", ""]
    (RESULTS / "crf.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
