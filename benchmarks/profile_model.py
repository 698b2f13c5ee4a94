"""Where the time goes: ``torch.profiler`` over one zoo model's forward or training step.

The benchmarks say how fast a contender is; this says why. It runs one model of ``zoo.py``
(pixelwise or its peer, fp32, NCHW or channels_last) for a few steps under the profiler
and tabulates self time by operator, so e.g. the cost of layout reorders around oneDNN
convolutions, of batch norm or of the optimizer shows up as its own row.

    PYTHONPATH=src python benchmarks/profile_model.py --model unet_resnet34 --mode train
        [--library pixelwise|peer] [--channels-last] [--batch 4 --size 256] [--steps 2] [--device cuda]

Writes ``benchmarks/results/profile_<model>_<mode>_<library>[_cl].md`` (and ``.json``).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from common import add_device_args, describe, machine, now, resolve_device, save, synchronize
from zoo import ZOO, build_peer, build_pixelwise

CLASSES = 21


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet_resnet34", choices=list(ZOO))
    parser.add_argument("--mode", choices=["infer", "train"], default="train")
    parser.add_argument("--library", choices=["pixelwise", "peer"], default="pixelwise")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after one warm-up step)")
    parser.add_argument("--top", type=int, default=15, help="rows in the table")
    add_device_args(parser, amp=False)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    build = build_pixelwise if args.library == "pixelwise" else build_peer
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build(args.model, CLASSES).to(device, memory_format=fmt).train(args.mode == "train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    target = torch.randint(0, CLASSES, (args.batch, args.size, args.size), device=device)

    def step() -> None:
        if args.mode == "infer":
            with torch.no_grad():
                model(x)
            return
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = [{"op": e.key, "calls": e.count, "self_ms_per_step": getattr(e, key) / 1e3 / args.steps,
             "share": getattr(e, key) / total} for e in events[:args.top]]
    who = ZOO[args.model].title + (" (pixelwise)" if args.library == "pixelwise" else f" ({ZOO[args.model].peer})")
    result = {"benchmark": f"torch.profiler, {who}, {args.mode}, {args.batch}x3x{args.size}x{args.size}, fp32, "
                           f"{'channels_last' if args.channels_last else 'NCHW'}, {device.type}",
              "date": now(), "machine": machine(device), "versions": {"torch": torch.__version__},
              "steps": args.steps, "total_self_ms_per_step": total / 1e3 / args.steps, "rows": rows}
    lines = [f"# Profile: {result['benchmark']}", "", f"{describe(result['machine'])}; torch {torch.__version__}; "
             f"{result['date']}; {args.steps} profiled steps after one warm-up; self time per step "
             f"{result['total_self_ms_per_step']:.0f} ms in all.", "",
             "| op | calls | self ms / step | share |", "|---|---:|---:|---:|"]
    lines += [f"| `{r['op']}` | {r['calls']} | {r['self_ms_per_step']:.1f} | {100 * r['share']:.1f}% |" for r in rows]
    stem = f"profile_{args.model}_{args.mode}_{args.library}" + ("_cl" if args.channels_last else "")
    save(stem if device.type == "cpu" else stem + "_cuda", result, lines)


if __name__ == "__main__":
    main()
