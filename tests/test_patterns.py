"""Codebook patterns: exact round trips, masks that mark exactly the filled slots, the known layouts."""

from __future__ import annotations

import pytest
import torch

from mmtok.patterns import EMPTY, CoarseFirstPattern, DelayPattern, FlattenPattern, ParallelPattern, Pattern

PATTERNS = [ParallelPattern(), DelayPattern(), FlattenPattern(), CoarseFirstPattern()]
SHAPES = [(1, 1), (1, 7), (4, 1), (4, 9), (8, 50)]
CASES = [(p, q, t) for p in PATTERNS for q, t in SHAPES] + [(DelayPattern([0, 2, 2, 5]), 4, 9)]


@pytest.mark.parametrize("pattern, q, t", CASES, ids=lambda x: type(x).__name__ if isinstance(x, Pattern) else str(x))
def test_round_trip_is_exact_and_the_mask_marks_exactly_the_filled_slots(pattern, q, t):
    codes = torch.randint(0, 1024, (3, q, t), generator=torch.Generator().manual_seed(q * 100 + t))
    steps, mask = pattern.build(codes, fill=1024)
    assert steps.shape == (3, q, pattern.num_steps(q, t)) and mask.shape == steps.shape[1:]
    assert torch.equal(pattern.revert(steps, t), codes)
    assert int(mask.sum()) == q * t, "each code fills one slot"
    assert bool((steps[:, ~mask] == 1024).all()) and bool((steps[:, mask] < 1024).all())


def test_known_layouts_for_two_codebooks_and_three_frames():
    expected = {
        ParallelPattern(): [[0, 1, 2], [0, 1, 2]],
        DelayPattern(): [[0, 1, 2, EMPTY], [EMPTY, 0, 1, 2]],
        FlattenPattern(): [[0, EMPTY, 1, EMPTY, 2, EMPTY], [EMPTY, 0, EMPTY, 1, EMPTY, 2]],
        CoarseFirstPattern(): [[0, 1, 2, EMPTY, EMPTY, EMPTY], [EMPTY, EMPTY, EMPTY, 0, 1, 2]],
    }
    for pattern, layout in expected.items():
        assert pattern.layout(2, 3).tolist() == layout, type(pattern).__name__


def test_steps_carry_the_codes_the_layout_names():
    codes = torch.tensor([[[10, 11, 12], [20, 21, 22]]])
    steps, _ = DelayPattern().build(codes, fill=-7)
    assert steps.tolist() == [[[10, 11, 12, -7], [-7, 20, 21, 22]]]
    steps, _ = FlattenPattern().build(codes, fill=-7)
    assert steps.tolist() == [[[10, -7, 11, -7, 12, -7], [-7, 20, -7, 21, -7, 22]]]
    steps, _ = CoarseFirstPattern().build(codes, fill=[100, 200])  # one "empty" id per codebook
    assert steps.tolist() == [[[10, 11, 12, 100, 100, 100], [200, 200, 200, 20, 21, 22]]]


def test_bad_layouts_and_arguments_are_named():
    class Dropping(Pattern):
        def _layout(self, num_codebooks, num_frames):
            return torch.full((num_codebooks, num_frames), EMPTY)

    with pytest.raises(ValueError, match="Dropping: codebook 0 does not place every frame exactly once"):
        Dropping().layout(2, 3)
    with pytest.raises(ValueError, match="2 delays for 4 codebooks"):
        DelayPattern([0, 1]).layout(4, 3)
    with pytest.raises(ValueError, match="non-negative"):
        DelayPattern([0, -1])
    with pytest.raises(ValueError, match=r"3 frames need 4 steps, got 3"):
        DelayPattern().revert(torch.zeros(1, 2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"codes must be \[B, Q, T\]"):
        ParallelPattern().build(torch.zeros(2, 3, dtype=torch.long), fill=0)
