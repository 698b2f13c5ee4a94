"""Non-finite weights or BatchNorm statistics stop training and are never saved."""

import pytest
import torch
from safetensors.torch import load_file

from pixelwise import config
from pixelwise.errors import TrainingError
from pixelwise.tasks import semantic
from pixelwise.train import loop
from pixelwise.train.guards import nonfinite_state


def test_nonfinite_state_names_parameters_and_running_stats_only():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    assert nonfinite_state(model) == []
    with torch.no_grad():
        model[1].running_var[2] = float("inf")
        model[2].weight[0, 0] = float("nan")
    assert nonfinite_state(model) == ["2.weight", "1.running_var"]
    model[1].num_batches_tracked.fill_(10**6)  # integer buffers are not values that can overflow to inf
    assert "1.num_batches_tracked" not in nonfinite_state(model)


def test_infinite_running_var_with_a_finite_loss_stops_before_anything_is_saved(tmp_path, monkeypatch):
    # As in the report: the loss stays finite (training-mode BatchNorm uses batch statistics)
    # while running_var is already inf; validation would then be garbage.
    cfg = config.from_dict({
        "model": {"name": "unet", "args": {"base_channels": 4, "depth": 2, "norm": "batch"}},
        "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none", "batch_size": 4,
                 "train_samples": 16, "val_samples": 4},
        "train": {"epochs": 3, "lr": 0.01, "out_dir": str(tmp_path / "run"), "log_every": 1, "plots": False}})
    real_build = semantic.build_model
    calls = {"n": 0}

    def build(cfg):
        model = real_build(cfg)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

        def corrupt(module, inputs):
            calls["n"] += 1
            if calls["n"] == 6 and module.training:  # 4 train + 1 val forwards, then step 5 (epoch 2)
                module.running_var.fill_(float("inf"))

        bn.register_forward_pre_hook(corrupt)
        return model

    monkeypatch.setattr(semantic, "build_model", build)  # what SemanticTask.build_model calls
    with pytest.raises(TrainingError, match=r"NaN/inf at step 5 \(epoch 2\).*running_var.*holds the last good"):
        loop.train(cfg, progress=False)
    for folder in ("last", "best"):
        state = load_file(str(tmp_path / "run" / folder / "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), folder
