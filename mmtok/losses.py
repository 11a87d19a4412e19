"""Training losses for the RVQ audio codec: multi-scale mel reconstruction and GAN losses.

- :class:`MultiScaleMelLoss` is DAC's mel reconstruction loss (Kumar et al. 2023, "High-Fidelity
  Audio Compression with Improved RVQGAN", Sec. 3.4; ``dac.nn.loss.MelSpectrogramLoss``): for each
  window length ``w`` with hop ``w // 4``,
  ``log_weight * L1(log10(clamp(M(x_hat))^pow), log10(clamp(M(x))^pow)) + mag_weight * L1(M(x_hat), M(x))``
  where ``M`` is a mel filterbank over the STFT magnitude; the terms are summed over the scales.
- :func:`hinge_discriminator_loss` and :func:`hinge_generator_loss` are EnCodec's adversarial losses
  (Défossez et al. 2022, "High Fidelity Neural Audio Compression", Sec. 3.4):
  ``L_d = 1/K sum_k mean(max(0, 1 - D_k(x)) + max(0, 1 + D_k(x_hat)))`` and
  ``l_g = 1/K sum_k mean(max(0, 1 - D_k(x_hat)))``.
- :func:`feature_matching_loss` is EnCodec's relative feature loss
  ``l_feat = 1/(K L) sum_k sum_l ||D_k^l(x) - D_k^l(x_hat)||_1 / mean(|D_k^l(x)|)``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn


def mel_transform(
    *, sample_rate: int, window_length: int, n_mels: int
) -> torchaudio.transforms.MelSpectrogram:
    """Mel magnitude spectrogram as in DAC/audiotools: Hann window ``window_length``, hop
    ``window_length // 4``, centred reflect padding, STFT magnitude (power 1), Slaney mel filters
    from 0 Hz to ``sample_rate / 2``. Maps ``[..., N]`` to ``[..., n_mels, frames]``.

    Raises ValueError when a mel filter would cover no STFT bin (``n_mels`` too large for the
    window), instead of torchaudio's warning about an all-zero filterbank.
    """
    if sample_rate <= 0 or window_length < 4 or n_mels < 1:
        raise ValueError(
            f"need sample_rate > 0, window_length >= 4 and n_mels >= 1, got "
            f"{sample_rate}, {window_length}, {n_mels}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fbank = torchaudio.functional.melscale_fbanks(
            window_length // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate,
            norm="slaney", mel_scale="slaney",
        )  # [freq, n_mels]
    empty = int((fbank.amax(dim=0) <= 0).sum())
    if empty:
        raise ValueError(
            f"n_mels={n_mels} is too many for window_length={window_length} at {sample_rate} Hz: "
            f"{empty} mel filters cover no STFT bin; use fewer mels or a longer window"
        )
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=window_length, win_length=window_length,
        hop_length=window_length // 4, n_mels=n_mels, power=1.0, norm="slaney", mel_scale="slaney",
    )


class MultiScaleMelLoss(nn.Module):
    """DAC's multi-scale mel loss (see the module docstring), summed over window lengths.

    The defaults are DAC's scales (windows 32...2048 with 5...320 mels). At 16 kHz every one of these
    filterbanks has a non-empty support for each mel bin (checked in ``__init__``), so they are kept
    unchanged; a pair that is not valid raises a ValueError.

    forward(estimate, reference): FloatTensor [B, 1, N] each -> scalar loss.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: Sequence[int] = (5, 10, 20, 40, 80, 160, 320),
        clamp_eps: float = 1e-5,
        mag_weight: float = 1.0,
        log_weight: float = 1.0,
        pow: float = 2.0,
    ) -> None:
        super().__init__()
        if len(window_lengths) != len(n_mels) or not window_lengths:
            raise ValueError(
                f"window_lengths and n_mels must be non-empty and of equal length, got "
                f"{list(window_lengths)} and {list(n_mels)}"
            )
        if clamp_eps <= 0:
            raise ValueError(f"clamp_eps must be > 0, got {clamp_eps}")
        self.transforms = nn.ModuleList(
            mel_transform(sample_rate=sample_rate, window_length=w, n_mels=m)
            for w, m in zip(window_lengths, n_mels)
        )
        self.clamp_eps = clamp_eps
        self.mag_weight = mag_weight
        self.log_weight = log_weight
        self.pow = pow

    def forward(self, estimate: Tensor, reference: Tensor) -> Tensor:
        """estimate, reference: FloatTensor [B, 1, N] -> scalar."""
        if estimate.shape != reference.shape or estimate.dim() != 3:
            raise ValueError(
                f"estimate and reference must both be [B, 1, N], got {tuple(estimate.shape)} "
                f"and {tuple(reference.shape)}"
            )
        longest = max(t.n_fft for t in self.transforms)
        if estimate.shape[-1] <= longest // 2:
            raise ValueError(
                f"audio needs more than {longest // 2} samples for the {longest}-sample window, "
                f"got N={estimate.shape[-1]}"
            )
        loss = estimate.new_zeros(())
        for transform in self.transforms:
            mel_est, mel_ref = transform(estimate), transform(reference)  # [B, 1, n_mels, frames]
            if self.log_weight:
                log_est = mel_est.clamp(min=self.clamp_eps).pow(self.pow).log10()
                log_ref = mel_ref.clamp(min=self.clamp_eps).pow(self.pow).log10()
                loss = loss + self.log_weight * F.l1_loss(log_est, log_ref)
            if self.mag_weight:
                loss = loss + self.mag_weight * F.l1_loss(mel_est, mel_ref)
        return loss


