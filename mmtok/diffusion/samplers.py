"""Samplers for masked diffusion models, each a function of a denoiser and an explicit ``mask_id``.

``denoiser(tokens: LongTensor [B, L], t: FloatTensor [B]) -> logits FloatTensor [B, L, V]`` predicts
the clean token of every position; V excludes the mask. A denoiser that also takes
``positions: LongTensor [B, k]`` and then returns only those positions' logits ``[B, k, V]`` lets
the first-hitting sampler skip the output layer everywhere else (it reveals positions chosen
uniformly, before the call). Every sampler starts from ``initial``
(``[B, L]``; positions holding ``mask_id`` are generated, the others are kept, e.g. padding or a
prompt), takes temperature / top-k / top-p, classifier-free guidance against an ``unconditional``
denoiser, a ``torch.Generator``, and draws categoricals in float64 unless ``precision="float32"``.
Each returns ``(tokens, stats)`` with the number of denoiser calls and categorical draws.

- :func:`ancestral_sample`: the reference step-wise sampler of MDLM (Sahoo et al. 2024, its
  ``_ddpm_update``): at every step every masked position draws from
  q(x_s | x_t, x̂_0), a categorical over the V tokens and the mask, so several tokens can be
  revealed together unless the steps are many; a step that reveals nothing reuses the last logits.
- :func:`first_hitting_sample`: the first-hitting sampler of Zheng et al. (2024): with n masked
  tokens at time t the next time one is unmasked is drawn in closed form,
  s = α⁻¹(1 − (1 − α(t)) · u^(1/n)), and exactly one uniformly chosen masked position is revealed per
  denoiser call (or ``tokens_per_call`` = k of them: the denoiser is told the time of the first of
  the k events and the next call starts from the k-th). Sequences of a batch advance in lockstep.
- :func:`maskgit_sample`: MaskGIT's confidence-ranked parallel decoding (Chang et al. 2022): at
  step i the ⌊γ(i / N) · L⌋ least confident positions stay masked, γ(r) = cos(π r / 2), with Gumbel
  noise on the confidences annealed linearly to zero; confidence is the model's own guided probability.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from mmtok.diffusion.schedules import LogLinearSchedule, MaskSchedule
from mmtok.sampling import PRECISIONS, classifier_free_guidance, process_logits, sample_categorical

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _guided_logits(denoiser: Denoiser, tokens: torch.Tensor, t: torch.Tensor, *, unconditional: Denoiser | None,
                   cfg_scale: float, positions: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own (classifier-free guided) logits [B, L, V], or [B, k, V] at ``positions``."""
    def call(model: Denoiser) -> torch.Tensor:
        if positions is None:
            return model(tokens, t)
        if _takes_positions(model):
            return model(tokens, t, positions=positions)
        logits = model(tokens, t)
        return torch.gather(logits, 1, positions[..., None].expand(-1, -1, logits.shape[-1]))

    logits = call(denoiser)
    if unconditional is not None and cfg_scale != 1.0:
        logits = classifier_free_guidance(logits, call(unconditional), cfg_scale)
    return logits


def _logits(denoiser: Denoiser, tokens: torch.Tensor, t: torch.Tensor, *, unconditional: Denoiser | None,
            cfg_scale: float, temperature: float, top_k: int | None, top_p: float | None,
            positions: torch.Tensor | None = None) -> torch.Tensor:
    """Processed (guided, tempered, truncated) logits [B, L, V], or [B, k, V] at ``positions``."""
    logits = _guided_logits(denoiser, tokens, t, unconditional=unconditional, cfg_scale=cfg_scale,
                            positions=positions)
    return process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)


def _takes_positions(denoiser: Denoiser) -> bool:
    try:
        return "positions" in inspect.signature(denoiser).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _check(initial: torch.Tensor, mask_id: int) -> None:
    if initial.dim() != 2:
        raise ValueError(f"initial tokens must be [B, L], got shape {tuple(initial.shape)}")
    if mask_id < 0:
        raise ValueError(f"mask_id must be a non-negative token id, got {mask_id}")


