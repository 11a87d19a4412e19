"""Image metrics: Fréchet distance in a judge's feature space, PSNR, SSIM, judge accuracy, codebook usage.

Images are ``FloatTensor [N, C, H, W]`` in [0, 1] throughout.

- :func:`frechet_distance`: the Fréchet distance between Gaussians fitted to the features of two image
  sets (Heusel et al. 2017, eq. 6: ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``), computed
  by torchmetrics' ``FrechetInceptionDistance`` with a custom feature network in place of Inception-v3
  (for the digits: :meth:`mmtok.judges.DigitClassifier.features`). Its value depends on the network and
  on the set sizes, so report it next to its real-vs-real floor (two real sets of the same sizes).
- :func:`psnr`, :func:`ssim`: per image, via torchmetrics (SSIM of Wang et al. 2004, eq. 13, with an
  11 x 11 Gaussian window of sigma 1.5 by default and reflection padding at the borders).
- :func:`classifier_accuracy`: fraction of images a judge classifies as their label.
- :func:`codebook_usage`: fraction of a codebook's entries used, and the perplexity ``exp(H)`` of the
  code histogram (H in nats): the codebook size for uniform use, 1 when one code is used.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode and without gradients inside the block; its previous mode after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def _check_images(images: Tensor, name: str) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor [N, C, H, W] in [0, 1], got "
                         f"{images.dtype} {tuple(images.shape)}")


class FeatureExtractor(nn.Module):
    """``network.features`` (or ``network`` itself when it has none) as the ``[N, C, H, W] -> [N, D]``
    module that torchmetrics' FID takes, with ``num_features`` set so it never probes with a dummy image."""

    def __init__(self, network: nn.Module, num_features: int):
        super().__init__()
        self.network = network
        self.num_features = num_features

    def forward(self, images: Tensor) -> Tensor:
        features = self.network.features(images) if hasattr(self.network, "features") else self.network(images)
        return features.flatten(1)  # [N, D]


def frechet_distance(real: Tensor, fake: Tensor, *, feature_network: nn.Module, batch_size: int = 250) -> float:
    """Fréchet distance between the ``feature_network`` features of ``real [N, C, H, W]`` and ``fake
    [M, C, H, W]`` (N, M >= 2). The network (e.g. a :class:`~mmtok.judges.DigitClassifier`) runs in eval
    mode in batches of ``batch_size`` on its own device; its mode is restored afterwards."""
    _check_images(real, "frechet_distance: real")
    _check_images(fake, "frechet_distance: fake")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"frechet_distance needs at least 2 images per set, got {len(real)} real, {len(fake)} fake")
    device = next(feature_network.parameters()).device
    with evaluating(feature_network):
        extractor = FeatureExtractor(feature_network, 0)
        extractor.num_features = extractor(real[:1].to(device)).shape[-1]
        metric = FrechetInceptionDistance(feature=extractor, normalize=True).to(device)
        for images, is_real in ((real, True), (fake, False)):
            for start in range(0, len(images), batch_size):
                metric.update(images[start:start + batch_size].to(device), real=is_real)
        value = float(metric.compute())
    return max(value, 0.0)  # the matrix square root's rounding can leave -1e-6 for identical sets


def _check_pair(reference: Tensor, estimate: Tensor, name: str) -> None:
    _check_images(reference, f"{name}: reference")
    if reference.shape != estimate.shape:
        raise ValueError(f"{name}: reference and estimate must have the same shape [N, C, H, W], got "
                         f"{tuple(reference.shape)} and {tuple(estimate.shape)}")


def psnr(reference: Tensor, estimate: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, ``10 log10(data_range^2 / MSE)``: FloatTensor [N]."""
    _check_pair(reference, estimate, "psnr")
    return peak_signal_noise_ratio(estimate, reference, data_range=data_range, reduction="none", dim=(1, 2, 3))


def ssim(reference: Tensor, estimate: Tensor, *, data_range: float = 1.0, gaussian_kernel: bool = True,
         sigma: float = 1.5, kernel_size: int = 11) -> Tensor:
    """Structural similarity per image (mean over pixels and channels of the SSIM map): FloatTensor [N].

    A Gaussian window of ``sigma`` (the 11 x 11 window of Wang et al. at 1.5), or with ``gaussian_kernel``
    False a uniform ``kernel_size`` window; borders are reflection-padded."""
    _check_pair(reference, estimate, "ssim")
    return structural_similarity_index_measure(estimate, reference, gaussian_kernel=gaussian_kernel, sigma=sigma,
                                               kernel_size=kernel_size, data_range=data_range, reduction="none")


def classifier_accuracy(images: Tensor, labels: Tensor, classifier: nn.Module, *, batch_size: int = 250) -> float:
    """Fraction of ``images [N, C, H, W]`` whose argmax class by ``classifier`` (logits [N, K]) is their
    ``labels [N]``; the classifier runs in eval mode on its own device, its mode restored afterwards."""
    _check_images(images, "classifier_accuracy: images")
    labels = torch.as_tensor(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"classifier_accuracy: labels must be [N={len(images)}], got {tuple(labels.shape)}")
    if len(images) == 0:
        raise ValueError("classifier_accuracy: no images")
    device = next(classifier.parameters()).device
    correct = 0
    with evaluating(classifier):
        for start in range(0, len(images), batch_size):
            predicted = classifier(images[start:start + batch_size].to(device)).argmax(-1).cpu()
            correct += int((predicted == labels[start:start + batch_size].cpu()).sum())
    return correct / len(images)


def codebook_usage(codes: Tensor, codebook_size: int) -> dict[str, float]:
    """How a codebook of ``codebook_size`` entries is used by ``codes`` (a LongTensor of any shape, e.g.
    one codebook's ``[B, T]``; negative entries, a dropped quantizer's -1, are ignored).

    Returns ``usage`` (distinct codes / codebook_size) and ``perplexity`` (exp of the entropy, in nats, of
    the code histogram: codebook_size when uniform, 1 when constant)."""
    codes = torch.as_tensor(codes).flatten()
    if codes.is_floating_point():
        raise ValueError(f"codebook_usage: codes must be integers, got {codes.dtype}")
    codes = codes[codes >= 0]
    if len(codes) == 0:
        raise ValueError("codebook_usage: no codes (all negative or empty)")
    if int(codes.max()) >= codebook_size:
        raise ValueError(f"codebook_usage: code {int(codes.max())} is outside a codebook of {codebook_size}")
    counts = torch.bincount(codes.cpu(), minlength=codebook_size).double()
    probs = counts[counts > 0] / counts.sum()
    entropy = float(-(probs * probs.log()).sum())
    return {"usage": len(probs) / codebook_size, "perplexity": math.exp(entropy)}
