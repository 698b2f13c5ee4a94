"""Iteration-based schedules: validation and last/ every N steps (train.val_every_steps,
train.save_every_steps), mid-epoch, through the same code as the epoch-end ones; a run killed
or stopped after a mid-epoch save resumes at that step with the data order and history of an
uninterrupted run."""

import csv
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from pixelwise import config
from pixelwise.errors import ConfigError
from pixelwise.tasks import semantic as semantic_task
from pixelwise.train import loop as train_mod
from pixelwise.train.interrupt import TrainingInterrupted
from pixelwise.train.run_dir import CHANGEABLE_ON_RESUME


def cfg_for(out_dir, **train):
    # 18 images at batch 4: 4 steps per epoch (drop_last leaves 2 out, a different 2 each epoch).
    data = {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "standard", "batch_size": 4,
            "train_samples": 18, "val_samples": 8}
    t = {"max_steps": 10, "lr": 0.01, "out_dir": str(out_dir), "log_every": 1, "loss": [{"name": "ce"}],
         "tensorboard": False, "plots": False, **train}
    return config.from_dict({"model": {"name": "unet", "args": {"base_channels": 4, "depth": 2, "norm": "batch"}},
                             "data": data, "train": t})


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def record_steps(monkeypatch):
    """Per training step, the names of the images in its batch; and per save of last/, its
    (step, epoch, epoch_step)."""
    names, saves = [], []
    forward, save = semantic_task.SemanticTask.forward, train_mod.save_train_state

    def recording_forward(self, model, batch, **kw):
        names.append(tuple(batch["name"]))
        return forward(self, model, batch, **kw)

    def recording_save(folder, **kw):
        saves.append((kw["trainer"]["step"], kw["trainer"]["epoch"], kw["trainer"]["epoch_step"]))
        return save(folder, **kw)

    monkeypatch.setattr(semantic_task.SemanticTask, "forward", recording_forward)
    monkeypatch.setattr(train_mod, "save_train_state", recording_save)
    return names, saves


def test_step_keys_are_checked_at_load_with_the_fix():
    ok = cfg_for("runs/x", val_every_steps=5, save_every_steps=7)
    assert (ok.train.val_every_steps, ok.train.save_every_steps) == (5, 7)
    assert cfg_for("runs/x").train.val_every_steps is None and cfg_for("runs/x").train.save_every_steps is None
    with pytest.raises(ConfigError, match=r"'train.val_every_steps' must be an integer >= 1.*got 0"):
        cfg_for("runs/x", val_every_steps=0)
    with pytest.raises(ConfigError, match=r"'train.save_every_steps' must be an integer >= 1.*got -3"):
        cfg_for("runs/x", save_every_steps=-3)
    with pytest.raises(ConfigError, match=r"'train.val_every_steps' must be int or null"):
        cfg_for("runs/x", val_every_steps="ten")
    # Every 2 epochs or every 50 steps? Ambiguous: refused, naming both keys.
    with pytest.raises(ConfigError, match=r"'train.val_every' \(2, epochs\) and 'train.val_every_steps' \(50"):
        cfg_for("runs/x", val_every=2, val_every_steps=50)
    # How often a run reports and saves may change on --resume, as val_every may.
    assert {"train.val_every_steps", "train.save_every_steps"} <= CHANGEABLE_ON_RESUME


def test_validation_every_n_steps_runs_mid_epoch_and_at_the_last_step(tmp_path, monkeypatch, capsys):
    calls = []
    evaluate = semantic_task.SemanticTask.evaluate

    def counting(self, model, loader, **kw):
        calls.append(model.training)
        return evaluate(self, model, loader, **kw)

    monkeypatch.setattr(semantic_task.SemanticTask, "evaluate", counting)
    _, saves = record_steps(monkeypatch)
    state = train_mod.train(cfg_for(tmp_path / "run", val_every_steps=3), progress=True)
    out = capsys.readouterr().out
    assert "validation every 3 steps and at step 10; last/ every epoch, at step 10" in out
    assert "epoch 2, step 6, train_loss" in out  # a mid-epoch validation is printed like an epoch-end one
    assert len(calls) == 4  # steps 3, 6, 9 and the last, 10; not at the epoch ends (4, 8)
    header, *body = rows(tmp_path / "run" / "metrics.csv")
    assert header == ["epoch", "step", "train_loss", "miou", "pixel_accuracy", "mean_dice"]
    assert [(int(r[0]), int(r[1])) for r in body] == [(1, 3), (2, 6), (3, 9), (3, 10)]
    assert all(len(r) == len(header) and all(r) for r in body)  # one header, every row filled
    assert [(h["step"], h["miou"]) for h in state["history"]] == [(int(r[1]), float(r[3])) for r in body]
    # best/ comes from the same logic: the best validation's step and score.
    best_step, best_miou = max(((int(r[1]), float(r[3])) for r in body), key=lambda x: x[1])
    assert state["best_miou"] == pytest.approx(best_miou)
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["step"] == best_step
    assert saves == [(4, 1, 0), (8, 2, 0), (10, 3, 0)]  # save_every_steps unset: last/ per epoch, as before
    # Training goes on in training mode after a mid-epoch validation (BatchNorm batch statistics).
    assert state["step"] == 10


def test_early_stop_counts_mid_epoch_validations(tmp_path, monkeypatch):
    _, saves = record_steps(monkeypatch)
    # lr 1e-30: nothing moves, the mIoU is flat; validation 1 (step 3) sets the best, 2 and 3 do not.
    cfg = cfg_for(tmp_path / "run", max_steps=40, lr=1e-30, schedule="constant", val_every_steps=3,
                  early_stop_patience=2)
    state = train_mod.train(cfg, progress=False)
    assert state["stopped_early"] is True and state["step"] == 9
    assert saves[-1] == (9, 2, 1)  # the stop is saved mid-epoch (step 1 of epoch 3) though no save was due
    saved = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert saved["stopped_early"] is True and saved["step"] == 9
    assert len(rows(tmp_path / "run" / "metrics.csv")) == 1 + 3


