"""Image metrics against references: FID (scipy's sqrtm), PSNR and SSIM by hand, perplexity of known histograms."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from mmtok.data.images import load_digit_source
from mmtok.judges import DigitClassifier
from mmtok.metrics import classifier_accuracy, codebook_usage, frechet_distance, psnr, ssim


@pytest.fixture(scope="module")
def real_digits() -> torch.Tensor:
    """The 1,797 scikit-learn digits upscaled to 16 x 16, [N, 1, 16, 16] in [0, 1], in a seeded order."""
    images, _ = load_digit_source("sklearn")
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]


@pytest.fixture(scope="module")
def network() -> DigitClassifier:
    torch.manual_seed(0)
    return DigitClassifier(widths=[8, 16]).eval()


def reference_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Heusel et al. eq. 6 on features [N, D], with scipy's matrix square root (float64)."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_matches_the_closed_form_on_the_networks_features(real_digits, network):
    real, fake = real_digits[:600], real_digits[600:1000].flip(-1)  # mirrored digits: a different distribution
    with torch.no_grad():
        expected = reference_fid(network.features(real), network.features(fake))
    value = frechet_distance(real, fake, feature_network=network, batch_size=128)
    assert value == pytest.approx(expected, rel=1e-3)
    assert value > 0


def test_frechet_distance_self_zero_halves_small_noise_large(real_digits, network):
    first, second = real_digits[:800], real_digits[800:1600]
    noise = torch.rand(800, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    to_noise = frechet_distance(first, noise, feature_network=network)
    halves = frechet_distance(first, second, feature_network=network)
    itself = frechet_distance(first, first, feature_network=network)
    assert itself < 1e-3 * to_noise
    assert halves < 0.05 * to_noise, (halves, to_noise)
    assert itself < halves


def test_frechet_distance_restores_the_networks_mode_and_checks_inputs(real_digits):
    network = DigitClassifier(widths=[8]).train()
    frechet_distance(real_digits[:20], real_digits[20:40], feature_network=network)
    assert network.training
    with pytest.raises(ValueError, match="at least 2 images"):
        frechet_distance(real_digits[:1], real_digits[:5], feature_network=network)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        frechet_distance(real_digits[:5, 0], real_digits[:5], feature_network=network)


def test_psnr_per_image_by_hand():
    reference = torch.zeros(2, 1, 2, 2)
    estimate = torch.tensor([[0.1, 0.0, 0.0, 0.1], [0.5, 0.5, 0.5, 0.5]]).reshape(2, 1, 2, 2)
    # MSE 0.005 and 0.25 -> 10 log10(1 / MSE)
    torch.testing.assert_close(psnr(reference, estimate), torch.tensor([10 * math.log10(200), 10 * math.log10(4)]))
    torch.testing.assert_close(psnr(reference, estimate, data_range=2.0)[1], torch.tensor(10 * math.log10(16)))
    with pytest.raises(ValueError, match="same shape"):
        psnr(reference, estimate[:, :, :1])


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.2, 0.6
    c1 = (0.01 * 1.0) ** 2
    # float64: in float32, E[x^2] - E[x]^2 leaves a rounding error of the order of C2 = 9e-4 times 0.1
    reference, estimate = (torch.full((1, 1, 16, 16), value, dtype=torch.float64) for value in (a, b))
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # the contrast-structure term is C2 / C2 = 1
    torch.testing.assert_close(ssim(reference, estimate), torch.tensor([expected], dtype=torch.float64))
    torch.testing.assert_close(ssim(reference, reference), torch.tensor([1.0], dtype=torch.float64))


def hand_ssim(x: np.ndarray, y: np.ndarray, k: int = 3, data_range: float = 1.0) -> float:
    """Wang et al. 2004 eq. 13 with a uniform k x k window over the reflection-padded image, averaged."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = k // 2
    xp, yp = np.pad(x, pad, mode="reflect"), np.pad(y, pad, mode="reflect")
    values = []
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            wx, wy = xp[i:i + k, j:j + k].ravel(), yp[i:i + k, j:j + k].ravel()
            mx, my = wx.mean(), wy.mean()
            vx, vy = ((wx - mx) ** 2).mean(), ((wy - my) ** 2).mean()
            cov = ((wx - mx) * (wy - my)).mean()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_with_a_uniform_window_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 5, 6, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64)).clamp(0, 1)
    values = ssim(x, y, gaussian_kernel=False, kernel_size=3)
    expected = [hand_ssim(x[i, 0].numpy(), y[i, 0].numpy()) for i in range(2)]
    torch.testing.assert_close(values, torch.tensor(expected, dtype=torch.float64))
    assert 0 < values.min() < values.max() < 1


class ThresholdClassifier(nn.Module):
    """Class 1 when the image's mean is above 0.5, else class 0 (logits [N, 2])."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images):
        bright = images.mean(dim=(1, 2, 3)) > 0.5
        return F.one_hot(bright.long(), 2).float() * self.scale


def test_classifier_accuracy_counts_matches_and_restores_the_mode():
    images = torch.cat([torch.zeros(3, 1, 4, 4), torch.ones(5, 1, 4, 4)])
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1, 0])  # predicted 0 0 0 1 1 1 1 1: 6 of 8 right
    classifier = ThresholdClassifier().train()
    assert classifier_accuracy(images, labels, classifier, batch_size=3) == 0.75
    assert classifier.training
    with pytest.raises(ValueError, match="labels must be"):
        classifier_accuracy(images, labels[:4], classifier)


def test_codebook_usage_of_known_histograms():
    uniform = torch.arange(16).repeat(3).reshape(2, 24)
    assert codebook_usage(uniform, 16) == pytest.approx({"usage": 1.0, "perplexity": 16.0})
    assert codebook_usage(torch.full((4, 10), 7), 16) == pytest.approx({"usage": 1 / 16, "perplexity": 1.0})
    half = torch.arange(8).repeat(5)
    assert codebook_usage(half, 16) == pytest.approx({"usage": 0.5, "perplexity": 8.0})
    two = torch.tensor([0, 0, 0, 1])  # p = (3/4, 1/4)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert codebook_usage(two, 4)["perplexity"] == pytest.approx(expected)
    with_dropped = torch.tensor([[3, 3, -1, -1]])
    assert codebook_usage(with_dropped, 4) == pytest.approx({"usage": 0.25, "perplexity": 1.0})
    with pytest.raises(ValueError, match="outside a codebook of 4"):
        codebook_usage(torch.tensor([4]), 4)
