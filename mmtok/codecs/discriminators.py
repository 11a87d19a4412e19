"""GAN discriminators for the RVQ audio codec.

- :class:`MultiScaleSTFTDiscriminator`: EnCodec's MS-STFTD (Défossez et al. 2022, Sec. 3.4; audiocraft
  ``msstftd.py``): per scale, a normalized complex STFT as a 2-channel image [B, 2, frames, freq]
  through 2D convs (kernel 3x9, dilations 1/2/4 in time, stride 2 in frequency), LeakyReLU(0.2).
- :class:`MultiPeriodDiscriminator`: HiFi-GAN's MPD (Kong et al. 2020, Sec. 2.2): per period p the
  waveform is folded to [B, 1, N/p, p] and read by 2D convs with kernel (5, 1), stride (3, 1).
- :class:`CombinedDiscriminator` concatenates the outputs of several discriminators.

Every discriminator maps audio FloatTensor [B, 1, N] (any N not shorter than the largest STFT) to
``(logits, features)``: ``logits`` has one tensor per sub-discriminator ([B, 1, H, W]), ``features``
one list per sub-discriminator holding the activation after each hidden conv (the logits excluded),
the inputs of :func:`mmtok.losses.feature_matching_loss`. All convs use weight normalisation
(``torch.nn.utils.parametrizations.weight_norm``).
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

DiscriminatorOutput = tuple[list[Tensor], list[list[Tensor]]]


def _conv2d(
    in_ch: int, out_ch: int, kernel: tuple[int, int], *, stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> nn.Module:
    """Weight-normed Conv2d with "same" padding along both axes (before striding)."""
    padding = ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)
    return weight_norm(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, dilation=dilation, padding=padding))


def _check_audio(audio: Tensor, min_length: int, name: str) -> None:
    if audio.dim() != 3 or audio.shape[1] != 1:
        raise ValueError(f"{name} expects audio [B, 1, N], got {tuple(audio.shape)}")
    if audio.shape[-1] < min_length:
        raise ValueError(f"{name} needs at least {min_length} samples, got N={audio.shape[-1]}")


class STFTDiscriminator(nn.Module):
    """One MS-STFTD scale. audio [B, 1, N] -> (logits [B, 1, frames, freq / 8], features: 5 maps).

    Channels are ``filters`` throughout (EnCodec's ``filters_scale = 1``).
    """

    def __init__(
        self, *, n_fft: int = 1024, hop_length: int | None = None, filters: int = 32,
        dilations: Sequence[int] = (1, 2, 4), kernel_size: tuple[int, int] = (3, 9),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if n_fft < 8 or filters < 1 or not dilations:
            raise ValueError(
                f"need n_fft >= 8, filters >= 1 and some dilations, got {n_fft}, {filters}, {dilations}"
            )
        self.n_fft = n_fft
        self.spec = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, hop_length=hop_length or n_fft // 4, normalized=True, center=False, power=None
        )
        k_t = kernel_size[0]
        convs = [_conv2d(2, filters, kernel_size)]
        convs += [_conv2d(filters, filters, kernel_size, stride=(1, 2), dilation=(d, 1)) for d in dilations]
        convs.append(_conv2d(filters, filters, (k_t, k_t)))
        self.convs = nn.ModuleList(convs)
        self.post = _conv2d(filters, 1, (k_t, k_t))
        self.negative_slope = negative_slope

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        _check_audio(audio, self.n_fft, "STFTDiscriminator")
        spec = self.spec(audio)  # complex [B, 1, freq, frames]
        z = rearrange(spec, "b 1 f t -> b 1 t f")
        z = rearrange([z.real, z.imag], "ri b 1 t f -> b ri t f")  # [B, 2, frames, freq]
        features = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), self.negative_slope)
            features.append(z)
        return self.post(z), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec MS-STFTD: one :class:`STFTDiscriminator` per FFT size, hop ``n_fft // 4``.

    audio [B, 1, N >= max(n_ffts)] -> (logits: list of len(n_ffts), features: list of lists).
    """

    def __init__(self, *, n_ffts: Sequence[int] = (1024, 512, 256), filters: int = 32) -> None:
        super().__init__()
        if not n_ffts:
            raise ValueError("n_ffts must hold at least one FFT size")
        self.discriminators = nn.ModuleList(STFTDiscriminator(n_fft=n, filters=filters) for n in n_ffts)

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        outputs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outputs], [o[1] for o in outputs]


