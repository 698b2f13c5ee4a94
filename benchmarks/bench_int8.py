"""int8 ONNX on a trained U-Net-ResNet34: accuracy kept, and speed against fp32 and smp.

The latency benchmark uses random weights, whose logits differ by ~1e-3 between classes, so
its argmax agreement says little about quantisation. Here the network is trained first:

1. ``create_model("unet", encoder="resnet34")`` (random init, 5 classes) trained for
   ``--steps`` AdamW steps (lr 3e-3, batch 16) on 64x64 SyntheticShapes images (the demo's
   data and settings);
2. exported to ONNX (dynamic axes) and quantised by :func:`pixelwise.export.quantize.quantize_onnx`
   (default settings: QDQ, per-channel 7-bit weights, uint8 activations) with
   ``--calibration`` training images;
3. accuracy on ``--val`` held-out images (a different generator stream): validation mIoU of
   PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime int8, and the int8 file's argmax agreement
   with fp32 (the issue's bar: >= 99.5 %);
4. latency at 1x3x512x512, interleaved rounds: PyTorch eager fp32, ONNX Runtime fp32 and int8
   of this network, and ``smp.Unet("resnet34")`` eager fp32 when segmentation_models_pytorch is
   installed (the same architecture; weights do not change its speed).

    .venv-bench/bin/python benchmarks/bench_int8.py [--steps 400] [--rounds 7]

writes ``benchmarks/results/int8.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import describe, interleave, machine, median, now, save, timed

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE, CLASSES, BATCH, LR = 64, 5, 16, 3e-3


def images(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from pixelwise.data import SyntheticShapes

    data = SyntheticShapes(n, image_size=SIZE, seed=seed)
    return [data.generate(i) for i in range(n)]


def to_input(batch: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def train(steps: int) -> tuple[torch.nn.Module, float]:
    from pixelwise import create_model

    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet34", encoder_weights=None, num_classes=CLASSES).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    data = images(0, 4096)
    rng = np.random.default_rng(0)
    tic = time.perf_counter()
    for _ in range(steps):
        pick = rng.choice(len(data), BATCH, replace=False)
        x = to_input([data[i][0] for i in pick])
        y = torch.from_numpy(np.stack([data[i][1] for i in pick]).astype(np.int64))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval(), time.perf_counter() - tic


def miou(labels: list[np.ndarray], masks: list[np.ndarray]) -> float:
    from pixelwise.metrics import ConfusionMatrix

    cm = ConfusionMatrix(CLASSES)
    for pred, mask in zip(labels, masks):
        cm.update(torch.from_numpy(pred[None]), torch.from_numpy(mask[None].astype(np.int64)))
    return cm.miou()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from pixelwise.export.backends import OnnxRuntimeModel
    from pixelwise.export.onnx import export_onnx
    from pixelwise.export.quantize import quantize_onnx

    model, train_seconds = train(args.steps)
    print(f"trained {args.steps} steps in {train_seconds:.0f} s", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_int8_"))
    export_onnx(model, tmp / "model.onnx", height=SIZE, width=SIZE, verbose=False)
    calibration = [im for im, _ in images(7, args.calibration)]
    val = images(1_000_003, args.val)  # the stream pixelwise's synthetic dataset uses for validation
    report = quantize_onnx(tmp / "model.onnx", tmp / "model.int8.onnx", calibration, mean=MEAN, std=STD,
                           check=[im for im, _ in val], min_agreement=0.0)
    fp32, int8 = OnnxRuntimeModel(tmp / "model.onnx"), OnnxRuntimeModel(tmp / "model.int8.onnx")
    preds: dict[str, list[np.ndarray]] = {"PyTorch fp32": [], "ONNX Runtime fp32": [], "ONNX Runtime int8": []}
    with torch.no_grad():
        for image, _ in val:
            x = to_input([image])
            preds["PyTorch fp32"].append(model(x).argmax(1)[0].numpy())
            preds["ONNX Runtime fp32"].append(fp32(x).argmax(1)[0].numpy())
            preds["ONNX Runtime int8"].append(int8(x).argmax(1)[0].numpy())
    masks = [m for _, m in val]
    accuracy = {k: miou(v, masks) for k, v in preds.items()}
    agree = float(np.mean([(a == b).mean() for a, b in zip(preds["ONNX Runtime fp32"], preds["ONNX Runtime int8"])]))

    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))

    def eager(net):
        def run(inp):
            with torch.no_grad():
                return net(inp)
        return run

    contenders = {"pixelwise eager fp32": eager(model), "pixelwise ONNX Runtime fp32": fp32,
                  "pixelwise ONNX Runtime int8": int8}
    peer_version = None
    try:
        import segmentation_models_pytorch as smp

        contenders["smp eager fp32"] = eager(smp.Unet("resnet34", encoder_weights=None, classes=CLASSES).eval())
        peer_version = smp.__version__
    except ImportError:
        print("segmentation_models_pytorch not installed: no smp row")
    times = interleave({k: k for k in contenders}, args.rounds, lambda k: timed(contenders[k], x)[0], warmup=1)
    base = median(times["smp eager fp32"]) if peer_version else median(times["pixelwise eager fp32"])
    rows = [{"contender": k, "median_ms": 1e3 * median(v), "min_ms": 1e3 * min(v), "speedup": base / median(v)}
            for k, v in times.items()]
    result = {"benchmark": f"U-Net-ResNet34 trained {args.steps} steps on {SIZE} px synthetic shapes; int8 by "
                           f"quantize_onnx ({args.calibration} calibration images); accuracy on {args.val} held-out "
                           f"images; latency 1x3x512x512, median of {args.rounds} interleaved rounds",
              "date": now(), "machine": machine(), "versions": {"torch": torch.__version__, "smp": peer_version},
              "train_seconds": train_seconds, "miou": accuracy, "argmax_agreement_int8_vs_fp32": agree,
              "quantize_report": {"agreement": report.agreement, "worst_image": report.worst_image_agreement,
                                  "fp32_mib": report.fp32_bytes / 2**20, "int8_mib": report.int8_bytes / 2**20,
                                  "seconds": report.seconds, "reduce_range": report.reduce_range,
                                  "notes": report.notes},
              "rows": rows, "baseline": "smp eager fp32" if peer_version else "pixelwise eager fp32"}
    lines = ["# int8 ONNX on a trained U-Net-ResNet34", "", f"{result['benchmark']}; {describe(result['machine'])}; "
             f"torch {torch.__version__}, smp {peer_version or '-'}; {result['date']}.", "",
             "| predictions | validation mIoU |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in accuracy.items()]
    lines += ["", f"int8 vs fp32 argmax agreement on the held-out images: **{100 * agree:.3f} %** (worst image "
                  f"{100 * report.worst_image_agreement:.3f} %); file {report.int8_bytes / 2**20:.1f} MiB vs "
                  f"{report.fp32_bytes / 2**20:.1f} MiB fp32; quantisation took {report.seconds:.0f} s.", "",
              f"| 1x3x512x512 | median ms | min ms | speed-up vs {result['baseline']} |", "|---|---:|---:|---:|"]
    lines += [f"| {r['contender']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['speedup']:.2f}x |" for r in rows]
    save("int8", result, lines)


if __name__ == "__main__":
    main()
