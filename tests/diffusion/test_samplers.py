"""Masked diffusion samplers: FHS samples the exact MDM process, the ancestral sampler approaches it,
MaskGIT follows its schedule, and every sampler reveals exactly what it says."""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import pytest
import torch

from mmtok.diffusion.samplers import (ancestral_sample, first_hitting_sample, maskgit_masked_count,
                                      maskgit_sample)
from mmtok.diffusion.schedules import CosineSchedule, LogLinearSchedule

V, L, MASK = 3, 4, 3


class TinyDenoiser:
    """A fixed time-agnostic denoiser whose prediction at each position depends on the revealed
    tokens elsewhere (so the order of unmasking matters)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.bias = torch.randn(L, V, generator=g) * 1.5
        self.pair = torch.randn(L, V + 1, L, V, generator=g) * 1.5  # (source pos, source token) -> target logits
        self.pair[:, MASK] = 0  # a masked position says nothing
        self.calls = 0

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = self.bias.expand(tokens.shape[0], L, V).clone()
        for j in range(L):
            logits += self.pair[j, tokens[:, j]]
        return logits


OUTCOMES = list(itertools.product(range(V), repeat=L))


def exact_distribution(denoiser: TinyDenoiser) -> torch.Tensor:
    """The continuous-time MDM process by enumeration: a uniformly random masked position is revealed
    at each event, its token drawn from the denoiser's categorical given the current sequence."""

    @lru_cache(maxsize=None)
    def final(state: tuple[int, ...]) -> torch.Tensor:
        masked = [i for i, token in enumerate(state) if token == MASK]
        if not masked:
            out = torch.zeros(len(OUTCOMES), dtype=torch.float64)
            out[OUTCOMES.index(state)] = 1
            return out
        probs = denoiser(torch.tensor([state]), torch.ones(1))[0].double().softmax(-1)
        total = torch.zeros(len(OUTCOMES), dtype=torch.float64)
        for position in masked:
            for token in range(V):
                child = state[:position] + (token,) + state[position + 1:]
                total += probs[position, token] / len(masked) * final(child)
        return total

    return final((MASK,) * L)


def empirical(samples: torch.Tensor) -> torch.Tensor:
    codes = (samples * torch.tensor([V ** (L - 1 - i) for i in range(L)])).sum(1)
    return torch.bincount(codes, minlength=V ** L).double() / len(samples)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


COUNT = 100_000


def start(count: int = COUNT) -> torch.Tensor:
    return torch.full((count, L), MASK)


def test_first_hitting_samples_match_the_exact_mdm_distribution():
    denoiser = TinyDenoiser()
    exact = exact_distribution(denoiser)
    denoiser.calls = 0
    samples, stats = first_hitting_sample(denoiser, start(), mask_id=MASK, generator=torch.Generator().manual_seed(0))
    assert stats == {"denoiser_calls": L, "categorical_draws": COUNT * L}, "one token per sequence per call"
    assert denoiser.calls == L and (samples != MASK).all()
    assert total_variation(empirical(samples), exact) <= 0.02


def test_ancestral_sampling_approaches_the_mdm_distribution_as_steps_grow():
    denoiser = TinyDenoiser()
    exact = exact_distribution(denoiser)
    distances = {}
    for steps in (1, 8, 64):
        samples, stats = ancestral_sample(denoiser, start(40_000), mask_id=MASK, num_steps=steps,
                                          generator=torch.Generator().manual_seed(steps))
        assert (samples != MASK).all() and stats["denoiser_calls"] <= steps
        distances[steps] = total_variation(empirical(samples), exact)
    assert distances[1] > distances[8] > distances[64], distances
    assert distances[64] <= 0.03 and distances[1] > 0.1, distances  # sampling noise alone is about 0.012


def test_fhs_reveals_k_tokens_per_call_and_keeps_given_tokens():
    denoiser = TinyDenoiser()
    initial = torch.full((5, L), MASK)
    initial[:, 0] = 2  # a given token (a prompt) is never touched
    samples, stats = first_hitting_sample(denoiser, initial, mask_id=MASK, tokens_per_call=2)
    assert stats["denoiser_calls"] == 2 and stats["categorical_draws"] == 5 * 3
    assert (samples[:, 0] == 2).all() and (samples != MASK).all()


def test_maskgit_reveals_the_scheduled_counts():
    assert maskgit_masked_count(torch.tensor([100]), torch.tensor([100]), 0.5).item() == 70  # ⌊cos(π/4)·100⌋
    assert maskgit_masked_count(torch.tensor([100]), torch.tensor([3]), 0.5).item() == 2, "one revealed at least"
    denoiser, counts = TinyDenoiser(), []

    def counting(tokens, t):
        counts.append(int((tokens == MASK).sum(1)[0]))
        return denoiser(tokens, t)

    length = 16
    denoiser.bias, denoiser.pair = torch.randn(length, V), torch.zeros(length, V + 1, length, V)
    global L
    old, L = L, length
    try:
        samples, stats = maskgit_sample(counting, torch.full((2, length), MASK), mask_id=MASK, num_steps=4)
    finally:
        L = old
    assert counts == [16, 14, 11, 6] and stats["denoiser_calls"] == 4, "⌊cos(π r/2)·16⌋ for r = 1/4, 2/4, 3/4"
    assert (samples != MASK).all()


