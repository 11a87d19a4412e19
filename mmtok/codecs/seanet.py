"""Convolutional waveform encoder and decoder shared by the audio codecs.

The layout follows SEANet as used by EnCodec (Défossez et al., 2022) and the DAC variant (Kumar et
al., 2023, "High-Fidelity Audio Compression with Improved RVQGAN"): residual units with dilations
1, 3, 9, then a strided convolution per stage, Snake activations (DAC eq. 1:
``x + 1/α · sin²(αx)``) and weight normalisation. No LSTM, so the receptive field is finite and long
files can be encoded in chunks (see :mod:`mmtok.codecs.chunked`).

With kernel ``2s``, stride ``s`` and padding ``ceil(s/2)`` each stage maps ``k·s`` samples to exactly
``k`` frames (and back), so an input padded to a multiple of ``hop_length`` round-trips exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def conv_receptive_field(module: nn.Module) -> float:
    """The receptive field width of a chain of 1-D convolutions, in steps of its input: how many
    input steps one output step depends on. Convolutions are walked in the order they were built,
    which is the order they run in these networks; residual skips add nothing, a convolution adds
    (kernel − 1) · dilation input strides of its own input, a transposed one ceil(kernel / stride) − 1."""
    width, step = 1.0, 1.0  # step: input steps per step of the current layer's input
    for layer in module.modules():
        if isinstance(layer, nn.ConvTranspose1d):
            width += (math.ceil(layer.kernel_size[0] / layer.stride[0]) - 1) * step
            step /= layer.stride[0]
        elif isinstance(layer, nn.Conv1d):
            width += (layer.kernel_size[0] - 1) * layer.dilation[0] * step
            step *= layer.stride[0]
    return width


class Snake1d(nn.Module):
    """Snake activation with a learned per-channel frequency α (DAC eq. 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


def _conv(channels_in: int, channels_out: int, kernel: int, *, stride: int = 1, dilation: int = 1,
          padding: int | None = None) -> nn.Module:
    if padding is None:
        padding = dilation * (kernel - 1) // 2
    return weight_norm(nn.Conv1d(channels_in, channels_out, kernel, stride=stride, dilation=dilation,
                                 padding=padding))


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, *, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(channels), _conv(channels, channels, 7, dilation=dilation),
            Snake1d(channels), _conv(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _residual_stack(channels: int) -> list[nn.Module]:
    return [ResidualUnit(channels, dilation=d) for d in (1, 3, 9)]


class ConvEncoder(nn.Module):
    """Waveform ``[B, 1, N]`` (N a multiple of ``hop_length``) -> latent ``[B, latent_dim, N / hop_length]``."""

    def __init__(self, *, channels: int = 32, strides: Sequence[int] = (2, 4, 5, 8), latent_dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = [_conv(1, channels, 7)]
        width = channels
        for stride in strides:
            layers += _residual_stack(width)
            downsample = _conv(width, 2 * width, 2 * stride, stride=stride, padding=math.ceil(stride / 2))
            layers += [Snake1d(width), downsample]
            width *= 2
        layers += [Snake1d(width), _conv(width, latent_dim, 3)]
        self.layers = nn.Sequential(*layers)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.layers(audio)


class ConvDecoder(nn.Module):
    """Latent ``[B, latent_dim, T]`` -> waveform ``[B, 1, T · hop_length]`` in [-1, 1]."""

    def __init__(self, *, channels: int = 512, strides: Sequence[int] = (8, 5, 4, 2), latent_dim: int = 128):
        super().__init__()
        if channels % (2 ** len(strides)):
            raise ValueError(f"decoder channels={channels} must be divisible by 2**len(strides)={2 ** len(strides)}")
        layers: list[nn.Module] = [_conv(latent_dim, channels, 7)]
        width = channels
        for stride in strides:
            layers += [Snake1d(width), weight_norm(nn.ConvTranspose1d(
                width, width // 2, 2 * stride, stride=stride, padding=math.ceil(stride / 2),
                output_padding=stride % 2))]
            width //= 2
            layers += _residual_stack(width)
        layers += [Snake1d(width), _conv(width, 1, 7), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent)


class FrameConvNet(nn.Module):
    """Frame-rate features ``[B, in_dim, T]`` -> ``[B, out_dim, T]``: a convolution, residual units
    (dilations 1, 3, 9) and a convolution; X-Codec's semantic encoder and decoder have this shape."""

    def __init__(self, *, in_dim: int, out_dim: int, channels: int = 256):
        super().__init__()
        self.layers = nn.Sequential(_conv(in_dim, channels, 3), *_residual_stack(channels),
                                    Snake1d(channels), _conv(channels, out_dim, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
