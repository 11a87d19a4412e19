import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from mmtok.losses import (
    MultiScaleMelLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    mel_transform,
)


def test_hinge_discriminator_loss_hand_values():
    real = [torch.tensor([2.0, 0.5, -1.0]), torch.tensor([[0.0, 1.5]])]
    fake = [torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([[-0.5, -3.0]])]
    # disc 0: real relu(1-x) = [0, .5, 2] -> 2.5/3 ; fake relu(1+x) = [0, 1, 2] -> 1
    # disc 1: real [1, 0] -> .5 ; fake [.5, 0] -> .25
    expected = ((2.5 / 3 + 1.0) + (0.5 + 0.25)) / 2
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(expected)


def test_hinge_generator_loss_hand_values():
    fake = [torch.tensor([-2.0, 0.0, 1.0, 3.0]), torch.tensor([[0.5]])]
    # relu(1 - x): [3, 1, 0, 0] -> 1 ; [.5] -> .5
    assert hinge_generator_loss(fake).item() == pytest.approx(0.75)


def test_hinge_losses_validate_lists():
    with pytest.raises(ValueError):
        hinge_discriminator_loss([torch.zeros(2)], [])
    with pytest.raises(ValueError):
        hinge_generator_loss([])


def test_feature_matching_zero_for_equal_features():
    feats = [[torch.randn(2, 3, 4), torch.randn(2, 5)], [torch.randn(7)]]
    assert feature_matching_loss(feats, [[f.clone() for f in fs] for fs in feats]).item() == 0.0


def test_feature_matching_hand_formula_and_real_detached():
    real = [[torch.tensor([1.0, -3.0]), torch.tensor([2.0])], [torch.tensor([-4.0, 0.0, 2.0])]]
    fake = [[torch.tensor([0.0, -1.0]), torch.tensor([3.0])], [torch.tensor([-4.0, 3.0, 2.0])]]
    real = [[t.requires_grad_() for t in fs] for fs in real]
    fake = [[t.requires_grad_() for t in fs] for fs in fake]
    # disc 0: layer 0 mean|r-f| = (1 + 2)/2 = 1.5, mean|r| = 2 -> .75 ; layer 1: 1/2 = .5 -> mean .625
    # disc 1: mean|r-f| = 1, mean|r| = 2 -> .5 ; overall (.625 + .5) / 2
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx((0.625 + 0.5) / 2)
    loss.backward()
    assert all(t.grad is None for fs in real for t in fs)
    assert fake[1][0].grad is not None


def _tone(n: int = 4000, seed: int = 0) -> torch.Tensor:
    t = torch.arange(n) / 16000
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(n, generator=g)).reshape(1, 1, n)


def test_default_mel_loss_builds_without_filterbank_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = MultiScaleMelLoss()
    assert len(loss.transforms) == 7


def test_mel_loss_rejects_too_many_mels_for_window():
    with pytest.raises(ValueError, match="too many"):
        MultiScaleMelLoss(window_lengths=(32,), n_mels=(40,))
    with pytest.raises(ValueError, match="equal length"):
        MultiScaleMelLoss(window_lengths=(32, 64), n_mels=(5,))
    with pytest.raises(ValueError, match="more than 1024 samples"):
        MultiScaleMelLoss()(torch.zeros(1, 1, 1000), torch.zeros(1, 1, 1000))


def test_mel_loss_matches_reference_computation():
    ref, est = _tone(), _tone(seed=1) * 0.7
    loss_fn = MultiScaleMelLoss(window_lengths=(256, 512), n_mels=(40, 80), mag_weight=0.5, log_weight=2.0)
    expected = 0.0
    for w, m in ((256, 40), (512, 80)):
        window = torch.hann_window(w)
        fb = mel_transform(sample_rate=16000, window_length=w, n_mels=m).mel_scale.fb  # [freq, mels]
        mels = [
            (torch.stft(x[0], w, w // 4, w, window, return_complex=True).abs().transpose(-1, -2) @ fb)
            for x in (est, ref)
        ]
        logs = [mel.clamp(min=1e-5).pow(2.0).log10() for mel in mels]
        expected += 2.0 * F.l1_loss(*logs) + 0.5 * F.l1_loss(*mels)
    assert loss_fn(est, ref).item() == pytest.approx(expected.item(), rel=1e-4)


def test_mel_loss_zero_for_identical_and_has_gradient():
    loss_fn = MultiScaleMelLoss()
    ref = _tone()
    assert loss_fn(ref.clone(), ref).item() == 0.0
    est = _tone(seed=2).mul(0.5).requires_grad_()
    loss = loss_fn(est, ref)
    assert loss.item() > 0
    loss.backward()
    assert est.grad is not None and est.grad.abs().sum() > 0


def test_mel_loss_falls_when_estimate_is_optimised():
    loss_fn = MultiScaleMelLoss()
    ref = _tone(n=2400)
    est = (0.1 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(5))).requires_grad_()
    opt = torch.optim.Adam([est], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = loss_fn(est, ref)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.7 * losses[0], losses
