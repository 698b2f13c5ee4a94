"""Training checkpoints (pixelwise.train.checkpoint): optimiser, scheduler and RNG state, no pickle."""

import pytest
import torch

from pixelwise import create_model
from pixelwise.train import checkpoint as ckpt


def _model():
    return create_model("unet", num_classes=3, base_channels=4, depth=2, norm="batch")


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
