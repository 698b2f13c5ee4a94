"""Child process of test_bf16_models.py: bf16 training steps of registered models, one after another.

``python bf16_worker.py CASE ...`` where a case is a registered model name (its tiny config
from zoo_configs.py) or ``fcn8s_full`` (FCN-8s at the paper's widths on 32x96 crops, the
shape that oneDNN's bf16 backward gets wrong). For each case it prints a JSON line
``{"start": case, "shape": ...}`` before every shape and ``{"case", "status", "detail"}``
when the case ends, so a parent that sees this process die of a signal knows which model and
which input shape killed it.

Per shape: the same weights and input run forward + backward once in fp32 and once under
CPU bf16 autocast (with pixelwise's bf16 guard, as training uses it), and once in bf16 with
oneDNN switched off (ATen's own kernels) to measure what bf16 rounding alone costs. Every
oneDNN bf16 gradient must be finite and no further from fp32 than ``MAX_NOISE_RATIO`` times
that cost, then an AdamW step must leave finite weights.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from pixelwise import create_model  # noqa: E402
from pixelwise.bf16_guard import guard_convs, guard_rule  # noqa: E402
from pixelwise.models import SegmentationOutput  # noqa: E402
from zoo_configs import TINY, TINY_INSTANCE, TINY_VOLUMETRIC  # noqa: E402

# oneDNN's bf16 gradient may differ from fp32 by at most this many times what an independent bf16
# computation (ATen without oneDNN) differs; relative errors below NOISE_FLOOR always pass.
MAX_NOISE_RATIO = 8.0
NOISE_FLOOR = 0.02
# 32x96: FCN/DeepLab heads see 1x3 maps (the reported crash); 67x93: odd sizes. BF16_SHAPES=32x96 picks one.
SHAPES = [tuple(int(v) for v in s.split("x")) for s in os.environ.get("BF16_SHAPES", "32x96,67x93").split(",")]


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def _loss(out) -> torch.Tensor:
    if isinstance(out, dict):  # Mask R-CNN's named losses
        return sum(v.float() for v in out.values())
    if isinstance(out, SegmentationOutput):
        total = out.logits.float().square().mean() + sum(a.float().square().mean() for a in out.aux)
        return total + (out.boundary.float().square().mean() if out.boundary is not None else 0)
    return out.float().square().mean()


def _instance_inputs(shape):
    h, w = shape
    image = torch.rand(3, h, w)
    box = torch.tensor([[4.0, 4.0, w / 2, h / 2]])
    mask = torch.zeros(1, h, w, dtype=torch.uint8)
    mask[0, 4:h // 2, 4:w // 2] = 1
    return ([image], [{"boxes": box, "labels": torch.tensor([1]), "masks": mask}])


def build(case: str):
    if case == "fcn8s_full":
        return create_model("fcn8s", num_classes=3), [(32, 96)], "image"
    if case in TINY:
        return create_model(case, num_classes=3, **TINY[case]), SHAPES, "image"
    if case in TINY_VOLUMETRIC:
        return create_model(case, num_classes=2, **TINY_VOLUMETRIC[case]), [(12, 20, 20)], "volume"
    if case in TINY_INSTANCE:
        from pixelwise.models.maskrcnn import create_instance_model

        return create_instance_model(case, **TINY_INSTANCE[case]), [(64, 80)], "instance"
    raise SystemExit(f"unknown case {case!r}")


def run(model, inputs, *, bf16: bool, onednn: bool = True):
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(1)  # same dropout masks and proposal sampling in every run
    with torch.backends.mkldnn.flags(enabled=onednn), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(*inputs)
        loss = _loss(out)
        loss.backward()
    return loss.detach()


def check(case: str) -> dict:
    torch.manual_seed(0)
    model, shapes, kind = build(case)
    model.train()
    worst = 0.0
    for shape in shapes:
        emit(start=case, shape=list(shape))
        torch.manual_seed(2)
        if kind == "instance":
            inputs = _instance_inputs(shape)
        elif kind == "volume":
            inputs = (torch.randn(1, 1, *shape),)
        else:
            inputs = (torch.randn(2, 3, *shape),)
        reference = copy.deepcopy(model)
        run(reference, inputs, bf16=False)
        # An independent bf16 computation (ATen's kernels, no oneDNN): its distance from fp32 is
        # what bf16 rounding alone costs each gradient.
        aten = copy.deepcopy(model)
        run(aten, inputs, bf16=True, onednn=False)
        bf16_model = copy.deepcopy(model)
        guard_convs(bf16_model, guard_rule())
        loss = run(bf16_model, inputs, bf16=True)
        if not torch.isfinite(loss):
            return {"status": "fail", "detail": f"bf16 loss {float(loss)} at {list(shape)}"}
        # Tensors whose true gradient is ~0 (a bias before batch norm) are judged on the scale of
        # the model's gradients, not their own: noise on a zero is not a wrong kernel.
        norms = [float(r.grad.norm()) for r in reference.parameters() if r.grad is not None]
        floor = 1e-3 * (sum(n * n for n in norms) / max(1, len(norms))) ** 0.5
        for (name, p), ref, independent in zip(bf16_model.named_parameters(), reference.parameters(),
                                               aten.parameters()):
            if p.grad is None or ref.grad is None:
                continue
            if not torch.isfinite(p.grad).all():
                return {"status": "fail", "detail": f"non-finite bf16 gradient of {name} at {list(shape)}"}
            if kind == "instance":  # proposals differ between fp32 and bf16 runs: finiteness only
                continue
            scale = max(float(ref.grad.norm()), floor, 1e-12)
            err, noise = float((p.grad - ref.grad).norm()) / scale, float((independent.grad - ref.grad).norm()) / scale
            ratio = err / max(noise, NOISE_FLOOR)
            worst = max(worst, ratio)
            if ratio > MAX_NOISE_RATIO:
                return {"status": "fail", "detail": f"bf16 gradient of {name} at {list(shape)} is off by {err:.3g} "
                                                     f"(relative L2) from fp32, {ratio:.3g}x what bf16 rounding costs "
                                                     f"in ATen's kernels ({noise:.3g})"}
        optimizer = torch.optim.AdamW(bf16_model.parameters(), lr=1e-3)
        optimizer.step()
        bad = [n for n, p in bf16_model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            return {"status": "fail", "detail": f"non-finite weights after the step: {bad[:3]}"}
    return {"status": "ok", "detail": f"worst error / bf16 noise {worst:.3g}"}


def main(cases: list[str]) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.simplefilter("ignore")
    for case in cases:
        try:
            result = check(case)
        except Exception as err:  # noqa: BLE001 - reported as the case's failure
            result = {"status": "fail", "detail": f"{type(err).__name__}: {err}"[:500]}
        emit(case=case, **result)


if __name__ == "__main__":
    main(sys.argv[1:])