@torch.no_grad()
def first_hitting_sample(denoiser: Denoiser, initial: torch.Tensor, *, mask_id: int,
                         schedule: MaskSchedule | None = None, tokens_per_call: int = 1,
                         unconditional: Denoiser | None = None, cfg_scale: float = 1.0, temperature: float = 1.0,
                         top_k: int | None = None, top_p: float | None = None,
                         generator: torch.Generator | None = None,
                         precision: str = "float64") -> tuple[torch.Tensor, dict]:
    """FHS: one denoiser call per unmasking event; see the module docstring."""
    _check(initial, mask_id)
    if tokens_per_call < 1:
        raise ValueError(f"tokens_per_call must be ≥ 1, got {tokens_per_call}")
    schedule = schedule or LogLinearSchedule()
    tokens = initial.clone()
    batch, device = tokens.shape[0], tokens.device
    t = torch.ones(batch, dtype=PRECISIONS[precision])
    calls = draws = 0
    while True:
        masked = tokens == mask_id
        remaining = masked.sum(1).cpu()
        if not bool(remaining.any()):
            break
        # The time of the first of this call's events, at which the denoiser sees n masked tokens.
        t = _next_hitting_time(schedule, t, remaining, generator)
        # Reveal k uniformly chosen masked positions per sequence (random scores, masked first); the
        # choice does not depend on the denoiser, so only the chosen positions' logits are needed.
        scores = torch.rand(tokens.shape, generator=generator).to(device).masked_fill(~masked, -1.0)
        chosen = scores.topk(min(tokens_per_call, tokens.shape[1]), dim=1).indices
        chosen_masked = torch.gather(masked, 1, chosen)
        rows = torch.arange(batch, device=device)[:, None].expand_as(chosen)
        logits = _logits(denoiser, tokens, t.float().to(device), unconditional=unconditional, cfg_scale=cfg_scale,
                         temperature=temperature, top_k=top_k, top_p=top_p, positions=chosen)
        calls += 1
        picked = sample_categorical(logits, generator=generator, precision=precision)
        draws += int(chosen_masked.sum())
        tokens[rows[chosen_masked], chosen[chosen_masked]] = picked[chosen_masked]
        # The other k − 1 events of the call: the k-th first-hitting time is where the next call starts.
        for extra in range(1, tokens_per_call):
            t = _next_hitting_time(schedule, t, remaining - extra, generator)
    return tokens, {"denoiser_calls": calls, "categorical_draws": draws}


def _next_hitting_time(schedule: MaskSchedule, t: torch.Tensor, masked: torch.Tensor,
                       generator: torch.Generator | None) -> torch.Tensor:
    """The time of the next unmasking event with ``masked`` [B] tokens masked at time ``t`` [B]
    (Zheng et al. 2024, the first hitting time: s = α⁻¹(1 − (1 − α(t)) · u^(1/n)), u ~ U(0, 1)).
    Sequences with nothing masked keep their time."""
    u = torch.rand(t.shape, generator=generator, dtype=t.dtype)
    n = masked.clamp(min=1).to(t.dtype)
    s = schedule.inverse(1 - (1 - schedule.alpha(t)) * u ** (1 / n))
    return torch.where(masked > 0, s, t)


