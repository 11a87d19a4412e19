"""The masked diffusion training objective (MDLM, Sahoo et al. 2024).

Each sequence draws a time t ~ U(ε, 1) (antithetic: the batch's times are evenly spread), each of
its tokens is replaced by the absorbing ``mask_id`` with probability 1 − α(t), and the model
predicts the clean tokens at the masked positions. The loss is the continuous-time NELBO: the
masked positions' cross-entropy weighted by −α'(t) / (1 − α(t)), averaged over valid tokens.
MaskGIT's objective (:func:`masked_token_cross_entropy`) weights every masked token alike instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmtok.diffusion.schedules import MaskSchedule


def sample_times(batch: int, *, eps: float = 1e-3, generator: torch.Generator | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
    """Low-discrepancy times in [eps, 1): (u + i / B) mod 1, one per sequence (MDLM's sampler)."""
    offset = torch.rand(1, generator=generator)
    t = (offset + torch.arange(batch) / batch) % 1
    return (eps + (1 - eps) * t).to(device)


def mask_tokens(tokens: torch.Tensor, t: torch.Tensor, schedule: MaskSchedule, *, mask_id: int | torch.Tensor,
                valid: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t: each valid token of ``tokens [B, ...]`` masked with probability 1 − α(t_b). ``mask_id``
    is one id or a tensor broadcastable to ``tokens`` (one per codebook). Returns (x_t, masked)."""
    shape = (tokens.shape[0],) + (1,) * (tokens.dim() - 1)
    keep = schedule.alpha(t).reshape(shape)
    draws = torch.rand(tokens.shape, generator=generator).to(tokens.device)
    masked = draws >= keep
    if valid is not None:
        masked &= valid
    return torch.where(masked, torch.as_tensor(mask_id, device=tokens.device), tokens), masked


def masked_diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor, t: torch.Tensor,
                          schedule: MaskSchedule, *, valid: torch.Tensor | None = None) -> torch.Tensor:
    """NELBO per valid token: Σ_masked w(t_b) · CE(logits, targets) / #valid tokens.

    logits [B, ..., V]; targets, masked, valid [B, ...]; t [B]."""
    ce = token_cross_entropy(logits, targets)
    weight = schedule.loss_weight(t).reshape((t.shape[0],) + (1,) * (targets.dim() - 1))
    total = (ce * weight * masked).sum()
    count = valid.sum() if valid is not None else torch.tensor(targets.numel(), device=targets.device)
    return total / count.clamp(min=1)


def masked_token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """MaskGIT's objective (Chang et al. 2022, eq. 1): the mean cross-entropy of the masked tokens of the
    batch, each weighted alike whatever its sequence's t. Not a bound on the likelihood: against the NELBO's
    weight (1 / t for the log-linear schedule) it moves the gradient towards heavily masked sequences, those
    whose predictions lay out a sample, as DDPM's L_simple does against the ELBO (Ho et al. 2020, eq. 14)."""
    return (token_cross_entropy(logits, targets) * masked).sum() / masked.sum().clamp(min=1)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [B, ..., V], targets [B, ...] -> the cross-entropy of each token, float32 [B, ...]."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").reshape(targets.shape)
