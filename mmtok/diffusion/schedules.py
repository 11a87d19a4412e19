"""Masking schedules α(t): the probability that a token is still unmasked at time t ∈ [0, 1].

α(0) = 1 (clean data) and α(1) = 0 (all masked). A masked diffusion model (MDLM, Sahoo et al. 2024)
trains on x_t, each token masked independently with probability 1 − α(t), and its continuous-time
negative ELBO weights the cross-entropy of the masked tokens by −α'(t) / (1 − α(t)) (MDLM eq. 10).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch


class MaskSchedule(ABC):
    name: str = ""

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability of being unmasked at time t."""

    @abstractmethod
    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """dα/dt (≤ 0)."""

    @abstractmethod
    def inverse(self, alpha: torch.Tensor) -> torch.Tensor:
        """The time t at which α(t) = alpha."""

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """−α'(t) / (1 − α(t)): the weight of a masked token's cross-entropy in the NELBO."""
        return -self.alpha_derivative(t) / (1 - self.alpha(t))


class LogLinearSchedule(MaskSchedule):
    """α(t) = 1 − t (MDLM's log-linear noise σ(t) = −log(1 − t)): weight 1 / t."""

    name = "log_linear"

    def alpha(self, t):
        return 1 - t

    def alpha_derivative(self, t):
        return -torch.ones_like(t)

    def inverse(self, alpha):
        return 1 - alpha


class CosineSchedule(MaskSchedule):
    """α(t) = cos(π t / 2) (MaskGIT's cosine masking ratio 1 − α(t) = 1 − cos(π t / 2))."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(math.pi / 2 * t)

    def alpha_derivative(self, t):
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)

    def inverse(self, alpha):
        return 2 / math.pi * torch.arccos(alpha.clamp(-1, 1))


SCHEDULES = {cls.name: cls for cls in (LogLinearSchedule, CosineSchedule)}


def build_schedule(name: str) -> MaskSchedule:
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name]()