@torch.no_grad()
def ancestral_sample(denoiser: Denoiser, initial: torch.Tensor, *, mask_id: int, num_steps: int,
                     schedule: MaskSchedule | None = None, unconditional: Denoiser | None = None,
                     cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, generator: torch.Generator | None = None,
                     precision: str = "float64", time_agnostic: bool = True) -> tuple[torch.Tensor, dict]:
    """The MDLM reference sampler over ``num_steps`` uniform steps from t = 1 to 0. With a
    ``time_agnostic`` denoiser, a step that changed nothing reuses the previous logits."""
    _check(initial, mask_id)
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    schedule = schedule or LogLinearSchedule()
    dtype = PRECISIONS[precision]
    tokens = initial.clone()
    batch, device = tokens.shape[0], tokens.device
    calls = draws = 0
    logits = None
    for i in range(num_steps):
        masked = tokens == mask_id
        if not bool(masked.any()):
            break
        t, s = 1 - i / num_steps, 1 - (i + 1) / num_steps
        if logits is None or not time_agnostic:
            logits = _logits(denoiser, tokens, torch.full((batch,), t, device=device), unconditional=unconditional,
                             cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
            calls += 1
        alpha_t, alpha_s = (float(schedule.alpha(torch.tensor(x, dtype=torch.float64))) for x in (t, s))
        # q(x_s | x_t, x̂0) for a masked position: token v with (α_s − α_t)/(1 − α_t) · p(v), else still masked.
        probs = logits[masked].to(dtype).softmax(-1) * (alpha_s - alpha_t) / (1 - alpha_t)
        stay = torch.full(probs.shape[:-1] + (1,), (1 - alpha_s) / (1 - alpha_t), dtype=dtype, device=device)
        categories = torch.cat([probs, stay], dim=-1).clamp(min=0).log()
        picked = sample_categorical(categories, generator=generator, precision=precision)
        draws += int(masked.sum())
        revealed = picked < probs.shape[-1]
        if bool(revealed.any()):
            updated = tokens[masked]
            updated[revealed] = picked[revealed]
            tokens[masked] = updated
            logits = None
    return tokens, {"denoiser_calls": calls, "categorical_draws": draws}


@torch.no_grad()
def maskgit_sample(denoiser: Denoiser, initial: torch.Tensor, *, mask_id: int, num_steps: int,
                   choice_temperature: float = 4.5, schedule: MaskSchedule | None = None,
                   unconditional: Denoiser | None = None, cfg_scale: float = 1.0,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   generator: torch.Generator | None = None, precision: str = "float64") -> tuple[torch.Tensor, dict]:
    """MaskGIT decoding in ``num_steps`` steps with the cosine schedule; ``choice_temperature`` scales
    the Gumbel noise added to the log-confidences (annealed to 0 at the last step).

    Tokens are drawn from the processed logits (temperature, top-k, top-p), but ranked by their
    probability under the model's own guided distribution, as in MaskGIT and aMUSEd: a truncated
    distribution gives every kept token the same confidence under ``top_k=1``. A time-conditioned
    denoiser is told the time whose masking rate is the current masked fraction, α⁻¹(1 − masked/total)
    under ``schedule`` (the one it was trained with)."""
    _check(initial, mask_id)
    if num_steps < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    schedule = schedule or LogLinearSchedule()
    tokens = initial.clone()
    device = tokens.device
    total = (tokens == mask_id).sum(1)  # [B] tokens to generate per sequence
    calls = draws = 0
    for i in range(num_steps):
        masked = tokens == mask_id
        if not bool(masked.any()):
            break
        masked_fraction = masked.sum(1).double() / total.clamp(min=1)
        t = schedule.inverse(1 - masked_fraction).float()
        guided = _guided_logits(denoiser, tokens, t, unconditional=unconditional, cfg_scale=cfg_scale)
        logits = process_logits(guided, temperature=temperature, top_k=top_k, top_p=top_p)
        calls += 1
        picked = sample_categorical(logits, generator=generator, precision=precision)  # [B, L]
        draws += int(masked.sum())
        log_probs = torch.gather(guided.to(PRECISIONS[precision]).log_softmax(-1), 2, picked[..., None])[..., 0]
        ratio = (i + 1) / num_steps
        keep_masked = maskgit_masked_count(total, masked.sum(1), ratio)  # still masked after this step
        uniform = torch.rand(tokens.shape, generator=generator, dtype=log_probs.dtype).to(device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-30)))
        confidence = log_probs + choice_temperature * (1 - ratio) * gumbel
        confidence = confidence.masked_fill(~masked, math.inf)  # revealed tokens are never re-masked
        order = confidence.argsort(dim=1)  # least confident first
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(tokens.shape[1], device=device).expand_as(order))
        reveal = masked & (rank >= keep_masked[:, None])
        tokens = torch.where(reveal, picked, tokens)
    return tokens, {"denoiser_calls": calls, "categorical_draws": draws}


def maskgit_masked_count(total: torch.Tensor, currently_masked: torch.Tensor, ratio: float) -> torch.Tensor:
    """How many tokens stay masked after the step that reaches ``ratio`` of the schedule:
    ⌊cos(π · ratio / 2) · total⌋, but at least one token is revealed per step and none stays masked
    after the last step (ratio 1)."""
    if ratio >= 1:
        return torch.zeros_like(total)
    count = torch.floor(math.cos(math.pi / 2 * ratio) * total.double()).long()
    return torch.minimum(count, (currently_masked - 1).clamp(min=0))


SAMPLERS = {"fhs": first_hitting_sample, "ancestral": ancestral_sample, "maskgit": maskgit_sample}
"""The masked diffusion samplers by name: what the CLI, recipes and training modules choose from."""