def test_save_every_n_steps_writes_last_mid_epoch(tmp_path, monkeypatch):
    _, saves = record_steps(monkeypatch)
    train_mod.train(cfg_for(tmp_path / "run", save_every_steps=3), progress=False)
    # (step, finished epochs, steps into the next): every 3 steps and the last; not per epoch.
    assert saves == [(3, 0, 3), (6, 1, 2), (9, 2, 1), (10, 3, 0)]
    header, *body = rows(tmp_path / "run" / "metrics.csv")
    assert [int(r[1]) for r in body] == [4, 8, 10]  # validation stays per epoch (val_every)


def _assert_same_weights(a, b):
    wa, wb = load_file(str(a / "last" / "model.safetensors")), load_file(str(b / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key].double(), wb[key].double(), atol=1e-6, rtol=0), key


def _assert_same_history(a, b):
    assert [(h["epoch"], h["step"]) for h in a] == [(h["epoch"], h["step"]) for h in b]
    for ha, hb in zip(a, b):
        for key, value in ha.items():
            assert hb[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key


def test_a_run_killed_after_a_mid_epoch_save_resumes_there_as_if_never_killed(tmp_path, monkeypatch):
    settings = {"val_every_steps": 4, "save_every_steps": 3}
    names, _ = record_steps(monkeypatch)
    reference = train_mod.train(cfg_for(tmp_path / "ref", **settings), progress=False)
    ref_names = list(names)
    assert len(ref_names) == 10

    names.clear()
    forward = semantic_task.SemanticTask.forward  # the recording one

    def dying(self, model, batch, **kw):
        if len(names) == 7:  # step 8: killed after the save at step 6 (epoch 2, its step 2), before step 9's
            raise RuntimeError("killed")
        return forward(self, model, batch, **kw)

    cfg = cfg_for(tmp_path / "run", **settings)
    with monkeypatch.context() as m:
        m.setattr(semantic_task.SemanticTask, "forward", dying)
        with pytest.raises(RuntimeError, match="killed"):
            train_mod.train(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert (saved["step"], saved["epoch"], saved["epoch_step"]) == (6, 1, 2)
    assert len(rows(tmp_path / "run" / "log.csv")) == 1 + 7  # step 7 was logged, then lost

    names.clear()
    state = train_mod.train(cfg, resume=True, progress=False)
    assert state["step"] == reference["step"] == 10
    assert names == ref_names[6:]  # steps 7..10 saw the same images (order, skip) as the uninterrupted run
    _assert_same_weights(tmp_path / "ref", tmp_path / "run")
    _assert_same_history(reference["history"], state["history"])
    assert [int(r[0]) for r in rows(tmp_path / "run" / "log.csv")[1:]] == list(range(1, 11))
    assert [r[:2] for r in rows(tmp_path / "run" / "metrics.csv")] == [r[:2] for r in
                                                                      rows(tmp_path / "ref" / "metrics.csv")]


@pytest.mark.parametrize("settings,stop_step", [({"val_every_steps": 3}, 3), ({}, 4)],
                         ids=["validation-due-mid-epoch", "epoch-end-due"])
def test_a_stop_before_a_due_validation_runs_it_on_resume(tmp_path, monkeypatch, settings, stop_step):
    reference = train_mod.train(cfg_for(tmp_path / "ref", **settings), progress=False)

    real, calls = semantic_task.compute_loss, {"n": 0}

    def signalling(loss_fn, output, target):
        calls["n"] += 1
        if calls["n"] == stop_step:  # during that step: the loop finishes it, saves, and stops
            os.kill(os.getpid(), signal.SIGINT)
        return real(loss_fn, output, target)

    cfg = cfg_for(tmp_path / "run", **settings)
    with monkeypatch.context() as m:
        m.setattr(semantic_task, "compute_loss", signalling)
        with pytest.raises(TrainingInterrupted, match=f"at step {stop_step}"):
            train_mod.train(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert (saved["step"], saved["due"]) == (stop_step, True)  # saved before that step's validation
    assert not (tmp_path / "run" / "metrics.csv").exists()

    state = train_mod.train(cfg, resume=True, progress=False)
    _assert_same_history(reference["history"], state["history"])
    assert state["history"][0]["step"] == stop_step and state["history"][0]["miou"] is not None
    _assert_same_weights(tmp_path / "ref", tmp_path / "run")


def test_curves_put_validations_at_their_step(tmp_path, monkeypatch):
    import matplotlib.axes

    from pixelwise.train.report import plot_curves

    (tmp_path / "log.csv").write_text("step,epoch,loss\n1,1,1.0\n6,1,0.5\n")
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss,miou\n1,3,1.0,0.2\n1,6,0.5,0.4\n")
    lines = []
    real = matplotlib.axes.Axes.plot

    def recording(self, x, y, *args, **kw):
        lines.append((list(x), list(y)))
        return real(self, x, y, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording)
    plot_curves(tmp_path)
    assert lines[1] == ([3, 6], [0.2, 0.4])  # two validations in epoch 1, at steps 3 and 6


def test_every_train_key_has_a_row_in_the_training_docs():
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    missing = [f.name for f in dataclasses.fields(config.TrainCfg) if f"| `{f.name}` |" not in doc]
    assert missing == [], f"docs/training.md has no row for train.{missing}"
