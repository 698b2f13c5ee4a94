#!/usr/bin/env python3
"""What pixelwise's bf16 convolution guard (``pixelwise/bf16_guard.py``) costs a training step.

The guard runs the convolutions of the known oneDNN bf16 backward bugs in fp32 and leaves
every other convolution alone. This measures a full bf16 training step (forward, backward,
AdamW) with and without it, interleaved round by round so that machine noise hits both:

- ``overhead``: a model none of whose convolutions the rule selects (FCN-8s with 21 classes,
  U-Net/ResNet-34), with both rules switched on: what the per-layer check alone costs.
- ``fp32 layers, 1 thread``: FCN-8s on a two-class set, whose score layers (4096 -> 2) are in
  the AMX class. On one thread the unguarded kernel does not crash, so guarded and unguarded
  can be timed side by side: what running those layers in fp32 costs.
- ``vs nearest safe shape``: on the threads the machine has, guarded FCN-8s with 2 classes
  against unguarded FCN-8s with 16 classes (the nearest output width that does not crash).

Run: ``python benchmarks/bench_bf16_guard.py [--rounds 7] [--size 64x192]``; writes
``results/bf16_guard.{json,md}``. Meaningful only on a CPU with native bf16 (AVX512-BF16/AMX):
elsewhere bf16 is emulated and the guard does nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from pixelwise import create_model  # noqa: E402
from pixelwise.bf16_guard import GuardRule, guard_convs, guard_rule  # noqa: E402

BOTH = GuardRule(padding_taps=True, wide_to_narrow=True)


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        optimizer.step()

    return step


def pair(name: str, builder, classes_a: int, classes_b: int, rule_a: GuardRule | None, rule_b: GuardRule | None,
         size: tuple[int, int], rounds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    contenders = {}
    for label, classes, rule in (("a", classes_a, rule_a), ("b", classes_b, rule_b)):
        model = builder(classes)
        model.train()
        if rule is not None:
            guard_convs(model, rule)
        y = torch.randint(0, classes, (2, *size))
        contenders[label] = step_fn(model, x, y)
    times = common.interleave(contenders, rounds, lambda fn: common.timed(fn)[0], warmup=1)
    a, b = common.median(times["a"]), common.median(times["b"])
    return {"case": name, "threads": threads, "size": list(size), "median_s_a": a, "median_s_b": b,
            "ratio_a_over_b": a / b, "times_a": times["a"], "times_b": times["b"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", default="64x192")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    threads = torch.get_num_threads()
    detected = guard_rule()

    def fcn8s(classes):
        return create_model("fcn8s", num_classes=classes)

    def unet(classes):
        return create_model("unet", encoder="resnet34", encoder_weights=None, num_classes=classes)

    rows = [
        ("overhead: FCN-8s/VGG16 21 classes, guarded vs not", pair("overhead fcn8s", fcn8s, 21, 21, BOTH, None,
                                                                    size, args.rounds, threads)),
        ("overhead: U-Net/ResNet-34 21 classes, guarded vs not", pair("overhead unet", unet, 21, 21, BOTH, None,
                                                                      size, args.rounds, threads)),
        ("fp32 layers, 1 thread: FCN-8s 2 classes, guarded vs not",
         pair("fp32 layers 1 thread", fcn8s, 2, 2, BOTH, None, size, args.rounds, 1)),
        (f"vs nearest safe shape, {threads} threads: FCN-8s 2 classes guarded vs 16 classes unguarded",
         pair("nearest safe shape", fcn8s, 2, 16, BOTH, None, size, args.rounds, threads)),
    ]
    m = common.machine(threads=threads)
    result = {"when": common.now(), "machine": m, "torch": torch.__version__, "detected_rule": detected.describe(),
              "cases": [r for _, r in rows]}
    md = ["# bf16 guard: cost of a training step (forward + backward + AdamW, bf16 autocast)", "",
          f"{common.describe(m)}; torch {torch.__version__}; batch 2 x 3 x {size[0]} x {size[1]}; "
          f"median of {args.rounds} interleaved rounds. Rule the probes choose here: {detected.describe()}.", "",
          "| case | guarded (s) | other (s) | ratio |", "|---|---:|---:|---:|"]
    for label, r in rows:
        md.append(f"| {label} | {r['median_s_a']:.3f} | {r['median_s_b']:.3f} | {r['ratio_a_over_b']:.2f}x |")
    common.save("bf16_guard", result, md)


if __name__ == "__main__":
    main()
