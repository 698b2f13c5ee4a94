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
probabilities, 5 mean-field iterations, on ``--device`` (default the CPU; on CUDA the
probabilities and the CRF live on the GPU and runs are timed with CUDA events); median of
``--runs`` runs, with the lattice
construction timed on its own. ``pydensecrf`` (the C++ reference) is timed in the same
loop, interleaved, only if it is importable; it is not a dependency of pixelwise and is
reported as not available otherwise.

    PYTHONPATH=src python benchmarks/bench_crf.py [--runs 5] [--images 16] [--size 256] [--device cuda]

Writes ``benchmarks/results/crf.json`` and ``benchmarks/results/crf.md`` (``crf_cuda.*`` on a GPU).
"""

from __future__ import annotations

import argparse
import statistics

import cv2
import numpy as np
import torch

from common import add_device_args, describe, interleave, machine, now, resolve_device, save, timed
from pixelwise.data import SyntheticShapes
from pixelwise.metrics import ConfusionMatrix, SurfaceMetrics
from pixelwise.postprocess import CRFKernels, clean_mask, dense_crf

NUM_CLASSES = 5  # SyntheticShapes


LEVELS = ((8, 0.6), (16, 1.0), (32, 1.0))  # (downsampling factor, log-space noise std)


def coarse_probs(mask: np.ndarray, rng: np.random.Generator, *, factor: int, noise: float) -> torch.Tensor:
    """``(C, H, W)`` probabilities that look like a ``factor``-x downsampled network output."""
    h, w = mask.shape
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[mask]
    small = cv2.resize(onehot, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    soft = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    logits = np.log(0.9 * soft + 0.1 / NUM_CLASSES) + rng.normal(0.0, noise, soft.shape)
    return torch.softmax(torch.from_numpy(logits.astype(np.float32)), 0)


def quality(images: int, size: int, *, factor: int, noise: float, device: torch.device) -> dict:
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
                took, refined = timed(lambda: dense_crf(image, probs.to(device), **kwargs), device=device)
                labels = refined.argmax(0).cpu()
                seconds.append(took)
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


def speed(runs: int, device: torch.device) -> dict:
    image, _ = SyntheticShapes(1, image_size=512, seed=0).generate(0)
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(21, 512, 512, generator=generator), 0)
    probs_on_device = probs.to(device)
    try:
        import pydensecrf.densecrf as pydensecrf  # the C++ reference, optional
    except ImportError:
        pydensecrf = None

    def ours() -> None:
        dense_crf(image, probs_on_device, iterations=5)

    def build() -> None:
        CRFKernels(torch.from_numpy(image).permute(2, 0, 1).float().to(device), sxy_gaussian=3.0,
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
    # One warm-up round, then interleaved timed rounds; pydensecrf runs on the CPU whatever the device.
    times = interleave(contenders, runs, lambda run: timed(run, device=device)[0])
    return {
        "workload": f"512x512 RGB, 21 classes, 5 mean-field iterations, {device.type}",
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
    add_device_args(parser, amp=False)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    levels = [quality(args.images, args.size, factor=factor, noise=noise, device=device)
              for factor, noise in LEVELS]
    timing = speed(args.runs, device)
    result = {
        "benchmark": f"dense CRF refinement: quality on coarse synthetic predictions, speed at 512x512, {device.type}",
        "date": now(),
        "machine": machine(device, args.threads),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__},
        "quality": {"images": args.images, "size": args.size, "levels": levels},
        "speed": timing | {"runs": args.runs},
    }
    lines = [
        "# Dense CRF: quality and speed",
        "",
        (f"{describe(result['machine'])}; torch {torch.__version__}, numpy {np.__version__}, "
         f"opencv {cv2.__version__}; {result['date']}."),
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
    lines += ["", f"pydensecrf: {timing['pydensecrf']}."]
    save("crf" if device.type == "cpu" else "crf_cuda", result, lines)


if __name__ == "__main__":
    main()
