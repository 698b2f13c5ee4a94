"""Every task through the one loop: binary and multilabel semantic configs train, evaluate
(per-class IoU and Dice) and predict; Gated-SCNN's boundary loss is logged and trains the
shape stream; Mask R-CNN exports and predicts from the CLI; one file calls ``.backward``;
each task runs under two-process gloo DDP."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pixelwise import config
from pixelwise.cli import main
from pixelwise.data import read_mask, write_image, write_mask
from pixelwise.errors import ConfigError
from pixelwise.metrics.multilabel import MultilabelScores
from pixelwise.postprocess.decision import bits_to_multilabel, labels_from_logits
from pixelwise.tasks.select import build_task
from pixelwise.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
# A small Mask R-CNN (tests/test_instance_engine.py measures the same settings).
MASKRCNN_ARGS = {"min_size": 64, "max_size": 64, "fpn_channels": 16, "anchor_scale": 4.0, "representation_size": 32,
                 "mask_channels": 16, "mask_layers": 2, "rpn_pre_nms_top_n_train": 200,
                 "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                 "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32, "box_score_thresh": 0.0,
                 "box_detections_per_img": 20}
SRC = ROOT / "src" / "pixelwise"


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_shapes(root: Path, *, multilabel: bool, count: int = 12, size: int = 32) -> Path:
    """``root/{train,val}/{images,masks}``: a bright disc (class 0; binary: the foreground) and,
    for multilabel, a green bar (class 1) that overlaps it; masks bit-packed (1 = disc, 2 = bar)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            cy, cx, r = rng.integers(8, size - 8), rng.integers(8, size - 8), rng.integers(4, 8)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            image[disc, 0] = 230
            mask = disc.astype(np.uint8)
            if multilabel:
                x0 = rng.integers(0, size - 10)
                bar = (xx >= x0) & (xx < x0 + 8)
                image[bar, 1] = 230
                mask = mask + 2 * bar.astype(np.uint8)
            write_image(root / split / "images" / f"{i:03d}.png", image)
            write_mask(root / split / "masks" / f"{i:03d}.png", mask)
    return root


def semantic_cfg(root: Path, out: Path, *, num_classes: int, multilabel: bool, steps: int = 40) -> Path:
    cfg = config.from_dict({
        "model": {"name": "unet", "args": {"base_channels": 8, "depth": 2}},
        "data": {"dataset": "folder", "root": str(root), "num_classes": num_classes, "multilabel": multilabel,
                 "crop_size": 32, "augment": "none", "batch_size": 4},
        "train": {"max_steps": steps, "lr": 0.01, "out_dir": str(out), "log_every": 5, "val_every": 2,
                  "loss": [{"name": "ce"}, {"name": "dice"}], "tensorboard": False, "plots": False, "device": "cpu"}})
    path = out.parent / f"{out.name}.yaml"
    config.save(cfg, path)
    return path


# --- the decision and the multilabel metric, against hand-computed values ---------------------------

