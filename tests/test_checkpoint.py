"""Saved models and checkpoints: atomic writes, no pickle, recovery from interrupted swaps."""

import json
import os

import pytest
import torch

from pixelwise import create_model, load, save
from pixelwise.engine import checkpoint as ckpt
from pixelwise.errors import ConfigError


def _model():
    return create_model("unet", num_classes=3, base_channels=4, depth=2, norm="batch")


def test_save_load_round_trip(tmp_path):
    model = _model().eval()
    save(model, tmp_path / "m", {"data": {"num_classes": 3}})
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"] == {"name": "unet", "num_classes": 3, "base_channels": 4, "depth": 2, "norm": "batch"}
    again, meta = load(tmp_path / "m")
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert meta["data"]["num_classes"] == 3
    assert not again.training


def test_atomic_dir_keeps_old_copy_when_writer_fails(tmp_path):
    target = tmp_path / "last"
    save(_model(), target)
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError):
        with ckpt.atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temporary folder left behind


def test_resolve_recovers_from_a_swap_interrupted_between_renames(tmp_path):
    target = tmp_path / "last"
    save(_model(), target)
    # Simulate a kill after "last" was renamed away but before the new copy took its place.
    target.rename(tmp_path / ".last.old")
    assert ckpt.resolve(target) == tmp_path / ".last.old"
    model, _ = load(target)
    assert isinstance(model, torch.nn.Module)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a saved pixelwise model"):
        load(tmp_path)


def test_checkpoint_restores_optimizer_scheduler_and_rng(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    model(torch.randn(2, 3, 16, 16)).mean().backward()
    opt.step()
    sched.step()
    ckpt.save_checkpoint(tmp_path / "last", model, opt, sched, {"step": 1, "epoch": 1}, {"data": {}})
    expected_draw = torch.rand(3)

    model2 = _model()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5 ** s)
    torch.manual_seed(123)
    state = ckpt.load_checkpoint(tmp_path / "last", model2, opt2, sched2)
    assert state == {"step": 1, "epoch": 1}
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    assert torch.equal(torch.rand(3), expected_draw)  # RNG restored to the moment of saving
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_training_state_is_loadable_without_pickle(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt.save_checkpoint(tmp_path / "c", model, opt, sched, {"step": 0}, {})
    torch.load(tmp_path / "c" / "trainer.pt", weights_only=True)  # raises if it needed pickle
