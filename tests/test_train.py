"""The training engine end to end on tiny data: learning, checkpoints, resume, NaN, CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pixelwise import config
from pixelwise.cli import main
from pixelwise.errors import TrainingError
from pixelwise.tasks import semantic as semantic_task
from pixelwise.train import loop as train_mod

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(out_dir, **train):
    data = {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none", "batch_size": 8,
            "train_samples": 64, "val_samples": 16}
    t = {"epochs": 3, "lr": 0.01, "out_dir": str(out_dir), "log_every": 2,
         "loss": [{"name": "ce"}, {"name": "dice", "weight": 0.5}]}
    t.update(train)
    return config.from_dict({"model": {"name": "unet", "args": {"base_channels": 4, "depth": 2, "norm": "batch"}},
                             "data": data, "train": t})


def test_train_writes_run_folder_and_learns(tmp_path):
    cfg = tiny_cfg(tmp_path / "run", epochs=4, lr=0.02)
    state = train_mod.train(cfg, progress=False)
    run = tmp_path / "run"
    assert state["step"] == 4 * (64 // 8)
    for name in ("config.yaml", "log.csv", "metrics.csv", "history.json", "best/config.json",
                 "best/model.safetensors", "last/trainer.pt", "last/trainer.json"):
        assert (run / name).exists(), name
    losses = [float(line.split(",")[2]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # the loss falls
    assert 0 <= state["best_miou"] <= 1
    assert len(state["history"]) == 4 and "miou" in state["history"][-1]
    assert not any(p.name.startswith(".") for p in run.iterdir())  # no temporary folders left


def test_max_steps_and_bf16_autocast(tmp_path, real_bf16):
    cfg = tiny_cfg(tmp_path / "run", max_steps=5, amp="bf16", channels_last=True, grad_clip=1.0, optimizer="sgd")
    state = train_mod.train(cfg, progress=False)
    assert state["step"] == 5


def test_nan_loss_stops_with_step_and_files_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path / "run", epochs=3)
    real = semantic_task.compute_loss
    calls = {"n": 0}

    def poisoned(loss_fn, output, target):
        calls["n"] += 1
        loss = real(loss_fn, output, target)
        return loss * float("nan") if calls["n"] == 11 else loss  # step 10, in epoch 2

    monkeypatch.setattr(semantic_task, "compute_loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 10 \(epoch 2\).*synthetic_\d{5}.*train.lr"):
        train_mod.train(cfg, progress=False)
    state = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert state["step"] == 8 and state["epoch"] == 1  # the last good epoch, intact
    weights = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def _weights(run):
    return load_file(str(run / "last" / "model.safetensors"))


def test_kill_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    epochs = 12
    reference = tiny_cfg(tmp_path / "ref", epochs=epochs)
    train_mod.train(reference, progress=False)

    killed = tiny_cfg(tmp_path / "killed", epochs=epochs)
    cfg_path = tmp_path / "killed.yaml"
    config.save(killed, cfg_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "pixelwise", "train", str(cfg_path), "--quiet"], env=env)
    trainer_json = tmp_path / "killed" / "last" / "trainer.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if trainer_json.exists() and json.loads(trainer_json.read_text())["epoch"] >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = json.loads(trainer_json.read_text())["epoch"]
    assert interrupted_at < epochs, "the run finished before it could be killed"

    assert main(["train", str(cfg_path), "--resume", "--quiet"]) == 0
    final = json.loads(trainer_json.read_text())
    assert final["step"] == epochs * 8 and final["epoch"] == epochs
    ref_w, res_w = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    for key in ref_w:
        assert torch.allclose(ref_w[key].float(), res_w[key].float(), atol=1e-5), key
    rows = (tmp_path / "killed" / "log.csv").read_text().splitlines()[1:]
    steps = [int(r.split(",")[0]) for r in rows]
    assert steps == sorted(set(steps))  # no duplicated log rows after the resume


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    config.save(tiny_cfg(tmp_path / "nothing"), cfg_path)
    assert main(["train", str(cfg_path), "--resume", "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def _folder_dataset(root, *, bad_label=False, bad_size=False):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(8):
            mask = np.zeros((32, 40), np.uint8)
            mask[8:24, 10:30] = 1
            image = (rng.random((32, 40, 3)) * 60).astype(np.uint8)
            image[mask == 1] += 150
            if bad_label and split == "train" and i == 3:
                mask[0, 0] = 7
            if bad_size and split == "train" and i == 5:
                mask = mask[:30]
            Image.fromarray(image).save(root / split / "images" / f"img{i:02d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"img{i:02d}.png")


def _folder_cfg(tmp_path, root):
    path = tmp_path / "folder.yaml"
    path.write_text(f"""