def test_decision_is_argmax_or_z_above_zero_packed_as_bits():
    logits = torch.tensor([[[[2.0, -1.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
    assert labels_from_logits(logits, "multiclass").tolist() == [[[0, 1]]]
    assert labels_from_logits(logits[:, :1], "binary").tolist() == [[[1, 0]]]
    assert labels_from_logits(logits, "multilabel").tolist() == [[[1, 2]]]  # pixel 0: class 0; pixel 1: class 1
    mask = torch.tensor([[[3, 0, 255]]])
    assert bits_to_multilabel(mask, 2).tolist() == [[[[1.0, 0.0, 255.0]], [[1.0, 0.0, 255.0]]]]


def test_multilabel_scores_match_a_hand_count():
    target = torch.tensor([[[[1, 1, 0, 255]], [[0, 1, 1, 1]]]], dtype=torch.float32)  # (1, 2, 1, 4)
    pred = torch.tensor([[[[1, 0, 1, 1]], [[0, 1, 1, 0]]]], dtype=torch.bool)
    scores = MultilabelScores(2)
    scores.update(pred, target)
    out = scores.compute()
    # class 0: tp 1, fp 1, fn 1 (pixel 3 ignored) -> IoU 1/3, Dice 2/4; class 1: tp 2, fp 0, fn 1 -> 2/3, 4/5
    assert out["iou"] == pytest.approx([1 / 3, 2 / 3]) and out["dice"] == pytest.approx([0.5, 0.8])
    assert out["miou"] == pytest.approx(0.5)


def test_config_names_bad_task_values():
    with pytest.raises(ConfigError, match="'task' must be one of auto, semantic, instance"):
        config.from_dict({"task": "panoptic"})
    with pytest.raises(ConfigError, match="train.boundary_loss.*auto, gscnn, none"):
        config.from_dict({"train": {"boundary_loss": "hed"}})
    with pytest.raises(ConfigError, match="multilabel.*16"):
        config.from_dict({"data": {"multilabel": True, "num_classes": 17, "ignore_index": 70000}})
    with pytest.raises(ConfigError, match="task 'instance' cannot train model 'unet'"):
        build_task(config.from_dict({"task": "instance"}))


# --- binary and multilabel through train / eval / predict ------------------------------------------

@pytest.mark.parametrize("multilabel", [False, True], ids=["binary", "multilabel"])
def test_binary_and_multilabel_train_evaluate_and_predict(tmp_path, capsys, multilabel):
    root = write_shapes(tmp_path / "data", multilabel=multilabel)
    num_classes = 2 if multilabel else 1
    path = semantic_cfg(root, tmp_path / "run", num_classes=num_classes, multilabel=multilabel)
    assert main(["train", str(path), "--quiet"]) == 0
    assert re.search(r"best validation mIoU [5-9]\d\.\d\d%", capsys.readouterr().out)
    metrics = rows(tmp_path / "run" / "metrics.csv")
    columns = ["miou", "mean_dice"] if multilabel else ["miou", "pixel_accuracy", "mean_dice"]
    assert all(set(columns) <= set(r) for r in metrics)  # every row, validated or not (val_every 2)
    assert metrics[0]["miou"] == "" and metrics[1]["miou"] != ""

    assert main(["eval", str(path)]) == 0
    table = capsys.readouterr().out
    assert "IoU" in table and "Dice" in table

    assert main(["predict", str(tmp_path / "run" / "best"), str(root / "val" / "images"), "--out",
                 str(tmp_path / "pred"), "--quiet"]) == 0
    truth = read_mask(root / "val" / "masks" / "000.png")
    pred = read_mask(tmp_path / "pred" / "000.png")
    assert set(np.unique(pred)) <= ({0, 1, 2, 3} if multilabel else {0, 1})
    for bit in range(num_classes):  # each class found where it is, by an independent count
        t, p = (truth >> bit) & 1, (pred >> bit) & 1
        assert (t & p).sum() / max((t | p).sum(), 1) > 0.5


# --- Gated-SCNN: the boundary term is logged and trains the shape stream ---------------------------

def _edge_separation(model, loader) -> float:
    """Mean boundary probability on label edges minus elsewhere (edges found here with NumPy)."""
    model.train()  # the boundary output exists in training mode only
    on, off = [], []
    with torch.no_grad():
        for batch in loader:
            prob = torch.sigmoid(model(batch["image"]).boundary)[:, 0].numpy()
            mask = batch["mask"].numpy()
            edge = np.zeros(mask.shape, bool)
            edge[:, :, :-1] |= mask[:, :, :-1] != mask[:, :, 1:]
            edge[:, :-1, :] |= mask[:, :-1, :] != mask[:, 1:, :]
            on.append(prob[edge])
            off.append(prob[~edge])
    return float(np.concatenate(on).mean() - np.concatenate(off).mean())


def test_gscnn_logs_its_boundary_loss_and_learns_boundaries(tmp_path):
    from pixelwise.hub import load_model
    from pixelwise.tasks.semantic import build_model

    cfg = config.from_dict({
        "model": {"name": "gscnn", "encoder": "resnet18", "args": {"output_stride": 8}},
        "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 64, "augment": "none", "batch_size": 4,
                 "train_samples": 32, "val_samples": 8},
        "train": {"max_steps": 40, "lr": 0.002, "out_dir": str(tmp_path / "run"), "log_every": 5,
                  "tensorboard": False, "plots": False, "device": "cpu"}})
    train(cfg, progress=False)
    log = rows(tmp_path / "run" / "log.csv")
    assert {"loss_ce", "loss_boundary", "loss_consistency", "loss_attention"} <= set(log[0])

    task = build_task(cfg)
    loader = torch.utils.data.DataLoader(task.dataset("val", train=False), batch_size=4, collate_fn=task.collate)
    torch.manual_seed(0)
    untrained = build_model(cfg)
    trained, _ = load_model(tmp_path / "run" / "last")
    before, after = _edge_separation(untrained, loader), _edge_separation(trained, loader)
    print(f"boundary probability, on edges minus elsewhere: untrained {before:.3f}, trained {after:.3f}")
    assert after > before + 0.05


# --- Mask R-CNN from the command line --------------------------------------------------------------

def test_maskrcnn_exports_and_predicts_from_the_cli_and_refuses_semantic_options(tmp_path, capsys):
    from pixelwise.hub import save_model
    from pixelwise.models.maskrcnn import create_instance_model

    torch.manual_seed(0)
    model = create_instance_model("maskrcnn", encoder="test_resnet", num_classes=3, **{
        **MASKRCNN_ARGS, "box_detections_per_img": 5}).eval()
    folder = save_model(model, tmp_path / "mrcnn", {"task": "instance", "data": {
        "num_classes": 3, "class_names": ["background", "a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3}})
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "x.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8))

    assert main(["export", str(folder), "--height", "64", "--width", "64"]) == 0
    assert (folder / "model.onnx").is_file() and "ONNX Runtime agrees" in capsys.readouterr().out

    assert main(["predict", str(folder), str(images), "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    assert (tmp_path / "pred" / "x_instances.png").is_file() and (tmp_path / "pred" / "predictions.json").is_file()

    assert main(["predict", str(folder), str(images), "--out", str(tmp_path / "p2"), "--tile", "32", "--crf",
                 "--format", "png"]) == 2
    err = capsys.readouterr().err
    assert "--tile, --crf, --format apply to semantic models only" in err


# --- one loop ---------------------------------------------------------------------------------------

def test_only_the_loop_calls_backward():
    """One training loop for every task and recipe: apart from the adversarial discriminator's
    own update, only train/loop.py calls ``.backward`` (bf16_guard's probes of oneDNN bugs are
    not training)."""
    allowed = {"train/loop.py", "train/adversarial.py", "bf16_guard.py"}
    callers = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if ".backward(" in p.read_text()}
    assert callers - allowed == set(), f"a training loop outside train/loop.py: {sorted(callers - allowed)}"
    assert "train/loop.py" in callers


# --- each task under two-process gloo DDP ------------------------------------------------------------

def _torchrun(path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "pixelwise", "train", str(path), "--quiet", *extra]
    return subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("task", ["binary", "multilabel", "gscnn", "instance"])
def test_each_task_trains_under_two_gloo_processes(tmp_path, task):
    if task in ("binary", "multilabel"):
        root = write_shapes(tmp_path / "data", multilabel=task == "multilabel", count=8)
        path = semantic_cfg(root, tmp_path / "run", num_classes=2 if task == "multilabel" else 1,
                            multilabel=task == "multilabel", steps=2)
        overrides = ["--set", "train.val_every=1", "--set", "train.log_every=1", "--set", "data.batch_size=2"]
    elif task == "gscnn":
        path = tmp_path / "run.yaml"
        config.save(config.from_dict({
            "model": {"name": "gscnn", "encoder": "resnet18", "args": {"output_stride": 8}},
            "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none",
                     "batch_size": 2, "train_samples": 8, "val_samples": 4},
            "train": {"max_steps": 2, "out_dir": str(tmp_path / "run"), "log_every": 1, "tensorboard": False,
                      "plots": False, "device": "cpu"}}), path)
        overrides = []
    else:
        path = tmp_path / "run.yaml"
        config.save(config.from_dict({
            # With the keypoint branch: its loss and the keypoint AP of both shards come through DDP too.
            "model": {"name": "maskrcnn", "encoder": "test_resnet", "args": {**MASKRCNN_ARGS, "num_keypoints": 5}},
            "data": {"dataset": "synthetic_instances", "num_classes": 5, "crop_size": 64, "augment": "none",
                     "batch_size": 1, "train_samples": 4, "val_samples": 2,
                     "args": {"max_objects": 3, "keypoints": True}},
            "train": {"max_steps": 2, "optimizer": "sgd", "lr": 0.005, "out_dir": str(tmp_path / "run"),
                      "log_every": 1, "tensorboard": False, "plots": False, "device": "cpu"}}), path)
        overrides = []
    done = _torchrun(path, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    log = rows(tmp_path / "run" / "log.csv")
    assert [r["step"] for r in log] == ["1", "2"]  # only rank 0 writes
    column = {"binary": "miou", "multilabel": "miou", "gscnn": "miou", "instance": "mask_AP"}[task]
    assert rows(tmp_path / "run" / "metrics.csv")[-1][column] != ""
    if task == "instance":
        assert rows(tmp_path / "run" / "metrics.csv")[-1]["keypoint_AP"] != "" and "loss_keypoint" in log[0]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


RECIPES_UNDER_DDP = """
import json, os, sys
import torch
from pixelwise import create_model
from pixelwise.recipes.audio import SpectrogramUNet, train_separator
from pixelwise.recipes.audio_data import SyntheticMixtures
from pixelwise.recipes.landmarks import SyntheticLandmarks, train_landmarks
from pixelwise.recipes.weak import fit, synthetic_arrays

torch.distributed.init_process_group("gloo")  # one group for the three trainings (each reuses it)
torch.manual_seed(0)
data = SyntheticMixtures(4, length=4096, sample_rate=8192, seed=0)
mix = torch.stack([data[i]["mixture"] for i in range(4)])
src = torch.stack([data[i]["source"] for i in range(4)])
separator = SpectrogramUNet(channels=(4, 8), n_fft=256, hop_length=64)
audio = train_separator(separator, mix, src, steps=2, batch_size=2, lr=1e-3)
hourglass = create_model("hourglass", num_classes=4, channels=8, num_stacks=1, depth=2)
landmarks = train_landmarks(hourglass, SyntheticLandmarks(8, 64, seed=0), steps=2, batch_size=2, eval_every=1)
images, masks = synthetic_arrays(4, image_size=32)
unet = create_model("unet", num_classes=5, base_channels=4, depth=2)
weak = fit(unet, images, masks, steps=2, batch_size=2)
# The weights every process ends with must be the same (DDP averaged the gradients).
flat = torch.cat([p.detach().flatten() for m in (separator, hourglass, unet) for p in m.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(2)]
torch.distributed.all_gather(gathered, flat)
if os.environ["RANK"] == "0":
    print(json.dumps({"audio": len(audio), "landmarks": len(landmarks), "weak": len(weak),
                      "same_weights": bool(torch.equal(gathered[0], gathered[1]))}))
"""


def test_every_recipe_trains_through_the_loop_under_two_gloo_processes(tmp_path):
    script = tmp_path / "recipes_ddp.py"
    script.write_text(RECIPES_UNDER_DDP)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"audio": 2, "landmarks": 2, "weak": 2, "same_weights": True}
