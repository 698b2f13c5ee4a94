"""Audio source separation: STFT round trip, SDR closed forms, training improves SDR, save/load, CLI."""

from __future__ import annotations

import json
import math
import wave

import numpy as np
import pytest
import torch

from pixelwise.cli import main
from pixelwise.errors import ConfigError
from pixelwise.recipes.audio import (
    SpectrogramUNet,
    evaluate_separation,
    istft,
    load_separator,
    save_separator,
    sdr,
    separation_loss,
    si_sdr,
    stft,
    train_separator,
)
from pixelwise.recipes.audio_data import SyntheticMixtures, read_wav, write_wav

N_FFT, HOP, LENGTH = 256, 64, 127 * 64  # 128 frames of 129 bins


def _tiny(**kw) -> SpectrogramUNet:
    return SpectrogramUNet(channels=(4, 8, 16, 16, 32, 32), n_fft=N_FFT, hop_length=HOP, **kw)


def _arrays(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = SyntheticMixtures(n, length=LENGTH, sample_rate=8192, seed=seed)
    items = [data[i] for i in range(n)]
    return torch.stack([i["mixture"] for i in items]), torch.stack([i["source"] for i in items])


@pytest.mark.parametrize("n_fft,hop", [(256, 64), (1024, 768)])
def test_stft_istft_round_trip(n_fft, hop):
    wave_ = torch.randn(2, 8192 + 37, dtype=torch.float64)
    back = istft(stft(wave_, n_fft=n_fft, hop_length=hop), n_fft=n_fft, hop_length=hop, length=wave_.shape[-1])
    assert (back - wave_).abs().max() < 1e-5
    # And in float32, the dtype training uses.
    w32 = wave_.float()
    back32 = istft(stft(w32, n_fft=n_fft, hop_length=hop), n_fft=n_fft, hop_length=hop, length=w32.shape[-1])
    assert (back32 - w32).abs().max() < 1e-5


def test_stft_matches_a_direct_dft_of_one_frame():
    n_fft, hop = 64, 16
    x = torch.randn(1, 400, dtype=torch.float64)
    spec = stft(x, n_fft=n_fft, hop_length=hop)
    # Frame 5 of a centred STFT starts at 5 * hop - n_fft / 2 in the unpadded signal.
    start = 5 * hop - n_fft // 2
    n = np.arange(n_fft)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    frame = x[0, start:start + n_fft].numpy() * hann
    direct = np.array([(frame * np.exp(-2j * np.pi * k * n / n_fft)).sum() for k in range(n_fft // 2 + 1)])
    assert np.allclose(spec[0, :, 5].numpy(), direct, atol=1e-9)


def test_sdr_of_scaled_signal_equals_closed_form():
    s = torch.randn(3, 1000, dtype=torch.float64)
    for a in (0.5, 0.9, 1.3):
        # s - a s = (1 - a) s, so SDR = 10 log10(1 / (1 - a)^2) = -20 log10 |1 - a|.
        assert sdr(s, a * s).tolist() == pytest.approx([-20 * math.log10(abs(1 - a))] * 3, abs=1e-6)
        # A pure gain is perfect for the scale-invariant score.
        assert (si_sdr(s, a * s) > 100).all()


def test_si_sdr_with_orthogonal_noise_equals_closed_form():
    s = torch.zeros(4000, dtype=torch.float64)
    n = torch.zeros(4000, dtype=torch.float64)
    t = torch.arange(4000, dtype=torch.float64)
    s[:] = torch.sin(2 * math.pi * 5 * t / 4000)
    n[:] = torch.sin(2 * math.pi * 11 * t / 4000)  # orthogonal to s over whole periods
    gain, c = 2.0, 0.3
    est = gain * s + c * n
    expected = 10 * math.log10(gain ** 2 * float(s @ s) / (c ** 2 * float(n @ n)))
    assert si_sdr(s, est).item() == pytest.approx(expected, abs=1e-6)
    expected_sdr = 10 * math.log10(float(s @ s) / ((gain - 1) ** 2 * float(s @ s) + c ** 2 * float(n @ n)))
    assert sdr(s, est).item() == pytest.approx(expected_sdr, abs=1e-6)


def test_loss_is_l1_of_masked_magnitude():
    mask, mix, tgt = torch.rand(2, 5, 7), torch.rand(2, 5, 7), torch.rand(2, 5, 7)
    expected = sum(abs(float(m) * float(x) - float(y)) for m, x, y in zip(mask.flatten(), mix.flatten(),
                                                                            tgt.flatten())) / mask.numel()
    assert separation_loss(mask, mix, tgt).item() == pytest.approx(expected, rel=1e-5)


def test_network_shapes_layers_and_padding():
    net = SpectrogramUNet()  # paper configuration
    convs = [m for m in net.down.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 256, 512]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)
    dropouts = [m for m in net.up.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 3 and all(d.p == 0.5 for d in dropouts)
    tiny = _tiny().eval()
    for f, t in [(128, 128), (129, 37), (65, 200)]:
        mask = tiny(torch.rand(2, 1, f, t))
        assert mask.shape == (2, 1, f, t)
        assert mask.min() >= 0 and mask.max() <= 1
    # normalize=True: the mask does not depend on the mixture's loudness.
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(tiny(x), tiny(7.0 * x), atol=1e-5)


def test_synthetic_mixtures_are_deterministic_and_additive():
    a, b = SyntheticMixtures(3, length=4096, seed=5), SyntheticMixtures(3, length=4096, seed=5)
    for i in range(3):
        x, y = a[i], b[i]
        assert torch.equal(x["mixture"], y["mixture"])
        assert torch.allclose(x["mixture"], x["source"] + x["accompaniment"])
        assert x["mixture"].abs().max() == pytest.approx(0.5, abs=1e-6)
        assert x["source"].abs().max() > 0
    assert not torch.equal(a[0]["mixture"], a[1]["mixture"])


def test_training_improves_sdr_over_the_mixture():
    torch.manual_seed(0)
    train_mix, train_src = _arrays(48, seed=0)
    val_mix, val_src = _arrays(16, seed=1)  # held out: another seed
    model = _tiny()
    before = evaluate_separation(model, val_mix, val_src)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster than two on a busy machine
    try:
        losses = train_separator(model, train_mix, train_src, steps=80, batch_size=8, lr=3e-3)
    finally:
        torch.set_num_threads(threads)
    after = evaluate_separation(model, val_mix, val_src)
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    # Independent SDR of the estimates, written with numpy.
    est = torch.cat([model.separate(val_mix[i:i + 8]) for i in range(0, 16, 8)]).detach().numpy().astype(np.float64)
    ref = val_src.numpy().astype(np.float64)
    per_clip = 10 * np.log10((ref ** 2).sum(1) / ((ref - est) ** 2).sum(1))
    assert after["separated_sdr"] == pytest.approx(per_clip.mean(), abs=1e-2)
    mix_sdr = (10 * np.log10((ref ** 2).sum(1) / ((ref - val_mix.numpy()) ** 2).sum(1))).mean()
    assert after["mixture_sdr"] == pytest.approx(mix_sdr, abs=1e-3)
    # The done-criterion: clearly better than the unprocessed mixture, and than the untrained net.
    assert after["separated_sdr"] > mix_sdr + 4.0
    assert after["separated_sdr"] > before["separated_sdr"] + 2.0


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = _tiny(dropout=0.25).eval()
    save_separator(model, tmp_path / "sep")
    config = json.loads((tmp_path / "sep" / "config.json").read_text())
    assert config["model"]["name"] == "spectrogram_unet" and config["model"]["n_fft"] == N_FFT
    loaded = load_separator(tmp_path / "sep")
    x = torch.rand(1, 1, 64, 64)
    assert torch.equal(model(x), loaded(x))
    assert loaded.config == model.config


def test_load_refuses_an_image_model(tmp_path):
    from pixelwise import create_model
    from pixelwise.hub import save_model

    save_model(create_model("unet", num_classes=2, base_channels=4, depth=2), tmp_path / "img")
    with pytest.raises(ConfigError, match="not an audio separator"):
        load_separator(tmp_path / "img")


def test_wav_io_round_trip(tmp_path):
    x = np.sin(np.arange(1000) / 7.0) * 0.7
    write_wav(tmp_path / "a.wav", x, 8000)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and len(y) == 1000
    assert np.abs(y - x).max() <= 0.5 / 32768 + 1e-12


@pytest.mark.parametrize("rate", [8192, 11025])
def test_cli_separate_writes_two_wavs_that_sum_to_the_mixture(tmp_path, rate, capsys):
    torch.manual_seed(2)
    save_separator(_tiny().eval(), tmp_path / "sep")
    data = SyntheticMixtures(1, length=6000, sample_rate=rate, seed=3)
    mixture = data[0]["mixture"].numpy()
    write_wav(tmp_path / "song.wav", mixture, rate)
    assert main(["separate", str(tmp_path / "sep"), str(tmp_path / "song.wav"), "--out", str(tmp_path / "out")]) == 0
    parts = []
    for suffix in ("source", "residual"):
        with wave.open(str(tmp_path / "out" / f"song_{suffix}.wav"), "rb") as f:
            assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, rate, 6000)
            parts.append(np.frombuffer(f.readframes(6000), dtype="<i2").astype(np.float64) / 32768)
    stored, _ = read_wav(tmp_path / "song.wav")
    # Each file is rounded to 16 bits once: the sum is off by at most one step.
    assert np.abs(parts[0] + parts[1] - stored).max() <= 1.0 / 32768 + 1e-12
    assert np.abs(parts[0]).max() > 1e-3  # the source is not silence
    assert "song_source.wav" in capsys.readouterr().out


def test_cli_separate_reports_a_bad_wav(tmp_path, capsys):
    save_separator(_tiny().eval(), tmp_path / "sep")
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    assert main(["separate", str(tmp_path / "sep"), str(tmp_path / "bad.wav"), "--out", str(tmp_path / "o")]) == 2
    assert "bad.wav" in capsys.readouterr().err
