"""Instance engine through the CLI: train (losses fall, checkpoints, resume), eval (COCO AP),
predict (overlays, semantic PNGs, COCO-RLE JSON that pycocotools loads)."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pixelwise import config
from pixelwise.cli import main
from pixelwise.data import read_mask, write_image
from pixelwise.data.instances import SyntheticInstances, instance_collate
from pixelwise.errors import TrainingError
from pixelwise.metrics.coco import STATS
from pixelwise.postprocess.instances import instances_to_semantic
from pixelwise.tasks import instance as instance_task
from pixelwise.tasks.instance import evaluate_instances, load_instance_model
from pixelwise.train.loop import train

MODEL_ARGS = {"min_size": 64, "max_size": 64, "fpn_channels": 16, "anchor_scale": 4.0, "representation_size": 32,
              "mask_channels": 16, "mask_layers": 2, "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100,
              "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "rpn_batch_size_per_image": 32,
              "box_batch_size_per_image": 32, "box_score_thresh": 0.0, "box_detections_per_img": 20}


def _config(tmp_path, **train):
    data = {
        "model": {"name": "maskrcnn", "encoder": "test_resnet", "args": MODEL_ARGS},
        "data": {"dataset": "synthetic_instances", "num_classes": 5, "crop_size": 64, "batch_size": 4,
                 "train_samples": 8, "val_samples": 4, "args": {"max_objects": 3}},
        "train": {"max_steps": 12, "optimizer": "adamw", "lr": 0.002, "warmup_steps": 2, "schedule": "constant",
                  "val_every": 3, "log_every": 1, "device": "cpu", "grad_clip": 10.0,
                  "out_dir": str(tmp_path / "run"), **train},
    }
    path = tmp_path / "maskrcnn.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("instance")
    path = _config(tmp_path)
    assert main(["train", str(path), "--quiet"]) == 0
    return tmp_path, path


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_losses_fall_and_checkpoints_are_written(trained, capsys):
    tmp_path, _ = trained
    run = tmp_path / "run"
    rows = _rows(run / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:3])
    assert float(rows[-1]["loss_mask"]) < float(rows[0]["loss_mask"])
    metrics = _rows(run / "metrics.csv")
    assert len(metrics) == 6 and metrics[2]["mask_AP"] != "" and metrics[0]["mask_AP"] == ""
    for folder in ("best", "last"):
        assert (run / folder / "config.json").is_file() and (run / folder / "model.safetensors").is_file()
    assert (run / "last" / "trainer.json").is_file()
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["task"] == "instance" and saved["data"]["class_names"][1] == "circle"


def test_evaluation_gives_valid_coco_metrics(trained, capsys):
    tmp_path, path = trained
    model, _ = load_instance_model(tmp_path / "run" / "last")
    dataset = SyntheticInstances(8, image_size=64, max_objects=3)  # the training images
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=instance_collate)
    scores = evaluate_instances(model, loader, class_names=["bg", "circle", "rectangle", "triangle", "star"],
                                progress=False)
    for kind in ("bbox", "segm"):
        assert set(scores[kind]) == set(STATS)
        for value in scores[kind].values():
            assert math.isnan(value) or 0.0 <= value <= 1.0
        assert scores[kind]["AP50"] >= scores[kind]["AP75"]
    assert scores["bbox"]["AP50"] > 0.0 and scores["segm"]["AP50"] > 0.0
    capsys.readouterr()
    assert main(["eval", str(path), "--checkpoint", str(tmp_path / "run" / "best"), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "box" in table and "mask" in table and "AP50" in table


def test_predict_writes_overlays_semantic_and_loadable_coco_json(trained, capsys):
    from pycocotools.coco import COCO

    tmp_path, _ = trained
    images = tmp_path / "images"
    dataset = SyntheticInstances(2, image_size=64, seed=9)
    for i in range(2):
        write_image(images / f"img{i}.png", dataset.generate(i)[0])
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "run" / "best"), str(images), "--out", str(out), "--quiet"]) == 0
    for i in range(2):
        assert (out / f"img{i}_instances.png").is_file()
        semantic = read_mask(out / f"img{i}_semantic.png")
        assert semantic.shape == (64, 64) and semantic.max() <= 4
    coco = COCO(str(out / "images.json"))
    results = coco.loadRes(str(out / "predictions.json"))
    anns = results.loadAnns(results.getAnnIds())
    assert 0 < len(anns) <= 40 and {a["image_id"] for a in anns} <= {1, 2}
    masks = np.stack([results.annToMask(a) for a in anns if a["image_id"] == 1])
    assert masks.shape[1:] == (64, 64)
    # The semantic PNG is the instance-to-semantic map of the same detections.
    model, _ = load_instance_model(tmp_path / "run" / "best")
    with torch.no_grad():
        det = model([torch.from_numpy(dataset.generate(0)[0]).permute(2, 0, 1).float() / 255])[0]
    expected = instances_to_semantic(det.masks, det.labels, det.scores).numpy()
    assert np.array_equal(read_mask(out / "img0_semantic.png"), expected)

    # A rerun keeps both finished images; two torchrun processes write the same detections.
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run" / "best"), str(images), "--out", str(out), "--quiet"]) == 0
    assert "wrote 0 prediction(s)" in capsys.readouterr().out
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "pixelwise", "predict", str(tmp_path / "run" / "best"), str(images), "--out",
                           str(tmp_path / "pred2"), "--quiet"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0/2: wrote 1 prediction(s)" in done.stdout and "rank 1/2: wrote 1 prediction(s)" in done.stdout
    one, two = (json.loads((o / "images.json").read_text()) for o in (out, tmp_path / "pred2"))
    assert one == two
    a, b = (json.loads((o / "predictions.json").read_text()) for o in (out, tmp_path / "pred2"))
    assert [(r["image_id"], r["category_id"]) for r in a] == [(r["image_id"], r["category_id"]) for r in b]
    np.testing.assert_allclose([r["bbox"] for r in a], [r["bbox"] for r in b], atol=1e-2)
    for i in range(2):
        assert np.array_equal(read_mask(out / f"img{i}_semantic.png"),
                              read_mask(tmp_path / "pred2" / f"img{i}_semantic.png"))


def test_resume_continues_the_step_count(trained):
    tmp_path, path = trained
    assert main(["train", str(path), "--resume", "--quiet", "--set", "train.max_steps=14"]) == 0
    rows = _rows(tmp_path / "run" / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 15))
    assert json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())["step"] == 14


def test_nan_loss_names_the_images(tmp_path, monkeypatch):
    cfg = config.load(_config(tmp_path, max_steps=2))
    build = instance_task.build_instance_model

    def poisoned(cfg):
        model = build(cfg)
        forward = model.forward
        model.forward = lambda images, targets=None: {k: v * float("nan") for k, v in forward(images, targets).items()}
        return model

    monkeypatch.setattr(instance_task, "build_instance_model", poisoned)
    with pytest.raises(TrainingError, match="synthetic_instances_0000"):
        train(cfg, progress=False)


def test_shipped_maskrcnn_config_trains(tmp_path, capsys):
    """configs/maskrcnn_synthetic.yaml (the one docs/instance.md measures) trains as written,
    only the sample counts and step budget shrunk."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_synthetic.yaml"
    raw = config.load(path)
    assert raw.model.name == "maskrcnn" and raw.model.args["min_size"] == 160 and raw.data.crop_size == 96
    overrides = [f"train.out_dir={tmp_path / 'run'}", "train.max_steps=2", "data.train_samples=8",
                 "data.val_samples=2", "train.val_every=1"]
    assert main(["train", str(path), "--quiet", *sum((["--set", o] for o in overrides), [])]) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
