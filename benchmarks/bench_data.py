"""Data pipeline speed: augmentation pairs/s, DataLoader vs training step, dataset checker pools.

1. Augmentation, one process: 512x512 image + mask in, 256x256 normalised tensors out.
   pixelwise presets (scale, crop, flip, rotation and elastic fused into one resampling)
   against the same recipe built from albumentations' own steps, once with pixelwise's
   previous ``GridElastic`` and once with ``albumentations.ElasticTransform``. Every
   contender goes through the same ``SegTransform`` (normalise, CHW tensors). Runs are
   interleaved; medians are reported. Also: the elastic step alone at 256x256, and OpenCV
   with 1 thread vs its default.
2. DataLoader (folder of 512x512 JPEG/PNG pairs, ``unet`` preset, batch 8 at 256x256)
   with 0, 1, 2 workers, against the training step of a small U-Net (base 16 channels,
   bf16 autocast) on the CPU: does loading keep ahead of training?
3. ``pixelwise check`` on that folder: serial vs thread pool vs process pool.

    PYTHONPATH=src python benchmarks/bench_data.py [--runs 7] [--pairs 100] [--device cuda]

Part 2's training step uses bf16 autocast where the CPU has native bf16 kernels and fp32
elsewhere (emulated bf16 is tens of times slower, no user would train that way).
``--device cuda`` moves it to the GPU (batches copied from pinned memory, fp16 autocast
with loss scaling, steps timed with CUDA events): the question then
is whether the loader keeps ahead of a much faster consumer. Parts 1 and 3 are CPU work
whatever the device. Writes ``benchmarks/results/data.json`` and ``data.md``
(``data_cuda.*`` on a GPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

from common import (
    add_device_args,
    amp_dtype,
    autocast,
    describe,
    dtype_name,
    interleave,
    machine,
    native_low_precision,
    now,
    resolve_device,
    save,
    timed,
)
from pixelwise.data.transforms import AffineElasticCrop, GridElastic, PhotometricJitter, SegTransform, build_transform

MEAN, STD, IGNORE, CROP = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 255, 256


def sample_pairs(n: int, size: int = 512) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic-shapes pairs at ``size``: textured images, 5-class masks."""
    from pixelwise.data.synthetic import SyntheticShapes

    ds = SyntheticShapes(n, image_size=size, seed=0)
    return [ds.generate(i) for i in range(n)]


def chain(elastic: str, seed: int) -> SegTransform:
    """pixelwise's previous ``unet`` recipe as separate albumentations steps (scale the whole
    image, pad, crop, flip, rotate, elastic, jitter), with the given elastic step."""
    steps = [
        A.RandomScale(scale_limit=(-0.5, 1.0), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                      p=1.0),
        A.PadIfNeeded(min_height=CROP, min_width=CROP, position="random", border_mode=cv2.BORDER_CONSTANT, fill=0,
                      fill_mask=IGNORE),
        A.RandomCrop(height=CROP, width=CROP),
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=15, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE, p=0.5),
    ]
    if elastic == "grid":
        steps.append(GridElastic(grid=3, magnitude=0.02, fill_mask=IGNORE, p=0.5))
    else:  # albumentations' own: Gaussian-smoothed per-pixel random field (Simard et al. 2003)
        steps.append(A.ElasticTransform(alpha=1.0, sigma=50.0, interpolation=cv2.INTER_LINEAR,
                                        mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                                        fill=0, fill_mask=IGNORE, p=0.5))
    steps += [PhotometricJitter(p=0.8), A.Normalize(mean=MEAN, std=STD)]
    return SegTransform(A.Compose(steps, seed=seed), ignore_index=IGNORE)


def fused(elastic_p: float, seed: int) -> SegTransform:
    """The ``unet`` preset's steps with a chosen elastic probability."""
    steps = [AffineElasticCrop(size=CROP, elastic_p=elastic_p, fill_mask=IGNORE), PhotometricJitter(p=0.8),
             A.Normalize(mean=MEAN, std=STD)]
    return SegTransform(A.Compose(steps, seed=seed), ignore_index=IGNORE)


