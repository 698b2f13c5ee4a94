#!/usr/bin/env python3
"""Standalone repro: oneDNN bf16 convolution backward under CPU autocast, per shape and op.

Reported on PyTorch 2.14.1 on an Intel Xeon with AMX (Sapphire Rapids class): the backward
pass of a bf16 convolution on a small feature map with many channels aborts with
``free(): invalid pointer`` / ``corrupted double-linked list`` or crashes later (heap
corruption). The minimal case::

    m = torch.nn.Sequential(torch.nn.Conv2d(512, 4096, 1), torch.nn.Conv2d(4096, 2, 1))
    x = torch.randn(2, 512, 1, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().sum().backward()

This script runs each case of a grid (kernel size, feature-map size, channels, NCHW or
channels_last, which gradient: input, weight or both) in its own child process, with glibc's
heap checks on (``MALLOC_CHECK_=3``, ``MALLOC_PERTURB_``) so that corruption aborts in the
case that caused it, compares the bf16 gradients with an fp32 computation on the same
(bf16-rounded) numbers, and records which oneDNN implementation ran each primitive
(``ONEDNN_VERBOSE=1``). Verdicts: ``ok``, ``wrong`` (gradient off by more than bf16 can
explain), ``crash`` (the child died of a signal), ``error`` (a Python exception).

What it found on PyTorch 2.14.1 (``benchmarks/results/onednn_bf16_repro_*.json``):

- Intel Xeon with AMX (2026-12-02): the weight gradient of a convolution with more than 2048
  input channels and fewer than 16 output channels crashes (SIGABRT/SIGSEGV in
  ``brgconv_bwd_w:avx10_1_512_amx``) on 2, 3, 4 and 8 threads, at every map from 1x3 to
  64x64, kernels 1, 3 and 7, NCHW and channels_last. 2048 -> 2, 4096 -> 16, 8192 -> 16 and
  the input gradient pass; on one thread nothing crashes. The report's module crashes in its
  second layer (4096 -> 2), not because its map is small. Reproduce the boundary with
  ``--kernel 1 --size 8x8 --channels 2048->2,2056->2,4096->15,4096->16 --grad weight``.
- AMD EPYC with AVX512-BF16, no AMX (2026-12-02): no crash, but wrong weight gradients
  (garbage in the taps that see only padding) when the padding exceeds the map, e.g. a 7x7
  convolution padded by 3 on 1x3 and 2x4 maps, 256 channels and more.

It needs nothing but PyTorch, so it can be attached to an upstream report as it is::

    python onednn_amx_bf16.py                 # the quick grid (about 40 cases)
    python onednn_amx_bf16.py --full          # the whole grid
    python onednn_amx_bf16.py --json out.json # also write the verdicts
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python onednn_amx_bf16.py   # the same without AMX

The exit status is 0 when every case is ``ok``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

QUICK = {"kernel": [1, 3, 7], "size": [(1, 3), (2, 4), (4, 4), (8, 8), (16, 16)], "channels": [(512, 4096), (4096, 2)],
         "layout": ["nchw", "nhwc"], "grad": ["both"]}
FULL = {"kernel": [1, 3, 5, 7], "size": [(1, 1), (1, 3), (2, 2), (2, 4), (3, 3), (4, 4), (6, 6), (8, 8), (12, 12),
                                         (16, 16), (32, 32)],
        "channels": [(512, 4096), (4096, 2), (256, 256), (64, 64)], "layout": ["nchw", "nhwc"],
        "grad": ["both", "input", "weight"]}
ISSUE_CASE = {"kernel": 1, "size": [1, 3], "channels": [512, 4096], "layout": "nchw", "grad": "both", "issue": True}


def cpu_description() -> dict:
    """CPU model, the flags that matter here, and what oneDNN is allowed to use."""
    model, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model in ("?", "", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return {"model": model, "flags": [f for f in wanted if f in flags],
            "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", "(default)")}


def run_case(case: dict, repeats: int) -> dict:
    """Inside the child: forward + backward ``repeats`` times, then compare with fp32."""
    import torch

    torch.manual_seed(0)
    cin, cout = case["channels"]
    h, w = case["size"]
    k = case["kernel"]
    if case.get("issue"):  # the two-layer module of the report, exactly
        net = torch.nn.Sequential(torch.nn.Conv2d(512, 4096, 1), torch.nn.Conv2d(4096, 2, 1))
    else:
        net = torch.nn.Conv2d(cin, cout, k, padding=k // 2)
    fmt = torch.channels_last if case["layout"] == "nhwc" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.randn(2, cin, h, w).to(memory_format=fmt)
    want_input = case["grad"] in ("both", "input")
    want_weight = case["grad"] in ("both", "weight")
    for p in net.parameters():
        p.requires_grad_(want_weight)
    for _ in range(repeats):
        xi = x.clone().requires_grad_(want_input)
        for p in net.parameters():
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(xi)
        y.float().square().mean().backward()
    got = ([xi.grad.float()] if want_input else []) + (
        [p.grad.float() for p in net.parameters()] if want_weight else [])

    # Reference: the same bf16-rounded input and weights, computed in fp32.
    ref_net = copy.deepcopy(net).float()
    with torch.no_grad():
        for p in ref_net.parameters():
            p.copy_(p.to(torch.bfloat16).float())
            p.grad = None
    xr = x.to(torch.bfloat16).float().requires_grad_(want_input)
    ref_net(xr).square().mean().backward()
    want = ([xr.grad] if want_input else []) + ([p.grad for p in ref_net.parameters()] if want_weight else [])
    errors = [float((g - r).abs().max() / r.abs().max().clamp_min(1e-12)) for g, r in zip(got, want)]
    worst = max(errors) if errors else 0.0
    # bf16 keeps 8 bits of mantissa; intermediate rounding of activations adds a few more ulps.
    return {"verdict": "ok" if worst < 5e-2 else "wrong", "max_rel_err": worst}


def child_main(case: dict, repeats: int) -> None:
    try:
        result = run_case(case, repeats)
    except Exception as err:  # noqa: BLE001 - the verdict reports any failure
        result = {"verdict": "error", "message": f"{type(err).__name__}: {err}"[:300]}
    print("RESULT " + json.dumps(result), flush=True)


def implementations(stdout: str) -> dict:
    """oneDNN's implementation per convolution primitive kind, from ONEDNN_VERBOSE lines."""
    found: dict[str, set] = {}
    for line in stdout.splitlines():
        parts = line.split(",")
        if len(parts) > 7 and parts[0] == "onednn_verbose" and "exec" in parts and "convolution" in parts:
            i = parts.index("convolution")
            found.setdefault(parts[i + 2], set()).add(parts[i + 1])
    return {kind: sorted(impls) for kind, impls in sorted(found.items())}