def _check_logits(name: str, logits: Sequence[Tensor]) -> None:
    if len(logits) == 0:
        raise ValueError(f"{name} must hold one logits tensor per discriminator, got an empty list")


def hinge_discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """EnCodec discriminator hinge loss ``1/K sum_k mean(relu(1 - D_k(x))) + mean(relu(1 + D_k(x_hat)))``.

    real_logits, fake_logits: K tensors (any shape, e.g. [B, 1, T, F]) -> scalar.
    """
    _check_logits("real_logits", real_logits)
    if len(real_logits) != len(fake_logits):
        raise ValueError(f"got {len(real_logits)} real and {len(fake_logits)} fake logits tensors")
    losses = [
        F.relu(1 - real).mean() + F.relu(1 + fake).mean() for real, fake in zip(real_logits, fake_logits)
    ]
    return torch.stack(losses).mean()


def hinge_generator_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """EnCodec generator hinge loss ``1/K sum_k mean(relu(1 - D_k(x_hat)))``.

    (audiocraft's code uses ``-mean(D_k(x_hat))`` instead; this is the paper's form, which stops
    pushing logits once they pass 1.) fake_logits: K tensors -> scalar.
    """
    _check_logits("fake_logits", fake_logits)
    return torch.stack([F.relu(1 - fake).mean() for fake in fake_logits]).mean()


def feature_matching_loss(
    real_features: Sequence[Sequence[Tensor]], fake_features: Sequence[Sequence[Tensor]], *, eps: float = 1e-8
) -> Tensor:
    """EnCodec feature-matching loss: for each discriminator k and layer l,
    ``mean|D_k^l(x) - D_k^l(x_hat)| / max(mean|D_k^l(x)|, eps)``, averaged over the layers of each
    discriminator and then over the K discriminators (as audiocraft's ``FeatureMatchingLoss``).
    Real features are detached, so only the generator receives gradients.

    real_features, fake_features: K lists of L_k tensors of matching shapes -> scalar.
    """
    if len(real_features) == 0 or len(real_features) != len(fake_features):
        raise ValueError(
            f"need the same non-zero number of discriminators, got {len(real_features)} real and "
            f"{len(fake_features)} fake feature lists"
        )
    per_disc = []
    for k, (reals, fakes) in enumerate(zip(real_features, fake_features)):
        if len(reals) == 0 or len(reals) != len(fakes):
            raise ValueError(f"discriminator {k}: got {len(reals)} real and {len(fakes)} fake feature maps")
        layers = []
        for real, fake in zip(reals, fakes):
            real = real.detach()
            layers.append((real - fake).abs().mean() / real.abs().mean().clamp(min=eps))
        per_disc.append(torch.stack(layers).mean())
    return torch.stack(per_disc).mean()