def time_pairs(transform, pairs, n: int) -> tuple[float, float]:
    """``(pairs per wall-clock second, pairs per CPU second of this process)`` over ``n``
    calls cycling through ``pairs``. On a shared machine the CPU-time rate is the steadier
    one: it leaves out the time other processes held the cores."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        image, mask = pairs[i % len(pairs)]
        transform(image, mask)
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def bench_augment(runs: int, n: int) -> dict:
    pairs = [(img, mask) for img, mask in sample_pairs(4)]
    contenders = {
        "pixelwise unet preset (fused warp, elastic p=0.5)": build_transform(
            "unet", train=True, crop_size=CROP, mean=MEAN, std=STD, seed=0),
        "pixelwise standard preset (fused warp, no elastic)": build_transform(
            "standard", train=True, crop_size=CROP, mean=MEAN, std=STD, seed=0),
        "pixelwise fused warp, elastic p=1": fused(1.0, seed=0),
        "albumentations chain + GridElastic p=0.5 (previous preset)": chain("grid", seed=0),
        "albumentations chain + A.ElasticTransform p=0.5": chain("albumentations", seed=0),
    }
    speeds = interleave(contenders, runs, lambda t: time_pairs(t, pairs, n))
    # OpenCV's own thread pool on these small images: default vs 1 thread.
    default_threads = cv2.getNumThreads()
    preset = contenders["pixelwise unet preset (fused warp, elastic p=0.5)"]
    threads: dict[str, list] = {f"cv2 {default_threads} threads (default)": [], "cv2 1 thread": []}
    for _ in range(runs):
        for name, count in ((f"cv2 {default_threads} threads (default)", default_threads), ("cv2 1 thread", 1)):
            cv2.setNumThreads(count)
            threads[name].append(time_pairs(preset, pairs, n))
    cv2.setNumThreads(default_threads)
    # The elastic step alone on a 256x256 pair.
    small = [(cv2.resize(i, (CROP, CROP)), cv2.resize(m.astype(np.uint8), (CROP, CROP),
                                                      interpolation=cv2.INTER_NEAREST)) for i, m in pairs]
    elastic = {
        "AffineElasticCrop (elastic only, one remap)": A.Compose([AffineElasticCrop(
            size=CROP, scale=(1, 1), hflip_p=0, rotate_p=0, elastic_p=1.0)], seed=0),
        "GridElastic (previous)": A.Compose([GridElastic(p=1.0)], seed=0),
        "albumentations ElasticTransform (alpha=1, sigma=50)": A.Compose([A.ElasticTransform(
            alpha=1.0, sigma=50.0, mask_interpolation=cv2.INTER_NEAREST, p=1.0)], seed=0),
    }

    def run_elastic(compose) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            image, mask = small[i % len(small)]
            compose(image=image, mask=mask)
        return n / (time.perf_counter() - start), n / (time.process_time() - cpu)

    elastic_speeds = interleave(elastic, runs, run_elastic)
    return {"pairs_per_s": speeds, "cv2_threads": threads, "elastic_only_pairs_per_s": elastic_speeds}


def write_folder(root: Path, n: int) -> None:
    """``n`` 512x512 JPEG images (quality 90) and PNG masks in ``root/train``."""
    from pixelwise.data.io import write_mask

    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(sample_pairs(n)):
        cv2.imwrite(str(root / "train" / "images" / f"{i:04d}.jpg"), image[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        write_mask(root / "train" / "masks" / f"{i:04d}.png", mask)


def bench_loader(root: Path, steps: int, device: torch.device, dtype: torch.dtype) -> dict:
    import functools

    from torch.utils.data import DataLoader

    from pixelwise.config import DataCfg
    from pixelwise.data import build_dataset, pad_collate
    from pixelwise.data.transforms import EpochSeeded
    from pixelwise.models import create_model

    cfg = DataCfg(dataset="folder", root=str(root), num_classes=5, crop_size=CROP, augment="unet")
    dataset = EpochSeeded(build_dataset(cfg, "train", train=True))
    collate = functools.partial(pad_collate, ignore_index=IGNORE)
    torch.manual_seed(0)
    model = create_model("unet", num_classes=5, base_channels=16, depth=4).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    cuda = device.type == "cuda"

    def step(batch) -> None:
        image = batch["image"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        with autocast(device, dtype):
            loss = loss_fn(model(image).float(), mask)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    fixed = collate([dataset[i] for i in range(8)])
    step(fixed)  # warm-up
    compute = [timed(step, fixed, device=device)[0] for _ in range(steps)]
    out = {"train_step_s": compute, "loader": {}}
    for workers in (0, 1, 2):
        loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=workers, collate_fn=collate,
                            drop_last=True, generator=torch.Generator().manual_seed(0), pin_memory=cuda)
        load_only, start = [], time.perf_counter()
        iterator = iter(loader)
        next(iterator)  # includes worker start-up
        startup = time.perf_counter() - start
        for _ in range(steps):
            tic = time.perf_counter()
            next(iterator)
            load_only.append(time.perf_counter() - tic)
        del iterator
        trained, iterator = [], iter(loader)
        next(iterator)
        for _ in range(steps):
            tic = time.perf_counter()
            step(next(iterator))
            if cuda:
                torch.cuda.synchronize(device)
            trained.append(time.perf_counter() - tic)
        del iterator
        out["loader"][str(workers)] = {"startup_s": startup, "batch_s": load_only, "train_with_loading_s": trained}
    return out


def bench_check(root: Path, runs: int) -> dict:
    """Seconds to check the folder: serially, with 2 threads (what ``check_dataset`` does),
    and with a 2-process pool (spawned, start-up included) mapping the same per-pair work."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pixelwise.config import DataCfg
    from pixelwise.data.check import check_dataset, inspect_pair, scan_folder

    cfg = DataCfg(dataset="folder", root=str(root), num_classes=5)
    pairs = [(str(i), str(m)) for i, m in scan_folder(root / "train")[0]]

    def processes() -> None:
        # spawn: forking after OpenCV/torch threads ran hung this benchmark once.
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(inspect_pair, *zip(*pairs), [5] * len(pairs), [IGNORE] * len(pairs),
                          chunksize=max(1, len(pairs) // 16)))

    setups = {"serial": lambda: check_dataset(cfg, splits=["train"], workers=0),
              "2 threads": lambda: check_dataset(cfg, splits=["train"], workers=2),
              "2 processes (spawn, start-up included)": processes}

    def run(fn) -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - start, time.process_time() - cpu

    return interleave(setups, runs, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--pairs", type=int, default=100, help="pairs per timed augmentation run")
    parser.add_argument("--images", type=int, default=32, help="512x512 pairs in the on-disk folder")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per DataLoader setting")
    add_device_args(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = amp_dtype(device, args.amp_dtype)
    dtype = dtype if native_low_precision(device, dtype) else torch.float32
    if args.images < 8 * (args.steps + 1):
        parser.error(f"--images must be at least 8 * (--steps + 1) = {8 * (args.steps + 1)} for the DataLoader runs")
    load_before = os.getloadavg()
    augment = bench_augment(args.runs, args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), args.images)
        check = bench_check(Path(tmp), max(3, args.runs // 2))
        loader = bench_loader(Path(tmp), args.steps, device, dtype)
    med = statistics.median
    result = {
        "benchmark": "augmentation 512x512 -> 256x256 (one process), DataLoader vs U-Net step, checker pools",
        "date": now(), "device": str(device), "train_step_amp": dtype_name(dtype),
        "machine": machine(device) | {"cv2_threads": cv2.getNumThreads()},
        "versions": {"torch": torch.__version__, "albumentations": A.__version__, "opencv": cv2.__version__,
                     "numpy": np.__version__},
        "runs": args.runs, "pairs_per_run": args.pairs, "augment": augment, "loader": loader, "check_s": check,
        "target_pairs_per_s": 500, "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
    }

    def wall(values: list) -> float:
        return med(v[0] for v in values)

    def cpu(values: list) -> float:
        return med(v[1] for v in values)

    speeds = augment["pairs_per_s"]
    base = wall(speeds["pixelwise unet preset (fused warp, elastic p=0.5)"])
    load = result["load_average_1_5_15"]
    lines = ["# Data pipeline: augmentation, loading vs training, checker", "",
             f"{describe(result['machine'])}; torch {torch.__version__}, "
             f"albumentations {A.__version__}, OpenCV {cv2.__version__}; {result['date']}. "
             f"Medians of {args.runs} interleaved runs of {args.pairs} pairs. Shared machine: 1-minute load "
             f"average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after (2 cores). 'per CPU-s' divides "
             f"by this process's CPU time, which leaves out the time other processes held the cores.", "",
             "## Augmentation, one process: 512x512 in, 256x256 normalised tensors out (target >= 500 pairs/s)", "",
             "| pipeline | median pairs/s (wall) | min | max | pairs per CPU-s | vs unet preset (wall) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, values in speeds.items():
        walls = [v[0] for v in values]
        lines.append(f"| {name} | {wall(values):.0f} | {min(walls):.0f} | {max(walls):.0f} | {cpu(values):.0f} | "
                     f"{wall(values) / base:.2f}x |")
    lines += ["", "| unet preset, OpenCV threads | median pairs/s (wall) | pairs per CPU-s |", "|---|---:|---:|"]
    lines += [f"| {name} | {wall(v):.0f} | {cpu(v):.0f} |" for name, v in augment["cv2_threads"].items()]
    lines += ["", "## Elastic deformation alone, 256x256 pair", "",
              "| transform | median pairs/s (wall) | pairs per CPU-s |", "|---|---:|---:|"]
    lines += [f"| {name} | {wall(v):.0f} | {cpu(v):.0f} |" for name, v in augment["elastic_only_pairs_per_s"].items()]
    step_s = med(loader["train_step_s"])
    lines += ["", f"## DataLoader ({args.images} JPEG/PNG pairs 512x512 on disk, unet preset, batch 8 at 256x256) "
              f"vs U-Net(base 16) {dtype_name(dtype)} training step on {device}", "",
              f"Training step on a fixed batch: median {step_s:.3f} s.", "",
              "| workers | start-up s | load one batch s | batches/s | train step with loading s | loading overhead |",
              "|---:|---:|---:|---:|---:|---:|"]
    for workers, info in loader["loader"].items():
        batch, trained = med(info["batch_s"]), med(info["train_with_loading_s"])
        lines.append(f"| {workers} | {info['startup_s']:.2f} | {batch:.3f} | {1 / batch:.1f} | {trained:.3f} | "
                     f"{100 * (trained / step_s - 1):+.0f} % |")
    lines += ["", f"## pixelwise check on {args.images} pairs", "", "| readers | median s | pairs/s |",
              "|---|---:|---:|"]
    lines += [f"| {name} | {wall(v):.3f} | {args.images / wall(v):.0f} |" for name, v in check.items()]
    save("data" if device.type == "cpu" else "data_cuda", result, lines)


if __name__ == "__main__":
    main()
