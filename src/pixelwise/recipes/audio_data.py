"""Audio data for source separation: a synthetic two-source set and 16-bit PCM WAV files.

The synthetic set stands in for a singing-voice corpus (the task of Jansson et al.,
ISMIR 2017) so that separation can be trained and measured with no download:

- the "voice" (the source to extract) is a sequence of 1..3 harmonic notes: a random
  fundamental in 150..600 Hz, 2..6 harmonics with decaying random amplitudes, vibrato
  (4..7 Hz, up to 3 % of f0) and an attack/release envelope per note;
- the accompaniment is coloured noise (white noise shaped as ``1 / f**alpha`` with
  alpha in 0..2, i.e. white to brown) plus random clicks (decaying noise bursts);
- they are mixed at a random voice-to-accompaniment ratio of -5..+5 dB.

Sample ``i`` comes from ``np.random.default_rng([seed, i])``: deterministic per index.
"""

from __future__ import annotations

import itertools
import wave
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, PixelwiseError

__all__ = ["SyntheticMixtures", "read_wav", "write_wav"]


def _voice(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    t = np.arange(length) / sample_rate
    out = np.zeros(length)
    bounds = np.sort(rng.integers(0, length, int(rng.integers(0, 3))))
    edges = np.concatenate([[0], bounds, [length]])
    for start, stop in itertools.pairwise(edges):
        if stop - start < sample_rate // 20:  # shorter than 50 ms: not a note
            continue
        f0 = rng.uniform(150.0, 600.0)
        rate, depth = rng.uniform(4.0, 7.0), rng.uniform(0.0, 0.03)
        # Integrating the instantaneous frequency keeps the phase continuous under vibrato.
        inst = f0 * (1.0 + depth * np.sin(2 * np.pi * rate * t[start:stop] + rng.uniform(0, 2 * np.pi)))
        phase = 2 * np.pi * np.cumsum(inst) / sample_rate
        note = np.zeros(stop - start)
        for k in range(1, int(rng.integers(2, 7)) + 1):
            if k * f0 * (1 + depth) >= sample_rate / 2:
                break  # above Nyquist it would alias
            note += rng.uniform(0.3, 1.0) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        n = stop - start
        attack, release = max(1, int(rng.uniform(0.01, 0.1) * n)), max(1, int(rng.uniform(0.05, 0.3) * n))
        envelope = np.minimum(1.0, np.minimum(np.arange(n) / attack, (n - 1 - np.arange(n)) / release))
        out[start:stop] = note * np.clip(envelope, 0.0, 1.0)
    return out


def _accompaniment(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(size=length))
    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
    alpha = rng.uniform(0.0, 2.0)
    spectrum *= 1.0 / np.maximum(freqs, 20.0) ** (alpha / 2)  # power ~ 1/f**alpha
    noise = np.fft.irfft(spectrum, n=length)
    noise /= noise.std() + 1e-12
    for _ in range(int(rng.integers(0, 8))):
        at, n = int(rng.integers(0, length)), int(rng.uniform(0.005, 0.03) * sample_rate)
        burst = rng.normal(size=n) * np.exp(-np.arange(n) / (0.2 * n)) * rng.uniform(2.0, 6.0)
        noise[at:at + n] += burst[: length - at]
    return noise


class SyntheticMixtures(Dataset):
    """Deterministic synthetic mixtures of a harmonic "voice" and a noisy accompaniment.

    Args:
        num_samples: dataset length.
        length: samples per clip.
        sample_rate: Hz (the paper works at 8192 Hz).
        seed: dataset seed.

    Each item is ``{"mixture", "source", "accompaniment"}``, float32 tensors ``(length,)``
    with ``mixture == source + accompaniment`` and a mixture peak of 0.5 (so 16-bit WAV
    files of it never clip).
    """

    def __init__(self, num_samples: int, *, length: int = 8192, sample_rate: int = 8192, seed: int = 0) -> None:
        if num_samples < 0 or length < 256 or sample_rate < 1000:
            raise PixelwiseError(f"SyntheticMixtures: need num_samples >= 0, length >= 256 and sample_rate >= "
                                 f"1000, got {num_samples}, {length}, {sample_rate}")
        self.num_samples, self.length, self.sample_rate, self.seed = num_samples, length, sample_rate, seed

    def __len__(self) -> int:
        return self.num_samples

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(source, accompaniment)`` float64 ``(length,)`` of sample ``index``."""
        rng = np.random.default_rng([self.seed, index])
        voice = _voice(rng, self.length, self.sample_rate)
        if not np.any(voice):  # every note fell under 50 ms: one note over the whole clip
            voice = _voice(np.random.default_rng([self.seed, index, 1]), self.length, self.sample_rate)
        acc = _accompaniment(rng, self.length, self.sample_rate)
        ratio_db = rng.uniform(-5.0, 5.0)
        acc *= np.sqrt(np.mean(voice ** 2) / np.mean(acc ** 2) / 10 ** (ratio_db / 10))
        scale = 0.5 / max(np.abs(voice + acc).max(), 1e-9)
        return voice * scale, acc * scale

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"SyntheticMixtures index {index} out of range for {self.num_samples} samples")
        source, acc = self.generate(index % self.num_samples)
        source_t, acc_t = torch.from_numpy(source).float(), torch.from_numpy(acc).float()
        return {"mixture": source_t + acc_t, "source": source_t, "accompaniment": acc_t}


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file. Returns ``(mono float64 samples in [-1, 1], sample rate)``.

    8/16/32-bit integer PCM is accepted; several channels are averaged to mono.
    """
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate, frames = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(frames)
    except (wave.Error, EOFError, OSError) as err:
        raise DataError(f"cannot read {str(path)!r} as a PCM WAV file ({err}); convert it to 16-bit PCM WAV, "
                        f"e.g. `ffmpeg -i in.mp3 -acodec pcm_s16le out.wav`") from err
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(raw, dtype=f"<{np.dtype(dtype).str[1:]}").astype(np.float64) / 2.0 ** (8 * width - 1)
    else:
        raise DataError(f"{str(path)!r} has {8 * width}-bit samples; use 8, 16 or 32-bit integer PCM")
    return samples.reshape(-1, channels).mean(axis=1), rate


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write mono ``samples`` (float, nominal range [-1, 1]) as 16-bit PCM; values outside are clipped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    return path
