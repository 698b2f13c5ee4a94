"""Sliding-window inference: peak memory and time of a huge image, tiled vs whole-image forward.

Model: ``create_model("unet", encoder="resnet34", num_classes=2)`` (random weights: no
download), loaded through ``Segmenter.from_pretrained`` like a user would. Every measurement
runs in a fresh child process, so its peak RSS (``VmHWM``) is its own. Three parts:

1. An 8192×8192 RGB image segmented with tiles (default 1024, overlap 0.25, bf16 autocast,
   channels_last): wall time and peak RSS (the goal is under 4 GB).
2. The peer, a whole-image forward, at 1024² and 2048² (interleaved with the tiled run at the
   same size): time and peak RSS; the whole-image peak is extrapolated linearly in pixels to
   8192², since running it would need tens of GB (the extrapolation is stated as such).
3. A 512×512 input: fp32 vs bf16 vs channels_last vs both, interleaved repeats, medians,
   speed-up over fp32 and argmax agreement with fp32.

    PYTHONPATH=src python benchmarks/bench_sliding_window.py [--size 8192 --tile 1024 --repeats 5] [--device cuda]

"bf16" above is the autocast dtype where the device has native kernels for it (``--amp-dtype``;
fp16 by default on CUDA); on a CPU without native bf16 the runs are fp32 + channels_last and
part 3 has only the fp32 rows. With ``--device cuda`` the model runs on the GPU and each child
also reports ``torch.cuda.max_memory_allocated``. Writes ``benchmarks/results/sliding_window.json``
and ``sliding_window.md`` (``sliding_window_cuda.*`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    RESULTS,
    add_device_args,
    amp_dtype,
    dtype_name,
    machine,
    native_low_precision,
    now,
    peak_rss_mib,
    resolve_device,
    synchronize,
)

MODEL = {"name": "unet", "encoder": "resnet34", "num_classes": 2}


def balanced_model(seed: int = 0):
    """The benchmark model with its head shifted and scaled so that both classes occur about
    equally and the logit margin has a standard deviation of 3 on noise images. A random
    network otherwise predicts one class everywhere with probabilities near 0.5, so every
    argmax would agree and no probability would be confident, unlike a trained model's."""
    import numpy as np
    import torch

    from pixelwise import create_model

    torch.manual_seed(seed)
    model = create_model(**MODEL).eval()
    image = torch.from_numpy(np.random.default_rng(3).random((1, 3, 256, 256), dtype=np.float32))
    with torch.no_grad():
        logits = model((image - 0.45) / 0.225)
        margin = logits[:, 1] - logits[:, 0]
        head = model.head[1]
        head.bias[1] -= margin.median()
        scale = 3.0 / margin.std()
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return model


def child(spec: dict) -> dict:
    """One measurement in this (fresh) process; returns times and memory in MiB."""
    import numpy as np
    import psutil
    import torch

    from pixelwise import Segmenter

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    seg = Segmenter.from_pretrained(spec["model_dir"], amp=spec["amp"], channels_last=spec["channels_last"],
                                    device=spec["device"])
    size = spec["size"]
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    # oneDNN builds its kernels per input shape on first use; warm up with the shapes the timed
    # call will use (the whole image, or a batch of full tiles) so that is not timed.
    warm_size = size if spec["tile"] is None else spec["tile"] * spec["batch_size"]
    warm = np.random.default_rng(1).integers(0, 256, (spec["tile"] or size, warm_size, 3), dtype=np.uint8)
    seg(warm, tile=spec["tile"], overlap=0.0, batch_size=spec["batch_size"])
    del warm
    baseline = psutil.Process().memory_info().rss / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = seg(image, tile=spec["tile"], overlap=spec["overlap"], batch_size=spec["batch_size"])
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    labels = result.labels
    out = {"seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": baseline,
           "class_fraction": float((labels == 1).mean())}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if spec.get("save_labels"):
        np.save(spec["save_labels"], labels.astype(np.uint8))
    return out


