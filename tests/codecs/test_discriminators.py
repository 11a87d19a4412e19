import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from mmtok.codecs.discriminators import (
    CombinedDiscriminator,
    MultiPeriodDiscriminator,
    MultiScaleSTFTDiscriminator,
    PeriodDiscriminator,
    STFTDiscriminator,
    default_discriminator,
)
from mmtok.losses import hinge_discriminator_loss

N_ODD = 2053


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def test_msstftd_shapes_for_odd_length():
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(n_ffts=(1024, 512, 256), filters=4)
    logits, features = disc(torch.randn(2, 1, N_ODD))
    assert len(logits) == len(features) == 3
    for n_fft, logit, feats in zip((1024, 512, 256), logits, features):
        frames = (N_ODD - n_fft) // (n_fft // 4) + 1
        freq = n_fft // 2 + 1
        assert len(feats) == 5
        assert feats[0].shape == (2, 4, frames, freq)
        assert logit.shape == (2, 1, frames, _ceil_div(_ceil_div(_ceil_div(freq, 2), 2), 2))


def test_stft_input_is_normalized_complex_stft():
    disc = STFTDiscriminator(n_fft=256, filters=4)
    x = torch.randn(1, 1, 1000)
    window = torch.hann_window(256)
    expected = torch.stft(x[0], 256, 64, 256, window, center=False, return_complex=True)
    expected = expected / window.square().sum().sqrt()
    assert torch.allclose(disc.spec(x)[:, 0], expected, atol=1e-5)


def test_mpd_shapes_and_reflect_padding_for_odd_length():
    torch.manual_seed(0)
    periods = (2, 3, 5, 7, 11)
    disc = MultiPeriodDiscriminator(periods=periods, channels=(4, 8, 8, 8))
    x = torch.randn(2, 1, N_ODD)
    logits, features = disc(x)
    assert len(logits) == len(features) == len(periods)
    for p, logit, feats, sub in zip(periods, logits, features, disc.discriminators):
        rows = _ceil_div(N_ODD, p)
        assert len(feats) == 5
        assert feats[0].shape == (2, 4, _ceil_div(rows, 3), p)
        assert logit.shape == (2, 1, _ceil_div(_ceil_div(_ceil_div(_ceil_div(rows, 3), 3), 3), 3), p)
        padded = F.pad(x, (0, rows * p - N_ODD), mode="reflect")
        assert torch.allclose(sub(padded)[0], logit, atol=1e-6)


def test_mpd_max_channels_caps_widths():
    disc = PeriodDiscriminator(period=2, channels=(8, 64, 256), max_channels=16)
    widths = [conv.out_channels for conv in disc.convs]
    assert widths == [8, 16, 16, 16]


def test_every_conv_is_weight_normed():
    disc = default_discriminator(filters=4)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 * 6 + 5 * 6
    for conv in convs:
        assert parametrize.is_parametrized(conv, "weight")
        assert hasattr(conv.parametrizations.weight, "original0")  # the magnitude g


def test_combined_concatenates_outputs():
    torch.manual_seed(0)
    stft = MultiScaleSTFTDiscriminator(n_ffts=(256,), filters=4)
    mpd = MultiPeriodDiscriminator(periods=(2, 3), channels=(4, 4, 4, 4))
    combined = CombinedDiscriminator(discriminators=[stft, mpd])
    x = torch.randn(1, 1, 1001)
    logits, features = combined(x)
    ref_logits = stft(x)[0] + mpd(x)[0]
    assert len(logits) == 3 and len(features) == 3
    assert all(torch.equal(a, b) for a, b in zip(logits, ref_logits))


def test_default_discriminator_size_and_forward():
    disc = default_discriminator()
    count = sum(p.numel() for p in disc.parameters())
    assert count < 2_000_000, f"default discriminator has {count:,} parameters"
    logits, features = disc(torch.randn(1, 1, 1601))
    assert len(logits) == 3 + 5 and len(features) == 8, f"{count:,} parameters"


def test_bad_inputs_raise():
    disc = MultiScaleSTFTDiscriminator(filters=4)
    with pytest.raises(ValueError, match="at least 1024"):
        disc(torch.randn(1, 1, 1000))
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        disc(torch.randn(1, 2, 2000))
    with pytest.raises(ValueError):
        CombinedDiscriminator(discriminators=[])


def test_hinge_training_separates_sine_from_noise():
    torch.manual_seed(0)
    disc = CombinedDiscriminator(discriminators=[
        MultiScaleSTFTDiscriminator(n_ffts=(256, 128), filters=8),
        MultiPeriodDiscriminator(periods=(2, 3), channels=(8, 16, 16, 16)),
    ])
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3, betas=(0.5, 0.9))
    t = torch.arange(1200) / 16000
    losses = []
    for step in range(25):
        freqs = 200 + 600 * torch.rand(4, 1, 1)
        real = 0.5 * torch.sin(2 * math.pi * freqs * t + 6 * torch.rand(4, 1, 1))
        fake = 0.35 * torch.randn(4, 1, 1200)
        real_logits, _ = disc(real)
        fake_logits, _ = disc(fake)
        loss = hinge_discriminator_loss(real_logits, fake_logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    with torch.no_grad():
        real_logits, _ = disc(real)
        fake_logits, _ = disc(fake)
    margins = [r.mean() - f.mean() for r, f in zip(real_logits, fake_logits)]
    assert all(m > 0 for m in margins), margins
