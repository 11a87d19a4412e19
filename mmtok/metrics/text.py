"""Error rates over token sequences (phoneme error rate, word error rate)."""

from __future__ import annotations

import random
from collections.abc import Sequence


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions turning one into the other."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def error_rate(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> float:
    """Corpus-level error rate: Σ edit distances / Σ reference lengths (PER over phoneme lists, WER over words)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("error_rate needs at least one non-empty reference")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / total


def _edits_and_lengths(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> tuple[list[int], list[int]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    return [edit_distance(r, h) for r, h in zip(references, hypotheses)], [len(r) for r in references]


def _bootstrap(statistic, items: int, *, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over ``resamples`` draws of ``items`` sentences with
    replacement (Efron & Tibshirani 1993, ch. 13)."""
    if items == 0:
        raise ValueError("a bootstrap interval needs at least one sentence")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and resamples >= 1, got {confidence}, {resamples}")
    rng = random.Random(seed)
    values = sorted(statistic([rng.randrange(items) for _ in range(items)]) for _ in range(resamples))
    tail = round((1 - confidence) / 2 * (resamples - 1))  # draws left out on each side
    return values[tail], values[resamples - 1 - tail]


def error_rate_interval(references: Sequence[Sequence], hypotheses: Sequence[Sequence], *, resamples: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap ``confidence`` interval of the corpus error rate (:func:`error_rate`) over sentences:
    the sentences are resampled with replacement and Σ edits / Σ lengths recomputed on each draw."""
    edits, lengths = _edits_and_lengths(references, hypotheses)

    def rate(indices: list[int]) -> float:
        return sum(edits[i] for i in indices) / max(sum(lengths[i] for i in indices), 1)

    return _bootstrap(rate, len(edits), resamples=resamples, confidence=confidence, seed=seed)


def error_rate_difference_interval(references: Sequence[Sequence], hypotheses_a: Sequence[Sequence],
                                   hypotheses_b: Sequence[Sequence], *, resamples: int = 2000,
                                   confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap interval of ``error_rate(a) - error_rate(b)`` for two systems on the same
    sentences (Koehn 2004, "Statistical significance tests for machine translation evaluation"): each
    draw resamples sentences and scores both systems on the same draw, so the sentences' own
    difficulty cancels. An interval that excludes 0 says one system wins at that confidence."""
    edits_a, lengths = _edits_and_lengths(references, hypotheses_a)
    edits_b, _ = _edits_and_lengths(references, hypotheses_b)

    def difference(indices: list[int]) -> float:
        total = max(sum(lengths[i] for i in indices), 1)
        return (sum(edits_a[i] for i in indices) - sum(edits_b[i] for i in indices)) / total

    return _bootstrap(difference, len(lengths), resamples=resamples, confidence=confidence, seed=seed)
