import math

import pytest
import torch

from mmtok.metrics import bitrate, codec_metrics, mel_distance, si_sdr, stft_distance

SR = 16000


def _speechlike(batch: int = 2, n: int = 8000, seed: int = 0) -> torch.Tensor:
    """A few harmonics with an envelope, [B, 1, N]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    f0 = 100 + 100 * torch.rand(batch, 1, 1, generator=g)
    x = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))
    return 0.3 * x * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))


def _noise_at_snr(ref: torch.Tensor, snr_db: float, seed: int = 1) -> torch.Tensor:
    """Zero-mean white noise scaled so that 10 log10(||ref - mean||^2 / ||noise||^2) = snr_db per item."""
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    noise = noise - noise.mean(-1, keepdim=True)
    ref64 = ref.double() - ref.double().mean(-1, keepdim=True)
    energy_ratio = ref64.square().sum(-1, keepdim=True) / noise.square().sum(-1, keepdim=True)
    scale = (energy_ratio / 10 ** (snr_db / 10)).sqrt()
    return (noise * scale).float()


def test_si_sdr_scaled_copy_is_very_high():
    ref = _speechlike()
    assert (si_sdr(ref, 0.5 * ref) > 60).all()


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_si_sdr_matches_known_snr(snr_db):
    ref = _speechlike(n=16000)
    est = ref + _noise_at_snr(ref, snr_db)
    values = si_sdr(ref, est)
    assert torch.allclose(values, torch.full_like(values, snr_db), atol=0.3), values


def test_si_sdr_matches_hand_formula_and_ignores_offset():
    ref = torch.tensor([[[1.0, -2.0, 3.0, 0.5]]])
    est = torch.tensor([[[0.5, -1.0, 2.0, 1.0]]])
    r, e = ref.flatten().double(), est.flatten().double()
    r, e = r - r.mean(), e - e.mean()
    target = (e @ r) / (r @ r) * r
    expected = 10 * torch.log10(target.square().sum() / (e - target).square().sum())
    assert si_sdr(ref, est).item() == pytest.approx(expected.item(), abs=1e-5)
    assert si_sdr(ref, est + 3.0).item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("metric", ["mel", "stft"])
def test_spectral_distances_zero_for_identical_and_monotone_in_noise(metric):
    ref = _speechlike(batch=1)

    def dist(est):
        if metric == "mel":
            return mel_distance(ref, est, sample_rate=SR)
        return stft_distance(ref, est)

    assert dist(ref.clone()).abs().max().item() < 1e-6
    values = [dist(ref + _noise_at_snr(ref, snr)).item() for snr in (30.0, 20.0, 10.0, 0.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[0] > 0


def test_stft_distance_matches_hand_computation_single_resolution():
    ref, est = _speechlike(batch=1, n=2048), _speechlike(batch=1, n=2048, seed=3)
    window = torch.hann_window(512)
    mags = [
        torch.stft(x[0], 512, 128, 512, window, return_complex=True).abs().clamp(min=1e-7 ** 0.5)[0]
        for x in (ref, est)
    ]
    sc = torch.linalg.norm(mags[0] - mags[1]) / torch.linalg.norm(mags[0])
    log_mag = (mags[0].log() - mags[1].log()).abs().mean()
    value = stft_distance(ref, est, resolutions=[(512, 128, 512)])
    assert value.item() == pytest.approx((sc + log_mag).item(), rel=1e-4)


def test_padding_past_lengths_is_ignored():
    ref = _speechlike(batch=2, n=6000)
    est = ref + _noise_at_snr(ref, 10.0)
    lengths = torch.tensor([6000, 4500])
    garbage = 5 * torch.randn(2, 1, 1500, generator=torch.Generator().manual_seed(7))
    ref_pad = torch.cat([ref, garbage], dim=-1)
    est_pad = torch.cat([est, -garbage], dim=-1)
    est_pad[1, :, 4500:] = 3.0
    ref_pad[1, :, 4500:] = -1.0
    short = (ref[1:, :, :4500], est[1:, :, :4500])
    for fn in (lambda r, e, **k: mel_distance(r, e, sample_rate=SR, **k), stft_distance, si_sdr):
        padded = fn(ref_pad, est_pad, lengths=lengths)
        assert padded[0].item() == pytest.approx(fn(ref[:1], est[:1])[0].item(), rel=1e-5)
        assert padded[1].item() == pytest.approx(fn(*short)[0].item(), rel=1e-5)


def test_codec_metrics_are_batch_means():
    ref = _speechlike(batch=2)
    est = ref + _noise_at_snr(ref, 15.0)
    out = codec_metrics(ref, est, sample_rate=SR)
    assert set(out) == {"mel_distance", "stft_distance", "si_sdr"}
    assert out["si_sdr"] == pytest.approx(si_sdr(ref, est).mean().item(), rel=1e-6)
    mel = mel_distance(ref, est, sample_rate=SR).mean().item()
    assert out["mel_distance"] == pytest.approx(mel, rel=1e-6)
    assert out["stft_distance"] == pytest.approx(stft_distance(ref, est).mean().item(), rel=1e-6)


def test_bitrate_values():
    assert bitrate(num_quantizers=8, codebook_size=1024, frame_rate=50) == 4000.0
    assert bitrate(num_quantizers=1, codebook_size=4096, frame_rate=75) == 900.0
    assert bitrate(num_quantizers=2, codebook_size=[1024, 256], frame_rate=50.0) == 900.0
    with pytest.raises(ValueError):
        bitrate(num_quantizers=2, codebook_size=[1024], frame_rate=50)
    with pytest.raises(ValueError):
        bitrate(num_quantizers=8, codebook_size=1024, frame_rate=0)


def test_bad_arguments_raise():
    ref = _speechlike(batch=2)
    with pytest.raises(ValueError, match=r"\[B, 1, N\]"):
        si_sdr(ref, ref[:, :, :-1])
    with pytest.raises(ValueError, match="lengths"):
        si_sdr(ref, ref, lengths=torch.tensor([10, 9000]))
    with pytest.raises(ValueError, match="valid samples"):
        stft_distance(ref, ref, lengths=torch.tensor([500, 8000]))
