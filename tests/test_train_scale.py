"""Training features at scale, single process: schedules, accumulation, EMA, layer-wise LR,
frozen encoder, balanced sampling, aux weights, determinism, early stop, adversarial mode,
graceful stop + mid-epoch resume, kill during a checkpoint write, logs and plots."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pixelwise import config
from pixelwise.data import build_dataset
from pixelwise.errors import ConfigError
from pixelwise.hub import resolve
from pixelwise.models import SegmentationOutput, create_model
from pixelwise.runtime import seed_everything
from pixelwise.tasks import semantic as semantic_task
from pixelwise.tasks.semantic import override_aux
from pixelwise.train import loop as train_mod
from pixelwise.train.ema import ModelEMA
from pixelwise.train.interrupt import TrainingInterrupted
from pixelwise.train.optim import param_groups
from pixelwise.train.sampling import WeightedDistributedSampler, balanced_weights, class_presence
from pixelwise.train.schedule import lr_factor

ROOT = Path(__file__).resolve().parents[1]


def cfg_for(out_dir, *, norm="none", data=None, model_args=None, **train):
    d = {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none", "batch_size": 4,
         "train_samples": 16, "val_samples": 8}
    d.update(data or {})
    t = {"epochs": 2, "lr": 0.01, "out_dir": str(out_dir), "log_every": 1, "loss": [{"name": "ce"}],
         "tensorboard": False, "plots": False}
    t.update(train)
    args = {"base_channels": 4, "depth": 2, "norm": norm, **(model_args or {})}
    return config.from_dict({"model": {"name": "unet", "args": args}, "data": d, "train": t})


def weights(run, sub="last"):
    return load_file(str(Path(run) / sub / "model.safetensors"))


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max())


# --- schedules -----------------------------------------------------------------------------

def test_schedules_match_their_formulas():
    total, warm, power = 20, 4, 0.9
    steps = np.arange(total)
    # Written as arrays over all steps, independently of the scalar implementation.
    ramp = (steps + 1) / warm
    progress = np.clip((steps - warm) / (total - warm), 0, 1)
    expected = {"poly": np.where(steps < warm, ramp, (1 - progress) ** power),
                "cosine": np.where(steps < warm, ramp, np.cos(np.pi * progress / 2) ** 2),  # (1+cos x)/2 = cos²(x/2)
                "constant": np.where(steps < warm, ramp, 1.0)}
    for kind, want in expected.items():
        got = [lr_factor(int(s), kind=kind, total_steps=total, warmup_steps=warm, power=power) for s in steps]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=kind)
    assert lr_factor(4, kind="cosine", total_steps=total, warmup_steps=warm) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="train.schedule 'step'"):
        lr_factor(0, kind="step", total_steps=10)


def test_logged_lr_follows_the_cosine_schedule_with_warmup(tmp_path):
    cfg = cfg_for(tmp_path / "run", schedule="cosine", warmup_steps=2, epochs=2, lr=0.1)
    train_mod.train(cfg, progress=False)
    with open(tmp_path / "run" / "log.csv", newline="") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    total = 8  # 16 samples / batch 4 * 2 epochs
    # Row k is written after step k+1 and shows the LR the next step uses.
    want = [0.1 * (min(s + 1, 2) / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / (total - 2))))
            for s in range(1, total + 1)]
    np.testing.assert_allclose(lrs, want, rtol=1e-9, atol=1e-12)


# --- accumulation, EMA, parameter groups, freezing ------------------------------------------

def test_accumulating_two_batches_of_two_equals_one_batch_of_four(tmp_path):
    big = cfg_for(tmp_path / "big", max_steps=1, optimizer="sgd")
    small = cfg_for(tmp_path / "small", max_steps=1, optimizer="sgd", accumulate=2, data={"batch_size": 2})
    train_mod.train(big, progress=False)
    train_mod.train(small, progress=False)
    start = _initial_weights(big)
    wb, ws = weights(tmp_path / "big"), weights(tmp_path / "small")
    assert any(not torch.equal(wb[k], start[k]) for k in wb)  # the step did something
    assert_same(wb, ws, atol=1e-6)
    big_log = (tmp_path / "big" / "log.csv").read_text().splitlines()[1]
    small_log = (tmp_path / "small" / "log.csv").read_text().splitlines()[1]
    assert float(big_log.split(",")[2]) == pytest.approx(float(small_log.split(",")[2]), abs=1e-5)


def _initial_weights(cfg):
    seed_everything(cfg.train.seed)
    return {k: v.clone() for k, v in semantic_task.build_model(cfg).state_dict().items()}


def test_model_ema_matches_the_closed_form():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    decay = 0.8
    ema = ModelEMA(model, decay=decay)
    history = [{k: v.clone() for k, v in model.named_parameters()}]
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        ema.update(model)
        history.append({k: v.clone() for k, v in model.named_parameters()})
    n = len(history) - 1
    for name, value in ema.module.named_parameters():
        # e_n = d^n w_0 + sum_{k=1..n} (1 - d) d^(n-k) w_k
        want = decay**n * history[0][name] + sum((1 - decay) * decay ** (n - k) * history[k][name]
                                                 for k in range(1, n + 1))
        assert torch.allclose(value, want, atol=1e-6), name
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)  # buffers copied
    with pytest.raises(ConfigError, match="ema_decay"):
        ModelEMA(model, decay=1.0)


def test_training_with_ema_saves_and_evaluates_the_average(tmp_path, monkeypatch):
    seen = []
    real_update = ModelEMA.update

    def recording(self, model):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        real_update(self, model)

    monkeypatch.setattr(ModelEMA, "update", recording)
    cfg = cfg_for(tmp_path / "run", epochs=1, ema_decay=0.5)
    start = _initial_weights(cfg)
    train_mod.train(cfg, progress=False)
    ema = {k: start[k].clone() for k in start}
    for w in seen:
        for k in ema:
            ema[k] = 0.5 * ema[k] + 0.5 * w[k]
    best = weights(tmp_path / "run", "best")
    assert_same(best, ema, atol=1e-6)
    extras = torch.load(tmp_path / "run" / "last" / "trainer.pt", weights_only=True)["extras"]
    assert_same(extras["ema"], ema, atol=1e-6)
    raw = weights(tmp_path / "run")
    assert any(not torch.allclose(raw[k], best[k]) for k in raw)  # best/ is the average, not the raw weights


def test_encoder_gets_its_own_learning_rate():
    model = create_model("unet", num_classes=3, base_channels=4, depth=2, norm="batch")
    groups = param_groups(model, lr=0.01, weight_decay=1e-4, encoder_lr_mult=0.1)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    for g in groups:
        in_enc = {id(p) in encoder_ids for p in g["params"]}
        assert len(in_enc) == 1
        assert g["lr"] == pytest.approx(0.001 if in_enc.pop() else 0.01)
        assert g["weight_decay"] == (1e-4 if all(p.ndim > 1 for p in g["params"]) else 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_encoder_moves_only_after_the_warm_start(tmp_path):
    frozen = cfg_for(tmp_path / "a", max_steps=2, freeze_encoder_steps=2, epochs=1)
    later = cfg_for(tmp_path / "b", max_steps=3, freeze_encoder_steps=2, epochs=1)
    start = _initial_weights(frozen)
    train_mod.train(frozen, progress=False)
    train_mod.train(later, progress=False)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    enc = [k for k in start if k.startswith("encoder.")]
    dec = [k for k in start if not k.startswith("encoder.")]
    assert enc and dec
    assert all(torch.equal(wa[k], start[k]) for k in enc)
    assert any(not torch.equal(wa[k], start[k]) for k in dec)
    assert any(not torch.equal(wb[k], start[k]) for k in enc)


# --- sampling, aux weights ------------------------------------------------------------------

def test_class_balanced_weights_and_sampler():
    presence = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1]], dtype=torch.bool)
    # f = [1, 1/4, 1/4] -> image weights max(1/f over present classes)
    assert balanced_weights(presence).tolist() == [4.0, 1.0, 1.0, 4.0]
    w = torch.tensor([1.0, 1.0, 1.0, 97.0])
    one = WeightedDistributedSampler(w, num_replicas=1, seed=3)
    shards = [WeightedDistributedSampler(w, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for s in (one, *shards):
        s.set_epoch(5)
    order = list(one)
    assert sorted(list(shards[0]) + list(shards[1])) == sorted(order)
    assert list(shards[0]) == order[0::2]
    big = WeightedDistributedSampler(w.repeat(250), seed=0)
    counts = np.bincount(np.array(list(big)) % 4, minlength=4)
    assert counts[3] / counts.sum() == pytest.approx(0.97, abs=0.02)


def test_balanced_sampling_computes_and_caches_class_presence(tmp_path):
    cfg = cfg_for(tmp_path / "run", max_steps=2, balanced_sampling=True)
    train_mod.train(cfg, progress=False)
    cached = json.loads((tmp_path / "run" / "class_presence.json").read_text())
    ds = build_dataset(cfg.data, "train", train=False)
    want = [[int(c in set(np.unique(ds[i]["mask"].numpy()).tolist())) for c in range(5)] for i in range(len(ds))]
    assert cached == want
    (tmp_path / "run" / "class_presence.json").write_text(json.dumps([[1, 0, 0, 0, 0]] * len(ds)))
    assert class_presence(ds, 5, cache=tmp_path / "run" / "class_presence.json")[:, 1:].sum() == 0  # reused


def test_aux_weight_overrides_the_models_weights():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    out = override_aux(SegmentationOutput(logits, [aux], [0.4]), 0.25)
    loss = semantic_task.compute_loss(torch.nn.CrossEntropyLoss(), out, target)
    want = F.cross_entropy(logits, target) + 0.25 * F.cross_entropy(aux, target)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert override_aux(SegmentationOutput(logits, [aux], [0.4]), None).aux_weights == [0.4]


# --- reproducibility, early stop --------------------------------------------------------------

def test_deterministic_mode_gives_bit_identical_weights(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = cfg_for(tmp_path / name, norm="batch", epochs=1, deterministic=True,
                      data={"augment": "standard", "num_workers": 1})
        train_mod.train(cfg, progress=False)
        runs.append(weights(tmp_path / name))
    assert_same(*runs)
    assert not torch.are_deterministic_algorithms_enabled()  # the global switch is restored afterwards


def test_early_stopping_on_a_flat_validation_miou(tmp_path):
    # lr 1e-30: no weight moves in float32 (lr 0 is refused by the config check).
    cfg = cfg_for(tmp_path / "run", epochs=6, lr=1e-30, early_stop_patience=2, schedule="constant")
    state = train_mod.train(cfg, progress=False)
    # Validation 1 sets the best; 2 and 3 do not beat it (nothing changes) -> stop after epoch 3.
    assert state["epoch"] == 3 and state["stopped_early"] is True
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 3


# --- graceful stop, mid-epoch resume, adversarial mode ---------------------------------------

def _interrupt_at(monkeypatch, call, sig=signal.SIGINT):
    """Send ``sig`` to this process during the ``call``-th loss computation (inside a step)."""
    real = semantic_task.compute_loss
    calls = {"n": 0}

    def signalling(loss_fn, output, target):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), sig)
        return real(loss_fn, output, target)

    monkeypatch.setattr(semantic_task, "compute_loss", signalling)


@pytest.mark.parametrize("sig,extra", [
    (signal.SIGINT, {"accumulate": 2, "ema_decay": 0.9, "schedule": "cosine", "warmup_steps": 2,
                     "data": {"batch_size": 2, "augment": "standard", "num_workers": 1}}),
    (signal.SIGTERM, {"adversarial": {"weight": 0.1, "lr": 1e-3, "width": 8}}),
], ids=["sigint-accumulate-ema-cosine-worker", "sigterm-adversarial"])
def test_stop_signal_saves_mid_epoch_and_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, sig, extra):
    extra = dict(extra)
    data = extra.pop("data", None)
    reference = cfg_for(tmp_path / "ref", epochs=2, data=data, **extra)
    train_mod.train(reference, progress=False)

    cfg = cfg_for(tmp_path / "run", epochs=2, data=data, **extra)
    # Whatever the handlers were before (a shell ignores SIGINT in background jobs) comes back after.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _interrupt_at(monkeypatch, call=3 * cfg.train.accumulate, sig=sig)  # during step 3 of 4 in epoch 1
    with pytest.raises(TrainingInterrupted, match=f"{sig.name} at step 3"):
        train_mod.train(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (3, 0, 3)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored
    monkeypatch.undo()

    state = train_mod.train(cfg, resume=True, progress=False)
    assert state["step"] == 8
    assert_same(weights(tmp_path / "ref"), weights(tmp_path / "run"), atol=1e-6)
    ref_x = torch.load(tmp_path / "ref" / "last" / "trainer.pt", weights_only=True)["extras"]
    run_x = torch.load(tmp_path / "run" / "last" / "trainer.pt", weights_only=True)["extras"]
    for name in ("ema", "adversarial"):
        if name in ref_x:
            ref_w = ref_x[name] if name == "ema" else ref_x[name]["discriminator"]
            run_w = run_x[name] if name == "ema" else run_x[name]["discriminator"]
            assert_same(ref_w, run_w, atol=1e-6)
    steps = [int(r.split(",")[0]) for r in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 9))


def test_adversarial_mode_updates_both_networks(tmp_path, monkeypatch):
    from pixelwise.train.adversarial import AdversarialTrainer

    snapshots = []
    real_step = AdversarialTrainer.discriminator_step

    def recording(self, image, logits, target):
        before = {k: v.clone() for k, v in self.discriminator.state_dict().items()}
        loss = real_step(self, image, logits, target)
        snapshots.append((before, {k: v.clone() for k, v in self.discriminator.state_dict().items()}))
        return loss

    monkeypatch.setattr(AdversarialTrainer, "discriminator_step", recording)
    cfg = cfg_for(tmp_path / "run", max_steps=3, adversarial={"weight": 0.5, "lr": 1e-3, "width": 8})
    start = _initial_weights(cfg)
    train_mod.train(cfg, progress=False)
    assert len(snapshots) == 3
    assert all(any(not torch.equal(b[k], a[k]) for k in b) for b, a in snapshots)  # D moved every step
    w = weights(tmp_path / "run")
    assert any(not torch.equal(w[k], start[k]) for k in w)  # S moved
    with pytest.raises(ConfigError, match="unknown key"):
        train_mod.train(cfg_for(tmp_path / "bad", max_steps=1, adversarial={"wieght": 1}), progress=False)


# --- kill -9 during a checkpoint write ---------------------------------------------------------

SLOW_SAVE = """
import sys, time, pathlib, torch
from pixelwise import config
from pixelwise.train import checkpoint as state
from pixelwise.train import loop as train
real, calls = torch.save, {"n": 0}
def slow(obj, f, *a, **k):
    calls["n"] += 1
    if calls["n"] == 2:  # the second checkpoint: write half, announce, hang until killed
        pathlib.Path(f).write_bytes(b"partial")
        pathlib.Path(sys.argv[2]).touch()
        time.sleep(60)
    return real(obj, f, *a, **k)