def run_in_child(case: dict, repeats: int, timeout: float) -> dict:
    env = {**os.environ, "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165", "ONEDNN_VERBOSE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", json.dumps(case),
                               "--repeats", str(repeats)], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "verdict": "hang", "seconds": timeout}
    result = {**case, "seconds": round(time.perf_counter() - start, 2), "impl": implementations(proc.stdout)}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode < 0:
        result.update(verdict="crash", signal=signal.Signals(-proc.returncode).name,
                      stderr=" ".join(proc.stderr.strip().splitlines()[-2:])[:300])
    elif line is None:
        result.update(verdict="crash" if proc.returncode else "error", returncode=proc.returncode,
                      stderr=" ".join(proc.stderr.strip().splitlines()[-2:])[:300])
    else:
        result.update(json.loads(line[len("RESULT "):]))
    return result


def grid(spec: dict) -> list[dict]:
    cases = [dict(ISSUE_CASE)]
    for k, size, ch, layout, grad in itertools.product(spec["kernel"], spec["size"], spec["channels"], spec["layout"],
                                                        spec["grad"]):
        cases.append({"kernel": k, "size": list(size), "channels": list(ch), "layout": layout, "grad": grad})
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the whole grid instead of the quick one")
    parser.add_argument("--repeats", type=int, default=3, help="forward+backward passes per case")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as a hang")
    parser.add_argument("--json", help="write the verdicts to this file")
    parser.add_argument("--kernel", help="only these kernel sizes, e.g. 1,3")
    parser.add_argument("--size", help="only these maps, e.g. 1x3,8x8")
    parser.add_argument("--channels", help="only these in->out channel pairs, e.g. 4096->2,512->4096")
    parser.add_argument("--layout", help="nchw, nhwc or both (nchw,nhwc)")
    parser.add_argument("--grad", help="only these gradients: both,input,weight")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the child's entry point
    args = parser.parse_args()
    if args.case:
        child_main(json.loads(args.case), args.repeats)
        return 0
    import torch

    onednn = re.search(r"oneDNN v[\d.]+", torch.__config__.show())
    header = {"torch": torch.__version__, "onednn": onednn.group(0) if onednn else "?", "cpu": cpu_description(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "2")}
    print(json.dumps(header))
    results = []
    print(f"{'kernel':>6} {'map':>7} {'channels':>11} {'layout':>6} {'grad':>6}  verdict  detail")
    spec = dict(FULL if args.full else QUICK)
    if args.kernel:
        spec["kernel"] = [int(k) for k in args.kernel.split(",")]
    if args.size:
        spec["size"] = [tuple(int(v) for v in s.split("x")) for s in args.size.split(",")]
    if args.channels:
        spec["channels"] = [tuple(int(v) for v in c.split("->")) for c in args.channels.split(",")]
    if args.layout:
        spec["layout"] = args.layout.split(",")
    if args.grad:
        spec["grad"] = args.grad.split(",")
    for case in grid(spec):
        r = run_in_child(case, args.repeats, args.timeout)
        results.append(r)
        detail = r.get("signal") or r.get("message") or (
            f"rel err {r['max_rel_err']:.2g}" if "max_rel_err" in r else "")
        bwd = ";".join(sorted({i for kind, impls in r.get("impl", {}).items() if kind.startswith("backward")
                               for i in impls}))
        name = "issue" if case.get("issue") else case["kernel"]
        print(f"{name!s:>6} {'x'.join(map(str, case['size'])):>7} {'->'.join(map(str, case['channels'])):>11} "
              f"{case['layout']:>6} {case['grad']:>6}  {r['verdict']:7s}  {detail} [{bwd}]", flush=True)
    bad = [r for r in results if r["verdict"] != "ok"]
    print(f"{len(results) - len(bad)} of {len(results)} cases ok" + (f"; {len(bad)} not ok" if bad else ""))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**header, "cases": results}, fh, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
