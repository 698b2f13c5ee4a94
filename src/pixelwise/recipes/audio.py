"""Audio source separation with a spectrogram U-Net (Jansson et al., ISMIR 2017).

"Singing Voice Separation with Deep U-Net Convolutional Networks" treats the magnitude
spectrogram of a mixture as a one-channel image and segments it softly: a U-Net predicts a
mask in [0, 1] per time-frequency bin, the mask times the mixture magnitude is the source
estimate, and the waveform is rebuilt with the *mixture's* phase. Paper settings: audio at
8192 Hz, STFT window 1024 and hop 768, 512 × 128 patches (the top frequency bin dropped),
six 5×5 stride-2 convolutions with 16..512 channels, L1 loss on masked magnitudes.

Everything here is sized by arguments, so the same code trains a tiny net in a test.
A saved separator is a folder ``config.json`` + ``model.safetensors`` like every other
pixelwise model, but it is not in ``pixelwise.registry.MODELS`` (it does not segment
images); :func:`load_separator` rebuilds it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from ..data import EpochSeeded
from ..errors import ConfigError, DataError, PixelwiseError
from ..tasks.base import Evaluation, StepOutput
from ..train.fit import fit
from .audio_data import read_wav, write_wav

__all__ = [
    "SpectrogramUNet",
    "evaluate_separation",
    "istft",
    "load_separator",
    "save_separator",
    "sdr",
    "separate",
    "separation_loss",
    "si_sdr",
    "stft",
    "train_separator",
]

NAME = "spectrogram_unet"


def stft(wave: Tensor, *, n_fft: int, hop_length: int) -> Tensor:
    """Complex STFT ``(N, n_fft // 2 + 1, T)`` of ``wave (N, L)`` with a periodic Hann window, centred frames.

    The signal is zero-padded at the end to a multiple of ``hop_length`` first, so the last
    frame is centred at or after the last sample: with a hop of 3/4 of the window (the
    paper's 768 / 1024) the tail would otherwise fall outside every frame and be lost.
    ``T = ceil(L / hop_length) + 1``.
    """
    window = torch.hann_window(n_fft, device=wave.device, dtype=wave.dtype)
    wave = F.pad(wave, (0, -wave.shape[-1] % hop_length))
    return torch.stft(wave, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True)


def istft(spec: Tensor, *, n_fft: int, hop_length: int, length: int) -> Tensor:
    """Inverse of :func:`stft` (weighted overlap-add): ``(N, F, T)`` complex -> ``(N, length)``."""
    window = torch.hann_window(n_fft, device=spec.device, dtype=spec.real.dtype)
    return torch.istft(spec, n_fft, hop_length=hop_length, window=window, center=True, length=length)


def sdr(reference: Tensor, estimate: Tensor, *, eps: float = 1e-12) -> Tensor:
    """Scale-dependent signal-to-distortion ratio in dB, ``10 log10(|s|² / |s - ŝ|²)``, over the last dim."""
    num = reference.pow(2).sum(-1)
    den = (reference - estimate).pow(2).sum(-1)
    return 10 * torch.log10((num + eps) / (den + eps))


def si_sdr(reference: Tensor, estimate: Tensor, *, eps: float = 1e-12) -> Tensor:
    """Scale-invariant SDR in dB (Le Roux et al., ICASSP 2019), over the last dim, without mean removal.

    The reference is rescaled to the best fit ``a·s`` with ``a = <ŝ, s> / |s|²``; the score
    is ``10 log10(|a·s|² / |ŝ - a·s|²)``, so a gain on the estimate does not change it.
    """
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * reference
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / ((estimate - target).pow(2).sum(-1) + eps))


def separation_loss(mask: Tensor, mixture_mag: Tensor, target_mag: Tensor) -> Tensor:
    """The paper's loss: mean ``|mask ⊙ |X| - |Y||`` (L1) over every bin; shapes ``(N, F, T)``."""
    return (mask * mixture_mag - target_mag).abs().mean()


class _Down(nn.Sequential):
    """5×5 stride-2 convolution, batch norm, leaky ReLU 0.2: halves F and T."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride=2, padding=k // 2), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2))


class _Up(nn.Sequential):
    """5×5 stride-2 transposed convolution (doubles F and T), batch norm, ReLU, optional dropout."""

    def __init__(self, cin: int, cout: int, k: int, dropout: float) -> None:
        layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, k, stride=2, padding=k // 2, output_padding=1),
                                   nn.BatchNorm2d(cout), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class SpectrogramUNet(nn.Module):
    """The separation U-Net of Jansson et al. (2017) plus its STFT settings.

    Encoder: ``len(channels)`` layers of :class:`_Down` (paper: 16, 32, 64, 128, 256, 512).
    Decoder: mirror :class:`_Up` layers, each fed the previous output concatenated with the
    encoder output of the same size; 50 % dropout in the first ``dropout_layers`` (3); the
    last transposed convolution has one output channel and a sigmoid: the soft mask.

    Args:
        channels: encoder widths; ``2 ** len(channels)`` is the size multiple the input is
            zero-padded to inside :meth:`forward` (64 for the paper's 6 layers).
        kernel_size: odd kernel size (paper: 5).
        dropout, dropout_layers: decoder dropout rate and how many decoder layers get it.
        sample_rate, n_fft, hop_length: the STFT the net was trained with (paper: 8192,
            1024, 768); :meth:`separate` uses them.
        normalize: divide each input spectrogram by its maximum (the paper scales to [0, 1]),
            so the mask does not depend on loudness.
        drop_nyquist: like the paper, leave out the highest frequency bin (513 -> 512 bins
            fits the stride); its mask is 0.
    """

    def __init__(self, *, channels: Sequence[int] = (16, 32, 64, 128, 256, 512), kernel_size: int = 5,
                 dropout: float = 0.5, dropout_layers: int = 3, sample_rate: int = 8192, n_fft: int = 1024,
                 hop_length: int = 768, normalize: bool = True, drop_nyquist: bool = True) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 1 or kernel_size % 2 == 0 or not 0 <= dropout < 1 or hop_length < 1 or n_fft < 4:
            raise ConfigError(f"SpectrogramUNet: need >= 1 channel entry, an odd kernel_size, dropout in [0, 1), "
                              f"n_fft >= 4 and hop_length >= 1; got channels={channels}, kernel_size={kernel_size}, "
                              f"dropout={dropout}, n_fft={n_fft}, hop_length={hop_length}")
        self.config = {"name": NAME, "channels": channels, "kernel_size": kernel_size, "dropout": dropout,
                       "dropout_layers": dropout_layers, "sample_rate": sample_rate, "n_fft": n_fft,
                       "hop_length": hop_length, "normalize": normalize, "drop_nyquist": drop_nyquist}
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.normalize, self.drop_nyquist = normalize, drop_nyquist
        self.multiple = 2 ** len(channels)
        self.down = nn.ModuleList(_Down(cin, cout, kernel_size) for cin, cout in zip([1] + channels, channels))
        ups = []
        for i, cout in enumerate(channels[-2::-1]):
            cin = channels[-1] if i == 0 else 2 * channels[-1 - i]
            ups.append(_Up(cin, cout, kernel_size, dropout if i < dropout_layers else 0.0))
        self.up = nn.ModuleList(ups)
        last_in = channels[0] if len(channels) == 1 else 2 * channels[0]
        self.out = nn.ConvTranspose2d(last_in, 1, kernel_size, stride=2, padding=kernel_size // 2, output_padding=1)

    def forward(self, magnitude: Tensor) -> Tensor:
        """Soft mask ``(N, 1, F, T)`` in [0, 1] for a magnitude spectrogram ``(N, 1, F, T)``; any F, T."""
        if magnitude.dim() != 4 or magnitude.shape[1] != 1:
            raise PixelwiseError(f"SpectrogramUNet expects magnitudes (N, 1, F, T), got {tuple(magnitude.shape)}")
        f, t = magnitude.shape[-2:]
        x = magnitude
        if self.normalize:
            x = x / x.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
        # Zeros (silence) pad F and T up to the stride product, so every skip matches exactly.
        x = F.pad(x, (0, -t % self.multiple, 0, -f % self.multiple))
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        for i, layer in enumerate(self.up):
            x = layer(x if i == 0 else torch.cat([x, skips[-1 - i]], dim=1))
        x = x if not self.up else torch.cat([x, skips[0]], dim=1)
        return torch.sigmoid(self.out(x))[..., :f, :t]

    def spectrogram_mask(self, magnitude: Tensor) -> Tensor:
        """Mask ``(N, F, T)`` for magnitudes ``(N, F, T)`` straight from :func:`stft`."""
        if not self.drop_nyquist:
            return self(magnitude.unsqueeze(1)).squeeze(1)
        mask = self(magnitude[:, :-1].unsqueeze(1)).squeeze(1)
        return F.pad(mask, (0, 0, 0, 1))

    def separate(self, wave: Tensor) -> Tensor:
        """Source estimate ``(N, L)`` from mixtures ``(N, L)``: masked magnitude, mixture phase."""
        spec = stft(wave, n_fft=self.n_fft, hop_length=self.hop_length)
        mask = self.spectrogram_mask(spec.abs())
        return istft(spec * mask, n_fft=self.n_fft, hop_length=self.hop_length, length=wave.shape[-1])


class _Spectrograms(Dataset):
    """``{"mix", "src"}`` magnitude pairs ``(F, T)``, precomputed once."""

    def __init__(self, mix: Tensor, src: Tensor) -> None:
        self.mix, self.src = mix, src

    def __len__(self) -> int:
        return len(self.mix)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"mix": self.mix[index], "src": self.src[index]}


class SeparationTask:
    """Spectrogram-mask source separation as a task of the one training loop
    (:mod:`pixelwise.tasks.base`): the L1 loss of masked magnitudes, scored by the same loss."""

    name = "audio-separation"
    best_key = "best_neg_l1"
    score_columns = ("l1",)
    collate = staticmethod(default_collate)

    def __init__(self, model: SpectrogramUNet, mix_mag: Tensor, src_mag: Tensor) -> None:
        self.model, self.data = model, _Spectrograms(mix_mag, src_mag)

    def build_model(self) -> nn.Module:
        return self.model  # trained in place

    def dataset(self, split: str, *, train: bool) -> Dataset:
        return self.data

    def datasets(self) -> tuple[Dataset, Dataset]:
        return EpochSeeded(self.data), self.data

    def forward(self, model: nn.Module, batch, *, device: torch.device, amp: str, memory_format) -> StepOutput:
        mix, src = batch["mix"].to(device), batch["src"].to(device)
        # spectrogram_mask, but calling `model` itself: under DDP the forward must go through the wrapper.
        net = getattr(model, "module", model)
        mask = model((mix[:, :-1] if net.drop_nyquist else mix).unsqueeze(1)).squeeze(1)
        mask = F.pad(mask, (0, 0, 0, 1)) if net.drop_nyquist else mask
        loss = separation_loss(mask, mix, src)
        return StepOutput(loss=loss, terms={}, images=len(mix))

    def batch_names(self, batch) -> list[str]:
        return [f"clip of {len(batch['mix'])}"]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, *, device: torch.device, amp: str = "none",
                 channels_last: bool = False, progress: bool = False) -> Evaluation:
        was = model.training
        model.eval()
        total, count = 0.0, 0
        for batch in loader:
            mix, src = batch["mix"].to(device), batch["src"].to(device)
            total += float(separation_loss(model.spectrogram_mask(mix), mix, src)) * len(mix)
            count += len(mix)
        model.train(was)
        l1 = total / max(count, 1)
        return Evaluation(scores={"l1": l1}, best=-l1)

    def model_meta(self) -> dict:
        return {"task": "audio-separation"}

    def class_names(self) -> list[str]:
        return ["source"]


def train_separator(model: SpectrogramUNet, mixtures: Tensor, sources: Tensor, *, steps: int,
                    batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                    device: str | torch.device = "cpu") -> list[float]:
    """Train ``model`` in place with Adam on ``mixtures`` and ``sources`` ``(M, L)`` (the paper's L1 loss),
    through the one training loop (:func:`pixelwise.train.fit.fit`).

    Spectrograms are computed once up front; every epoch visits the clips in a seeded order.
    Returns the loss of every step.
    """
    if mixtures.shape != sources.shape or mixtures.dim() != 2 or len(mixtures) == 0:
        raise DataError(f"train_separator: mixtures {tuple(mixtures.shape)} and sources {tuple(sources.shape)} "
                        f"must both be (M, L) with M >= 1")
    mix_mag = stft(mixtures.float(), n_fft=model.n_fft, hop_length=model.hop_length).abs()
    src_mag = stft(sources.float(), n_fft=model.n_fft, hop_length=model.hop_length).abs()
    rows, _ = fit(SeparationTask(model, mix_mag, src_mag), steps=steps, batch_size=min(batch_size, len(mix_mag)),
               lr=lr, optimizer="adam", seed=seed, device=str(device))
    return [row["loss"] for row in rows]


@torch.no_grad()
def evaluate_separation(model: SpectrogramUNet, mixtures: Tensor, sources: Tensor, *,
                        batch_size: int = 16) -> dict[str, float]:
    """Mean SDR / SI-SDR (dB) of the unprocessed mixture and of the separated source, vs the true source."""
    model.eval()
    device = next(model.parameters()).device
    estimates = torch.cat([model.separate(mixtures[i:i + batch_size].float().to(device)).cpu()
                           for i in range(0, len(mixtures), batch_size)])
    out = {"mixture_sdr": sdr(sources, mixtures).mean().item(), "separated_sdr": sdr(sources, estimates).mean().item(),
           "mixture_si_sdr": si_sdr(sources, mixtures).mean().item(),
           "separated_si_sdr": si_sdr(sources, estimates).mean().item()}
    out["sdr_improvement"] = out["separated_sdr"] - out["mixture_sdr"]
    return out


def save_separator(model: SpectrogramUNet, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (no pickle)."""
    from ..hub import CONFIG, WEIGHTS, atomic_dir

    with atomic_dir(folder) as tmp:
        (tmp / CONFIG).write_text(json.dumps({"model": model.config, "task": "audio-separation"}, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
    return Path(folder)


def load_separator(folder: str | Path, *, device: str | torch.device = "cpu") -> SpectrogramUNet:
    """Rebuild a separator saved by :func:`save_separator`, in eval mode."""
    from ..hub import CONFIG, WEIGHTS, resolve

    folder = resolve(folder)
    config = json.loads((folder / CONFIG).read_text())
    kwargs = dict(config.get("model", {}))
    if kwargs.pop("name", None) != NAME:
        raise ConfigError(f"{str(folder)!r} holds a {config.get('model', {}).get('name')!r} model, not an audio "
                          f"separator; pass a folder written by save_separator()")
    model = SpectrogramUNet(**kwargs)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval()


@torch.no_grad()
def separate(model_or_folder: SpectrogramUNet | str | Path, wav_in: str | Path, out_dir: str | Path, *,
             device: str | torch.device = "cpu") -> tuple[Path, Path]:
    """Separate one WAV file into ``<name>_source.wav`` and ``<name>_residual.wav`` (16-bit PCM mono).

    A file at another sample rate is resampled to the model's rate (polyphase filter) and the
    source resampled back. The residual is ``mixture - source``, so the two files add up to
    the (mono) input up to 16-bit rounding. The whole file is processed as one spectrogram.
    """
    from math import gcd

    from scipy.signal import resample_poly

    model = model_or_folder if isinstance(model_or_folder, nn.Module) else load_separator(model_or_folder)
    model.to(device).eval()
    mixture, rate = read_wav(wav_in)
    if len(mixture) < model.n_fft // 2 + 1:
        raise DataError(f"{str(wav_in)!r} has {len(mixture)} samples; at least {model.n_fft // 2 + 1} are needed "
                        f"for the STFT (n_fft={model.n_fft})")
    g = gcd(rate, model.sample_rate)
    resampled = mixture if rate == model.sample_rate else resample_poly(mixture, model.sample_rate // g, rate // g)
    wave = torch.from_numpy(np.ascontiguousarray(resampled)).float().unsqueeze(0).to(device)
    source = model.separate(wave)[0].double().cpu().numpy()
    if rate != model.sample_rate:
        source = resample_poly(source, rate // g, model.sample_rate // g)[: len(mixture)]
        source = np.pad(source, (0, len(mixture) - len(source)))
    out_dir = Path(out_dir)
    stem = Path(wav_in).stem
    return (write_wav(out_dir / f"{stem}_source.wav", source, rate),
            write_wav(out_dir / f"{stem}_residual.wav", mixture - source, rate))