state.torch.save = slow
train.train(config.load(sys.argv[1]), progress=False)
"""


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    cfg = cfg_for(tmp_path / "run", epochs=3)
    path = tmp_path / "c.yaml"
    config.save(cfg, path)
    marker = tmp_path / "writing"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path), str(marker)], env=env)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the second checkpoint write never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = resolve(tmp_path / "run" / "last")
    assert json.loads((folder / "trainer.json").read_text())["epoch"] == 1
    torch.load(folder / "trainer.pt", weights_only=True)  # the surviving copy is whole
    state = train_mod.train(cfg, resume=True, progress=False)
    assert state["epoch"] == 3 and state["step"] == 12
    reference = cfg_for(tmp_path / "ref", epochs=3)
    train_mod.train(reference, progress=False)
    assert_same(weights(tmp_path / "ref"), weights(tmp_path / "run"), atol=1e-6)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".last")]


# --- observability, compile -----------------------------------------------------------------------

def test_run_folder_has_tensorboard_scalars_and_plots(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = cfg_for(tmp_path / "run", epochs=2, tensorboard=True, plots=True)
    train_mod.train(cfg, progress=False)
    run = tmp_path / "run"
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]
    assert losses == pytest.approx({int(r[0]): float(r[2]) for r in rows}, rel=1e-6)
    assert [e.step for e in acc.Scalars("val/miou")] == [4, 8]
    assert {"train/lr", "train/images_per_s"} <= set(acc.Tags()["scalars"])
    for name in ("curves.png", "confusion.png", "class_iou.png", "config.yaml", "best/model.safetensors"):
        assert (run / name).is_file(), name
    assert Image.open(run / "confusion.png").size[0] > 100


def test_compile_flag_trains_and_saves_plain_weights(tmp_path):
    # The eager backend exercises the torch.compile path without minutes of inductor codegen.
    cfg = cfg_for(tmp_path / "run", max_steps=2, compile=True, compile_backend="eager")
    train_mod.train(cfg, progress=False)
    w = weights(tmp_path / "run")
    assert w.keys() == _initial_weights(cfg).keys()