class PeriodDiscriminator(nn.Module):
    """One MPD period. audio [B, 1, N] -> reflect-pad N to a multiple of p -> [B, 1, N/p, p] ->
    strided (3, 1) convs with ``channels``, a stride-1 conv, and a (3, 1) conv to logits [B, 1, H, p].
    """

    def __init__(
        self, *, period: int, channels: Sequence[int] = (16, 64, 128, 128), max_channels: int = 512,
        kernel_size: int = 5, stride: int = 3, negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if period < 1 or not channels or min(channels) < 1:
            raise ValueError(f"need period >= 1 and positive channels, got {period} and {list(channels)}")
        self.period = period
        widths = [1] + [min(c, max_channels) for c in channels]
        convs = [
            _conv2d(c_in, c_out, (kernel_size, 1), stride=(stride, 1))
            for c_in, c_out in zip(widths, widths[1:])
        ]
        convs.append(_conv2d(widths[-1], widths[-1], (kernel_size, 1)))
        self.convs = nn.ModuleList(convs)
        self.post = _conv2d(widths[-1], 1, (3, 1))
        self.negative_slope = negative_slope

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        _check_audio(audio, self.period + 1, "PeriodDiscriminator")
        remainder = audio.shape[-1] % self.period
        if remainder:
            audio = F.pad(audio, (0, self.period - remainder), mode="reflect")
        z = rearrange(audio, "b c (n p) -> b c n p", p=self.period)  # [B, 1, N/p, p]
        features = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), self.negative_slope)
            features.append(z)
        return self.post(z), features


class MultiPeriodDiscriminator(nn.Module):
    """HiFi-GAN MPD: one :class:`PeriodDiscriminator` per period.

    The default ``channels`` (16, 64, 128, 128) are narrower than HiFi-GAN's (32, 128, 512, 1024) so
    that the default discriminator stays near 1 M parameters on CPU; ``max_channels`` caps every width.
    audio [B, 1, N] -> (logits: list of len(periods), features: list of lists).
    """

    def __init__(
        self, *, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: Sequence[int] = (16, 64, 128, 128),
        max_channels: int = 512,
    ) -> None:
        super().__init__()
        if not periods:
            raise ValueError("periods must hold at least one period")
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(period=p, channels=channels, max_channels=max_channels) for p in periods
        )

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        outputs = [d(audio) for d in self.discriminators]
        return [o[0] for o in outputs], [o[1] for o in outputs]


class CombinedDiscriminator(nn.Module):
    """Runs several discriminators on the same audio and concatenates their logits and features.

    audio [B, 1, N] -> (logits, features) with one entry per sub-discriminator of every member.
    """

    def __init__(self, *, discriminators: Sequence[nn.Module]) -> None:
        super().__init__()
        if not discriminators:
            raise ValueError("discriminators must hold at least one discriminator")
        self.discriminators = nn.ModuleList(discriminators)

    def forward(self, audio: Tensor) -> DiscriminatorOutput:
        logits: list[Tensor] = []
        features: list[list[Tensor]] = []
        for disc in self.discriminators:
            d_logits, d_features = disc(audio)
            logits.extend(d_logits)
            features.extend(d_features)
        return logits, features


def default_discriminator(*, filters: int = 32) -> CombinedDiscriminator:
    """EnCodec MS-STFTD (FFT sizes 1024/512/256, ``filters`` channels) + HiFi-GAN MPD (periods 2-11)."""
    return CombinedDiscriminator(
        discriminators=[MultiScaleSTFTDiscriminator(filters=filters), MultiPeriodDiscriminator()]
    )
