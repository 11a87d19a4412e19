"""Turning logits into tokens, shared by every generator (autoregressive and masked diffusion).

Logits processors (temperature, top-k, top-p / nucleus of Holtzman et al. 2020, classifier-free
guidance of Ho & Salimans 2022 applied to logits as in MusicGen) and one categorical draw.

The draw is an inverse-CDF sample computed in float64 by default. Zheng et al. (2024, "Masked
Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical
Sampling") show that float32 Gumbel-max sampling truncates the Gumbel noise's tail, which
lowers the effective temperature and hides the loss of diversity; ``precision="float32"`` is kept
only to demonstrate that bias.
"""

from __future__ import annotations

import torch

PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for 0), got {temperature}")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of the last dimension; the others become -inf."""
    if k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {k}")
    if k >= logits.shape[-1]:
        return logits
    threshold = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to at least p (at least one)."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.double().softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def classifier_free_guidance(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale · (cond − uncond) on logits: scale 1 gives the conditional logits. A token the
    conditional logits rule out (-inf, e.g. past a codebook's size) stays ruled out, not NaN."""
    guided = unconditional + scale * (conditional - unconditional)
    return guided.masked_fill(torch.isneginf(conditional), float("-inf"))


def process_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the order of Hugging Face and audiocraft)."""
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def sample_categorical(logits: torch.Tensor, *, generator: torch.Generator | None = None,
                       precision: str = "float64", method: str = "inverse_cdf") -> torch.Tensor:
    """One token per row of ``logits [..., V]``, computed in ``precision``.

    ``method="inverse_cdf"``: the first index whose cumulative probability exceeds a uniform draw.
    ``"gumbel"``: the Gumbel-max trick in MDLM's exponential-race form, argmax p_i / E_i with
    E_i = −log(U_i) (Zheng et al. analyse this code in float32: U's grid of 2⁻²⁴ bounds E_i away
    from 0, so a token whose probability is below that scale can almost never win)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if method == "gumbel":
        probs = logits.to(PRECISIONS[precision]).softmax(-1)
        uniform = torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=logits.device)
        exponential = 1e-10 - (uniform + 1e-10).log()
        return (probs / exponential).argmax(-1)
    if method != "inverse_cdf":
        raise ValueError(f"method must be 'inverse_cdf' or 'gumbel', got {method!r}")
    probs = logits.to(PRECISIONS[precision]).softmax(-1)
    cdf = probs.cumsum(-1)
    uniform = torch.rand(logits.shape[:-1] + (1,), generator=generator, dtype=probs.dtype, device=logits.device)
    index = torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True)
    return index.clamp(max=logits.shape[-1] - 1).squeeze(-1)