def run_child(spec: dict, timeout: float) -> dict:
    """Run :func:`child` in a new interpreter and parse its JSON line."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def precision_table(model_dir: str, repeats: int, threads: int, device: str, amp: str | None) -> dict:
    """Part 3 in this process: 512² forward in fp32 / ``amp`` autocast, NCHW / channels_last, interleaved."""
    import numpy as np
    import torch

    from pixelwise import Segmenter

    torch.set_num_threads(threads)
    image = np.random.default_rng(2).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    settings = {"fp32": ("none", False), "fp32 channels_last": ("none", True)}
    if amp:
        settings |= {amp: (amp, False), f"{amp} channels_last": (amp, True)}
    segs = {k: Segmenter.from_pretrained(model_dir, amp=a, channels_last=c, device=device)
            for k, (a, c) in settings.items()}
    reference = segs["fp32"](image, return_probs=True)
    agreement, confident_agreement, max_prob_diff = {}, {}, {}
    confident = reference.probs.max(0) > 0.6
    for name, seg in segs.items():
        res = seg(image, return_probs=True)  # also the warm-up
        agreement[name] = float((res.labels == reference.labels).mean())
        confident_agreement[name] = float((res.labels == reference.labels)[confident].mean())
        max_prob_diff[name] = float(np.abs(res.probs - reference.probs).max())
    times: dict[str, list[float]] = {k: [] for k in segs}
    for _ in range(repeats):
        for name, seg in segs.items():
            start = time.perf_counter()
            seg(image)
            synchronize(torch.device(device))
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "median_seconds": medians,
            "speedup_vs_fp32": {k: medians["fp32"] / v for k, v in medians.items()},
            "argmax_agreement_vs_fp32": agreement, "confident_agreement_vs_fp32": confident_agreement,
            "confident_fraction": float(confident.mean()), "max_abs_prob_diff_vs_fp32": max_prob_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=8192, help="side of the huge image (default 8192)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=2, help="tiles per forward pass")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the small comparisons")
    parser.add_argument("--peer-sizes", default="1024,2048", help="sizes of the whole-image vs tiled comparison")
    parser.add_argument("--threads", type=int, default=torch_threads_default())
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed for the huge-image child")
    add_device_args(parser)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    device = resolve_device(args.device)
    dtype = amp_dtype(device, args.amp_dtype)
    amp = dtype_name(dtype) if native_low_precision(device, dtype) else None
    fast = f"{amp} + channels_last" if amp else "fp32 + channels_last"

    import numpy as np
    import torch
    import torchvision

    from pixelwise.hub import save_model

    tmp = tempfile.TemporaryDirectory()
    model_dir = str(Path(tmp.name) / "unet_resnet34")
    save_model(balanced_model(), model_dir,
               {"data": {"num_classes": 2, "class_names": ["background", "object"], "ignore_index": 255,
                         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})
    base = {"model_dir": model_dir, "threads": args.threads, "overlap": args.overlap, "batch_size": args.batch_size,
            "device": str(device), "amp": amp or "none", "channels_last": True}
    # Results are written after every part, so a run cut short still leaves what it measured.
    result: dict = {
        "benchmark": f"sliding-window inference, U-Net/ResNet-34 (2 classes, random weights, head "
                     f"shifted/scaled so both classes occur with logit margin std 3), {device.type}, "
                     f"{args.threads} threads",
        "date": now(), "device": str(device), "fast_setting": fast,
        "machine": machine(device, args.threads),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__},
        "settings": {"size": args.size, "tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size,
                     "repeats": args.repeats, "model": MODEL},
    }

    print("part 3: 512x512 precision / layout table", flush=True)
    result["precision_512"] = precision = precision_table(model_dir, args.repeats, args.threads, str(device), amp)
    for k, v in precision["median_seconds"].items():
        print(f"  {k:20s} median {v:.3f} s  x{precision['speedup_vs_fp32'][k]:.2f}  "
              f"argmax agreement {precision['argmax_agreement_vs_fp32'][k]:.5f}")
    save(result)

    print(f"part 1: {args.size}x{args.size} tiled, tile {args.tile}, {fast}", flush=True)
    big = run_child({**base, "size": args.size, "tile": args.tile}, timeout=args.timeout)
    result["huge_image"] = {**big, "under_4_gib": big["peak_rss_mib"] < 4096}
    print(f"  {big['seconds']:.1f} s, peak RSS {big['peak_rss_mib']:.0f} MiB", flush=True)
    save(result)

    print("part 2: whole-image forward (peer) vs tiled, interleaved", flush=True)
    result["whole_vs_tiled"] = peer = {}
    for size in [int(s) for s in args.peer_sizes.split(",")]:
        runs: dict[str, list[dict]] = {f"whole {amp or 'fp32'}": [], f"tiled {args.tile // 2} {amp or 'fp32'}": []}
        for _ in range(max(1, args.repeats // 2)):
            for name, measured in runs.items():
                tile = None if name.startswith("whole") else args.tile // 2
                measured.append(run_child({**base, "size": size, "tile": tile}, timeout=args.timeout))
        peer[str(size)] = {name: {"median_seconds": statistics.median(r["seconds"] for r in rs),
                                  "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
                                  "rss_before_mib": statistics.median(r["rss_before_mib"] for r in rs), "runs": rs}
                           for name, rs in runs.items()}
        for name, r in peer[str(size)].items():
            print(f"  {size}^2 {name:16s} median {r['median_seconds']:.2f} s, peak RSS "
                  f"{r['median_peak_rss_mib']:.0f} MiB", flush=True)
        save(result)
    largest = max(int(s) for s in peer)
    whole = peer[str(largest)][f"whole {amp or 'fp32'}"]
    # Peak minus the process's resting RSS grows with the pixel count; scale it by pixels from the
    # largest measured size (activations are per pixel; weights and libraries are in the baseline).
    per_pixel = (whole["median_peak_rss_mib"] - whole["rss_before_mib"]) / largest**2
    result["huge_image"]["whole_image_peak_rss_estimate_mib"] = whole["rss_before_mib"] + per_pixel * args.size**2
    result["huge_image"]["estimate_method"] = f"linear in pixels from the {largest}^2 whole-image run"
    print(f"  whole-image forward at {args.size}^2 estimated "
          f"{result['huge_image']['whole_image_peak_rss_estimate_mib'] / 1024:.1f} GiB peak RSS")
    save(result)
    print(f"wrote the results to {RESULTS}")


def save(result: dict) -> None:
    """Write the JSON and Markdown results (whatever parts exist so far)."""
    stem = "sliding_window" if result["device"] == "cpu" else "sliding_window_cuda"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(result))


def torch_threads_default() -> int:
    return min(4, os.cpu_count() or 1)


def markdown(r: dict) -> str:
    """The results as a Markdown page (parts not measured yet are left out)."""
    s, m = r["settings"], r["machine"]
    lines = [
        "# Sliding-window inference", "",
        (f"{r['benchmark']}. {r['date']}; {m['cpu']} ({m['logical_cpus']} logical CPUs, shared with other "
         f"jobs), torch {r['versions']['torch']}, torchvision {r['versions']['torchvision']}, "
         f"numpy {r['versions']['numpy']}, Python {m['python']}."), "",
    ]
    big = r.get("huge_image")
    if big:
        lines += [(f"## {s['size']}×{s['size']} image, tile {s['tile']}, overlap {s['overlap']}, "
                   f"{s['batch_size']} tiles per batch, {r.get('fast_setting', 'bf16 + channels_last')}"), "",
                  "| measure | value |", "|---|---|",
                  f"| wall time | {big['seconds']:.1f} s |",
                  f"| peak RSS (whole process) | {big['peak_rss_mib']:.0f} MiB |",
                  f"| RSS before the call (model, image, libraries) | {big['rss_before_mib']:.0f} MiB |"]
        if "whole_image_peak_rss_estimate_mib" in big:
            lines.append(f"| whole-image forward, estimated peak RSS | {big['whole_image_peak_rss_estimate_mib']:.0f} "
                         f"MiB ({big['estimate_method']}) |")
        lines.append("")
    if r.get("whole_vs_tiled"):
        lines += ["## Whole-image forward (peer) vs tiled, measured (medians)", "",
                  "| size | run | seconds | peak RSS MiB |", "|---|---|---|---|"]
        for size, runs in r["whole_vs_tiled"].items():
            for name, v in runs.items():
                lines.append(f"| {size}² | {name} | {v['median_seconds']:.2f} | {v['median_peak_rss_mib']:.0f} |")
        lines.append("")
    p = r.get("precision_512")
    if p:
        lines += [f"## 512×512, {s['repeats']} interleaved repeats (medians)", "",
                  ("| setting | seconds | speed-up vs fp32 | argmax agreement vs fp32 | agreement where fp32 "
                   "max prob > 0.6 | max prob diff |"), "|---|---|---|---|---|---|"]
        for k, v in p["median_seconds"].items():
            lines.append(f"| {k} | {v:.3f} | {p['speedup_vs_fp32'][k]:.2f} | "
                         f"{p['argmax_agreement_vs_fp32'][k]:.5f} | {p['confident_agreement_vs_fp32'][k]:.5f} | "
                         f"{p['max_abs_prob_diff_vs_fp32'][k]:.4f} |")
        lines += ["", (f"The weights are random (nothing is downloaded); the head is shifted and scaled so "
                       f"both classes occur and logit margins look like a trained model's. "
                       f"{p['confident_fraction']:.1%} of the pixels have an fp32 max probability above 0.6.")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