model: {{name: unet, args: {{base_channels: 4, depth: 2, norm: batch}}}}
data: {{dataset: folder, root: {root}, num_classes: 2, crop_size: 32, augment: standard, batch_size: 4}}
train: {{epochs: 2, lr: 0.01, out_dir: {tmp_path / 'run'}}}
""")
    return path


def test_cli_train_eval_predict_on_a_folder_dataset(tmp_path, capsys):
    root = tmp_path / "data"
    _folder_dataset(root)
    cfg_path = _folder_cfg(tmp_path, root)
    assert main(["train", str(cfg_path), "--quiet"]) == 0
    assert main(["eval", str(cfg_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "class_1" in out
    (root / "val" / "images" / "broken.png").write_bytes(b"\x89PNG garbage")
    assert main(["predict", str(tmp_path / "run" / "best"), str(root / "val" / "images"),
                 "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "wrote 8 prediction(s)" in captured.out and "skipped 1" in captured.out
    assert "broken.png" in captured.out + captured.err
    labels = np.array(Image.open(tmp_path / "pred" / "img00.png"))
    assert labels.shape == (32, 40) and set(np.unique(labels)) <= {0, 1}
    for suffix in ("_color.png", "_overlay.png"):
        assert np.array(Image.open(tmp_path / "pred" / f"img00{suffix}")).shape == (32, 40, 3)


@pytest.mark.parametrize("problem,pattern", [("bad_label", r"img03.*7.*num_classes"),
                                             ("bad_size", r"img05.*30.*32")])
def test_bad_masks_stop_training_with_the_file_named(tmp_path, capsys, problem, pattern):
    root = tmp_path / "data"
    _folder_dataset(root, **{problem: True})
    cfg_path = _folder_cfg(tmp_path, root)
    assert main(["train", str(cfg_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    import re
    assert re.search(pattern, err, re.S), err


def test_config_with_wrong_type_is_rejected_by_the_cli(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: many}\n")
    assert main(["train", str(path)]) == 2
    assert "'train.epochs' must be int" in capsys.readouterr().err


def test_models_command_prints_parameter_counts(capsys):
    assert main(["models", "--params"]) == 0
    out = capsys.readouterr().out
    assert "31,030,658 parameters" in out  # the paper U-Net, 1 -> 2 classes
    assert "fcn8s" in out and "134,489,759 parameters" in out


def test_augmented_training_does_not_depend_on_the_worker_count(tmp_path):
    runs = []
    for workers in (0, 2):
        cfg = tiny_cfg(tmp_path / f"w{workers}", epochs=2)
        cfg.data.augment = "unet"
        cfg.data.num_workers = workers
        train_mod.train(cfg, progress=False)
        runs.append(_weights(tmp_path / f"w{workers}"))
    for key in runs[0]:
        assert torch.allclose(runs[0][key].float(), runs[1][key].float(), atol=1e-6), key


def test_bf16_falls_back_to_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    import pixelwise.runtime as runtime

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    with runtime.autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    runtime._warn_slow_bf16.cache_clear()
    with pytest.warns(RuntimeWarning, match="no native bf16.*running in fp32"):
        ctx = runtime.autocast(torch.device("cpu"), "bf16")
    with ctx:
        assert layer(x).dtype == torch.float32