@pytest.mark.parametrize("sampler,options", [(first_hitting_sample, {}), (ancestral_sample, {"num_steps": 6}),
                                             (maskgit_sample, {"num_steps": 3})])
def test_a_fixed_generator_gives_identical_samples_and_no_mask_survives(sampler, options):
    first, _ = sampler(TinyDenoiser(), start(64), mask_id=MASK, generator=torch.Generator().manual_seed(1), **options)
    second, _ = sampler(TinyDenoiser(), start(64), mask_id=MASK, generator=torch.Generator().manual_seed(1), **options)
    assert torch.equal(first, second) and (first != MASK).all() and (first < V).all()


def test_guidance_scale_one_ignores_the_unconditional_denoiser():
    def broken(tokens, t):
        raise AssertionError("not called at scale 1")

    samples, _ = first_hitting_sample(TinyDenoiser(), start(8), mask_id=MASK, unconditional=broken, cfg_scale=1.0)
    assert (samples != MASK).all()


def test_fhs_asks_a_denoiser_that_takes_positions_for_the_revealed_positions_only_and_samples_the_same():
    denoiser, asked = TinyDenoiser(), []

    def selective(tokens, t, positions=None):
        asked.append(positions.shape)
        return torch.gather(denoiser(tokens, t), 1, positions[..., None].expand(-1, -1, V))

    plain, _ = first_hitting_sample(denoiser, start(32), mask_id=MASK, generator=torch.Generator().manual_seed(3))
    chosen, _ = first_hitting_sample(selective, start(32), mask_id=MASK, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, chosen) and asked == [(32, 1)] * L


class FixedConfidence:
    """A denoiser with fixed per-position logits (so the model's own confidence ranking is known)
    that records the tokens and times it is shown."""

    def __init__(self, length: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.logits = torch.randn(length, V, generator=g) * 3
        self.seen: list[torch.Tensor] = []
        self.times: list[torch.Tensor] = []

    def __call__(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(tokens.clone())
        self.times.append(t.clone())
        return self.logits.expand(tokens.shape[0], -1, -1).clone()


@pytest.mark.parametrize("truncation", [{}, {"top_k": 1}, {"top_p": 0.05}, {"temperature": 0.01}])
def test_maskgit_ranks_by_the_models_own_probabilities_not_the_truncated_ones(truncation):
    denoiser = FixedConfidence(12)
    most_confident = set(denoiser.logits.log_softmax(-1).max(-1).values.topk(2).indices.tolist())
    maskgit_sample(denoiser, torch.full((1, 12), MASK), mask_id=MASK, num_steps=3, choice_temperature=0.0,
                   generator=torch.Generator().manual_seed(0), **truncation)
    revealed_first = set((denoiser.seen[1][0] != MASK).nonzero()[:, 0].tolist())  # ⌊cos(π/6)·12⌋ = 10 stay masked
    assert revealed_first == most_confident


@pytest.mark.parametrize("schedule", [LogLinearSchedule(), CosineSchedule()])
def test_maskgit_tells_the_denoiser_the_time_of_the_current_masked_fraction(schedule):
    denoiser = FixedConfidence(16)
    initial = torch.full((2, 16), MASK)
    initial[1, :4] = 0  # a prompt: 12 to generate in the second sequence
    maskgit_sample(denoiser, initial, mask_id=MASK, num_steps=4, schedule=schedule)
    for tokens, t in zip(denoiser.seen, denoiser.times):
        fraction = (tokens == MASK).sum(1).double() / torch.tensor([16.0, 12.0], dtype=torch.float64)
        assert torch.allclose(schedule.alpha(t.double()), 1 - fraction, atol=1e-6)
    assert torch.equal(denoiser.times[0], torch.ones(2)) and (denoiser.times[-1] < 0.6).all()


@pytest.mark.parametrize("k", [1, 5, 7])
def test_fhs_with_k_tokens_per_call_tells_the_time_of_the_first_of_its_k_events(k):
    """With n tokens masked, the k-th first-hitting time has α(t) distributed as the k-th smallest of
    n uniform unmasking levels, so at the call that sees m masked tokens (of L) the time concentrates
    near α⁻¹(1 − m / L); with one event per call it would stay near 1 for k > 1."""
    length, denoiser = 100, FixedConfidence(100)
    first_hitting_sample(denoiser, torch.full((256, length), MASK), mask_id=MASK, tokens_per_call=k,
                         generator=torch.Generator().manual_seed(0))
    assert len(denoiser.seen) == math.ceil(length / k)
    for tokens, t in zip(denoiser.seen, denoiser.times):
        masked_fraction = (tokens == MASK).sum(1).double().mean() / length
        # E[1 − α(t)] for the time of the event with m masked tokens is m / (L + 1) under any schedule.
        assert abs(float(t.double().mean()) - float(masked_fraction) * length / (length + 1)) < 0.02
