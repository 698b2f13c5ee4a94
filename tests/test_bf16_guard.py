"""The bf16 convolution guard: exact where it acts, invisible where it does not, probes that decide."""

import copy
import json
import subprocess

import pytest
import torch
from torch import nn

from pixelwise import bf16_guard
from pixelwise.bf16_guard import GuardRule, guard_convs


def _weight_grad(conv, x, *, bf16):
    conv.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x)
    y.float().square().mean().backward()
    return y, conv.weight.grad.clone()


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_guarded_padding_case_matches_an_independent_fp32_gradient():
    # FCN's fc6 shape class: 7x7 padded by 3 on a one-row map (oneDNN bf16 returns garbage in
    # the taps that see only padding on AVX512-BF16 CPUs; the guard must give the true gradient).
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 256, 7, padding=3)
    x = torch.randn(2, 256, 1, 3)
    reference = copy.deepcopy(conv)
    ref_x = x.clone().requires_grad_(True)
    # Independent reference: fp32 without oneDNN.
    with torch.backends.mkldnn.flags(enabled=False):
        reference(ref_x).square().mean().backward()
    assert guard_convs(conv, GuardRule(padding_taps=True)) == 1
    y, grad = _weight_grad(conv, x, bf16=True)
    assert y.dtype == torch.float32  # this layer ran fp32
    assert torch.allclose(grad, reference.weight.grad, rtol=1e-4, atol=1e-6)
    assert grad[:, :, [0, 6]].abs().max() == 0  # padding-only taps are exactly zero


def test_rule_selects_only_the_shapes_it_names():
    big_pad = nn.Conv2d(4, 4, 7, padding=3)
    plain = nn.Conv2d(4, 4, 3, padding=1)
    rule = GuardRule(padding_taps=True)
    assert rule.applies(big_pad, torch.zeros(1, 4, 2, 40)) and rule.applies(big_pad, torch.zeros(1, 4, 40, 1))
    assert not rule.applies(big_pad, torch.zeros(1, 4, 3, 3)) and not rule.applies(big_pad, torch.zeros(1, 4, 8, 8))
    assert not rule.applies(plain, torch.zeros(1, 4, 1, 3))  # padding 1 on one row: no padding-only tap pair
    small = GuardRule(small_map_pixels=64)
    assert small.applies(plain, torch.zeros(1, 4, 8, 8)) and not small.applies(plain, torch.zeros(1, 4, 8, 9))
    assert not GuardRule().active and guard_convs(nn.Sequential(plain), GuardRule()) == 0


def test_guard_changes_nothing_outside_its_cases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 7, padding=3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    assert guard_convs(model, GuardRule(padding_taps=True, small_map_pixels=16)) == 2
    assert guard_convs(model, GuardRule(padding_taps=True)) == 0  # applied once
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), plain(x))  # no autocast: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = model(x), plain(x)
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)  # large map: bf16 as before
    twin = copy.deepcopy(model)  # EMA copies the model: the guard follows the copy, not the original
    assert twin[0].forward.__self__ is twin[0]


def test_amx_probe_decides_from_a_child_process_and_caches_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(bf16_guard, "_cpu_has_amx", lambda: True)
    monkeypatch.setattr(bf16_guard, "_AMX_PROBE", "import os; os.abort()")  # what heap corruption does
    bf16_guard.amx_crash_probe.cache_clear()
    assert bf16_guard.amx_crash_probe() is True
    cached = json.loads(next((tmp_path / "pixelwise").glob("onednn-amx-probe-*.json")).read_text())
    assert cached["crashes"] is True and cached["torch"] == torch.__version__
    bf16_guard.amx_crash_probe.cache_clear()
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the cached verdict must be used"))
    assert bf16_guard.amx_crash_probe() is True
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh"))
    monkeypatch.setattr(bf16_guard, "_cpu_has_amx", lambda: True)
    monkeypatch.setattr(bf16_guard, "_AMX_PROBE", "print('PROBE-OK')")  # a fixed torch passes the probe
    bf16_guard.amx_crash_probe.cache_clear()
    assert bf16_guard.amx_crash_probe() is False
    bf16_guard.amx_crash_probe.cache_clear()


def test_no_amx_means_no_probe_and_the_setting_overrides(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # AMX off for oneDNN
    assert bf16_guard._cpu_has_amx() is False
    monkeypatch.setenv("PIXELWISE_BF16_GUARD", "off")
    assert not bf16_guard.guard_rule().active
    monkeypatch.setenv("PIXELWISE_BF16_GUARD", "on")
    rule = bf16_guard.guard_rule()
    assert rule.padding_taps and rule.small_map_pixels == bf16_guard.AMX_SMALL_MAP_PIXELS
    monkeypatch.setenv("PIXELWISE_BF16_GUARD", "maybe")
    with pytest.raises(ValueError, match="auto, on or off"):
        bf16_guard.guard_rule()


def test_training_applies_the_guard_under_cpu_bf16(tmp_path, monkeypatch, real_bf16):
    from pixelwise import config
    from pixelwise.train.loop import train

    monkeypatch.setenv("PIXELWISE_BF16_GUARD", "on")
    cfg = config.from_dict({"model": {"name": "unet", "args": {"base_channels": 4, "depth": 2}},
                            "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 32, "augment": "none",
                                     "batch_size": 4, "train_samples": 8, "val_samples": 4},
                            "train": {"max_steps": 2, "amp": "bf16", "out_dir": str(tmp_path / "run")}})
    with pytest.warns(RuntimeWarning, match="run in fp32"):
        state = train(cfg, progress=False)
    assert state["step"] == 2
