"""Multi-process training with torch.distributed (gloo on the CPU, launched by torchrun):
the same numbers as one process over the same global batches, rank-0-only files, a DDP
checkpoint that resumes in one process, and clear errors for a broken launch environment."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixelwise import config
from pixelwise.errors import ConfigError
from pixelwise.train import loop as train_mod
from pixelwise.train.distributed import read_launch_env, setup

ROOT = Path(__file__).resolve().parents[1]


def cfg_for(out_dir, *, batch_size, epochs):
    # No BatchNorm (SyncBatchNorm is CUDA-only), CE only and no augmentation (whose padding adds
    # ignored pixels, unevenly per rank): the loss of a global batch is then the mean of the
    # per-rank losses, so 2 ranks x 2 images must equal 1 process x 4 images.
    return config.from_dict({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2, "norm": "none"}},
        "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none",
                 "batch_size": batch_size, "train_samples": 16, "val_samples": 10},
        "train": {"epochs": epochs, "lr": 0.01, "out_dir": str(out_dir), "log_every": 1, "schedule": "constant",
                  "loss": [{"name": "ce"}], "tensorboard": False, "plots": False, "device": "cpu"}})


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_two_gloo_processes_match_one_process_and_resume_in_one(tmp_path):
    reference = cfg_for(tmp_path / "ref", batch_size=4, epochs=2)
    ref_state = train_mod.train(reference, progress=False)

    ddp_cfg = cfg_for(tmp_path / "ddp", batch_size=2, epochs=1)
    path = tmp_path / "ddp.yaml"
    config.save(ddp_cfg, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "pixelwise", "train", str(path), "--quiet"]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    ref_log, ddp_log = read_csv(tmp_path / "ref" / "log.csv"), read_csv(tmp_path / "ddp" / "log.csv")
    assert [r["step"] for r in ddp_log] == ["1", "2", "3", "4"]  # one row per step: only rank 0 writes
    for mine, theirs in zip(ddp_log, ref_log[:4]):
        assert float(mine["loss"]) == pytest.approx(float(theirs["loss"]), abs=1e-5)
    ddp_metrics = read_csv(tmp_path / "ddp" / "metrics.csv")
    assert float(ddp_metrics[0]["miou"]) == pytest.approx(ref_state["history"][0]["miou"], abs=1e-6)
    assert not [p.name for p in (tmp_path / "ddp").iterdir() if p.name.startswith(".")]

    # The 2-process checkpoint continues in one process with the same global batch.
    resumed = cfg_for(tmp_path / "ddp", batch_size=4, epochs=2)
    state = train_mod.train(resumed, resume=True, progress=False)
    assert state["step"] == ref_state["step"] == 8
    ref_w = load_file(str(tmp_path / "ref" / "last" / "model.safetensors"))
    res_w = load_file(str(tmp_path / "ddp" / "last" / "model.safetensors"))
    for key in ref_w:
        assert torch.allclose(ref_w[key], res_w[key], atol=1e-5, rtol=0), key


@pytest.mark.parametrize("env,pattern", [
    ({"RANK": "0"}, "RANK is set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but RANK is not"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "0 <= RANK < WORLD_SIZE"),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "LOCAL_RANK not set"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
])
def test_inconsistent_launch_environments_are_named(env, pattern):
    with pytest.raises(ConfigError, match=pattern):
        read_launch_env(env, device_type="cpu", cuda_count=0)


def test_more_processes_than_gpus_with_nccl_is_an_error():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h",
           "MASTER_PORT": "1"}
    with pytest.raises(ConfigError, match="4 processes on this node.*only 2 CUDA"):
        read_launch_env(env, device_type="cuda", cuda_count=2)
    assert read_launch_env(env, device_type="cpu", cuda_count=0) == (3, 3, 4)  # gloo needs no GPU
    assert read_launch_env({}, device_type="cpu", cuda_count=0) == (0, 0, 1)


def test_single_process_setup_and_sync_bn_on_cpu(monkeypatch, tmp_path):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    env = setup("cpu")
    assert (env.rank, env.world_size, env.is_main, env.distributed) == (0, 1, True, False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        train_mod.train(cfg_for(tmp_path / "x", batch_size=2, epochs=1), progress=False)
