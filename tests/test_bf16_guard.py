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
    amx = GuardRule(wide_to_narrow=True)
    score = nn.Conv2d(4096, 2, 1)  # FCN's score layer on a two-class set: the AMX class at any map size
    tiny = torch.zeros(1, 1, 4, 4)  # the AMX rule reads the layer, not the map
    assert amx.applies(score, torch.zeros(1, 4096, 64, 64)) and amx.applies(nn.Conv2d(2048, 15, 3), tiny)
    assert not amx.applies(nn.Conv2d(4096, 16, 1), tiny) and not amx.applies(plain, tiny)
    assert not amx.applies(nn.Conv2d(4096, 4, 1, groups=4), tiny)  # 1024 per group
    assert not GuardRule().active and guard_convs(nn.Sequential(plain), GuardRule()) == 0


def test_guard_changes_nothing_outside_its_cases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 7, padding=3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    assert guard_convs(model, GuardRule(padding_taps=True, wide_to_narrow=True)) == 2
    assert guard_convs(model, GuardRule(padding_taps=True)) == 0  # applied once
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), plain(x))  # no autocast: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = model(x), plain(x)
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)  # large map: bf16 as before
    twin = copy.deepcopy(model)  # EMA copies the model: the guard follows the copy, not the original
    assert twin[0].forward.__self__ is twin[0]


_AMX_CHILD = """
import copy, sys, torch
sys.path.insert(0, {src!r})
from pixelwise.bf16_guard import GuardRule, guard_convs
torch.set_num_threads(2)
torch.manual_seed(0)
conv = torch.nn.Conv2d(4096, 2, 1)
reference = copy.deepcopy(conv)
x = torch.randn(2, 4096, 8, 8)
with torch.backends.mkldnn.flags(enabled=False):
    reference(x).square().mean().backward()
if {guard}:
    guard_convs(conv, GuardRule(wide_to_narrow=True))
for _ in range(3):
    conv.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().square().mean().backward()
err = (conv.weight.grad - reference.weight.grad).abs().max() / reference.weight.grad.abs().max()
print("REL-ERR", float(err))
"""


def _amx_child(guard: bool) -> subprocess.CompletedProcess:
    import os
    import sys
    from pathlib import Path

    src = str(Path(bf16_guard.__file__).resolve().parents[1])
    env = {**os.environ, "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-c", _AMX_CHILD.format(src=src, guard=guard)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_guarded_wide_to_narrow_weight_gradient_is_exact_on_two_threads():
    # The AMX class (4096 -> 2, as FCN's score layer on a two-class set) in a child process, since
    # unguarded it corrupts the heap on AMX; guarded it must give the fp32 gradient on every CPU.
    proc = _amx_child(guard=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = float(proc.stdout.split("REL-ERR")[1])
    assert err < 1e-4  # fp32 weights and input: only summation order differs from the reference


@pytest.mark.skipif(not bf16_guard._cpu_has_amx(), reason="the crash needs AMX (grep amx_tile /proc/cpuinfo)")
def test_on_amx_the_probe_agrees_with_the_unguarded_kernel(tmp_path, monkeypatch):
    # Where AMX is, the probe's verdict must be what the unguarded layer does: a torch with the
    # bug crashes and the probe says so; a fixed torch passes and the guard switches itself off.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bf16_guard.amx_crash_probe.cache_clear()
    crashes = _amx_child(guard=False).returncode != 0
    assert bf16_guard.amx_crash_probe() is crashes
    bf16_guard.amx_crash_probe.cache_clear()


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
    assert rule.padding_taps and rule.wide_to_narrow
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
