"""A finished run is never overwritten; --resume continues with the run's own config."""

import yaml

from pixelwise import config
from pixelwise.cli import main
from pixelwise.train.run_dir import config_diff


def _write(path, out_dir, **train):
    t = {"max_steps": 4, "lr": 0.01, "out_dir": str(out_dir), "log_every": 1, "plots": False, **train}
    path.write_text(yaml.safe_dump({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
        "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none", "batch_size": 4,
                 "train_samples": 8, "val_samples": 4},
        "train": t}))
    return path


def test_rerunning_a_config_refuses_and_keeps_the_run(tmp_path, capsys):
    cfg = _write(tmp_path / "c.yaml", tmp_path / "run")
    assert main(["train", str(cfg), "--quiet"]) == 0
    best = (tmp_path / "run" / "best" / "model.safetensors").read_bytes()
    log = (tmp_path / "run" / "log.csv").read_text()
    capsys.readouterr()
    assert main(["train", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert f"train.out_dir={tmp_path / 'run-2'}" in err  # a free folder name to use instead
    assert (tmp_path / "run" / "best" / "model.safetensors").read_bytes() == best  # nothing lost
    assert (tmp_path / "run" / "log.csv").read_text() == log
    assert main(["train", str(cfg), "--quiet", "--overwrite", "--set", "train.max_steps=2"]) == 0
    assert (tmp_path / "run" / "last" / "trainer.json").is_file()
    assert "step" in (tmp_path / "run" / "log.csv").read_text()


def test_resume_uses_the_runs_config_and_lists_what_it_cannot_change(tmp_path, capsys):
    cfg = _write(tmp_path / "c.yaml", tmp_path / "run")
    assert main(["train", str(cfg), "--quiet", "--set", "train.max_steps=2", "--set", "train.lr=0.05"]) == 0
    saved = config.load(tmp_path / "run" / "config.yaml")
    assert saved.train.max_steps == 2 and saved.train.lr == 0.05
    capsys.readouterr()
    # The YAML without the original --set: lr differs from the run's -> refused, named, nothing changed.
    assert main(["train", str(cfg), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.05 in the run, 0.01 now" in err and "train.max_steps" not in err.split("cannot")[1]
    # The run folder alone: its own config, with a longer schedule applied explicitly.
    assert main(["train", str(tmp_path / "run"), "--quiet", "--resume", "--set", "train.max_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "resume: train.max_steps 2 -> 4" in out
    trainer = yaml.safe_load((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert trainer["step"] == 4
    import csv

    with open(tmp_path / "run" / "log.csv", newline="") as fh:
        rates = [float(row["lr"]) for row in csv.DictReader(fh)]
    assert max(rates) <= 0.05 + 1e-12 and max(rates) > 0.011  # the run's own lr, not the YAML's 0.01


def test_config_diff_names_every_changed_key():
    a = config.from_dict({"train": {"lr": 0.01}, "model": {"args": {"depth": 2}}})
    b = config.from_dict({"train": {"lr": 0.02, "epochs": 3}, "model": {"args": {"depth": 3}}})
    assert config_diff(a, b) == {"model.args": ({"depth": 2}, {"depth": 3}), "train.epochs": (10, 3),
                                 "train.lr": (0.01, 0.02)}
    assert config_diff(a, a) == {}


def test_a_run_says_what_it_trains_on_and_how(tmp_path, capsys):
    from pixelwise.train.loop import train

    cfg = config.from_dict({"model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
                            "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none",
                                     "batch_size": 8, "train_samples": 20, "val_samples": 4},
                            "train": {"epochs": 2, "out_dir": str(tmp_path / "run"), "plots": False}})
    train(cfg, progress=True)
    captured = capsys.readouterr()
    out = captured.out
    params = sum(p.numel() for p in __import__("pixelwise").create_model(
        "unet", num_classes=5, base_channels=4, depth=2).parameters())
    assert "data: 20 training images ('train'), 4 validation ('val')" in out
    assert "2 steps per epoch, 4 steps in 2 epoch(s)" in out
    assert "the last 4 image(s) of each epoch's order are left out" in out  # 20 = 2 x 8 + 4
    assert f"model: unet, {params:,} parameters" in out and "precision fp32 (amp: none)" in out
    assert "validation every epoch and at step 4; last/ every epoch, at step 4 and on Ctrl-C/SIGTERM" in out
    assert "epoch 1/2" in captured.err and "4/4" in captured.err  # one bar over the whole run (stderr)
    assert "0/2" not in captured.err  # ... not one bar per epoch


def test_precision_note_says_why(monkeypatch):
    import torch

    from pixelwise import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert "no native bf16" in runtime.precision_note(cpu, "bf16") and runtime.precision_note(cpu, "bf16")[:4] == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.precision_note(cpu, "bf16").startswith("bf16 autocast (this CPU has native bf16")
    assert runtime.precision_note(cpu, "none") == "fp32 (amp: none)"


def test_training_prints_scores_in_percent_as_eval_does():
    from pixelwise.train.loop import format_record

    line = format_record({"epoch": 2, "step": 40, "train_loss": 0.123456, "miou": 0.88314, "pixel_accuracy": 0.99,
                          "mean_dice": 0.9})
    assert line == "epoch 2, step 40, train_loss 0.1235, mIoU 88.31%, pixel acc 99.00%, mDice 90.00%"
