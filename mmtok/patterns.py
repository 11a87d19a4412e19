"""Codebook patterns: codes ``[B, Q, T]`` ⇄ a sequence of steps ``[B, Q, S]`` that a generator predicts.

A generator sees one step at a time; each step has Q slots, one per codebook. A pattern decides which
code ``(q, t)`` sits in slot ``q`` of step ``s``, so the same backbone can predict all codebooks of a
frame at once (``parallel``), with per-codebook delays (``delay``; MusicGen, Copet et al. 2023, sec.
2.2), one code per step (``flatten``) or the first codebook for every frame before the others
(``coarse_first``; the order of VALL-E's AR and NAR stages, Wang et al. 2023).

Every pattern is one layout: ``layout(Q, T) -> LongTensor [Q, S]`` holding, for every slot, the frame
``t`` whose code ``(q, t)`` it carries, or -1 for an empty slot. :meth:`Pattern.build` gathers codes
into steps and :meth:`Pattern.revert` scatters them back, so every pattern is exactly invertible by
construction; :meth:`Pattern.layout` checks that each code has exactly one slot.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

EMPTY = -1


class Pattern(ABC):
    """Where each code ``(q, t)`` goes in the sequence of steps."""

    @abstractmethod
    def _layout(self, num_codebooks: int, num_frames: int) -> torch.Tensor:
        """LongTensor [Q, S]: the frame whose code fills slot (q, s), or -1."""

    def layout(self, num_codebooks: int, num_frames: int) -> torch.Tensor:
        """The validated layout: every code ``(q, t)`` appears in exactly one slot of row q."""
        if num_codebooks < 1 or num_frames < 0:
            raise ValueError(f"{type(self).__name__}: need Q ≥ 1 and T ≥ 0, got Q={num_codebooks}, T={num_frames}")
        layout = self._layout(num_codebooks, num_frames)
        for q, row in enumerate(layout):
            frames = row[row != EMPTY].sort().values
            if not torch.equal(frames, torch.arange(num_frames)):
                raise ValueError(f"{type(self).__name__}: codebook {q} does not place every frame exactly once")
        return layout

    def is_frame_stable(self, num_codebooks: int) -> bool:
        """Whether code (q, t) sits at the same step whatever the number of frames, so that a sequence
        can stop at any frame (what an end token needs). Parallel, delay and flatten are; coarse_first
        is not (its second half starts after the last frame)."""
        short, longer = self.layout(num_codebooks, 3), self.layout(num_codebooks, 5)
        head = longer[:, :short.shape[1]]
        return torch.equal(torch.where(head < 3, head, EMPTY), short)

    def num_steps(self, num_codebooks: int, num_frames: int) -> int:
        return self.layout(num_codebooks, num_frames).shape[1]

    def build(self, codes: torch.Tensor, *, fill: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """codes [B, Q, T] -> (steps [B, Q, S] with ``fill`` in empty slots, mask [Q, S]); ``fill`` is
        one id, or one per codebook (a generator's "empty slot" id of each codebook)."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be [B, Q, T], got shape {tuple(codes.shape)}")
        layout = self.layout(codes.shape[1], codes.shape[2]).to(codes.device)
        mask = layout != EMPTY
        index = layout.clamp(min=0).expand(codes.shape[0], -1, -1)
        steps = torch.gather(codes, 2, index) if codes.shape[2] else torch.zeros_like(index)
        fill = torch.as_tensor(fill, dtype=codes.dtype, device=codes.device).reshape(-1, 1)
        return torch.where(mask, steps, fill), mask

    def revert(self, steps: torch.Tensor, num_frames: int) -> torch.Tensor:
        """steps [B, Q, S] -> codes [B, Q, T]: the inverse of :meth:`build`."""
        if steps.dim() != 3:
            raise ValueError(f"steps must be [B, Q, S], got shape {tuple(steps.shape)}")
        layout = self.layout(steps.shape[1], num_frames).to(steps.device)
        if layout.shape[1] != steps.shape[2]:
            raise ValueError(f"{type(self).__name__}: {num_frames} frames need {layout.shape[1]} steps, "
                             f"got {steps.shape[2]}")
        codes = steps.new_zeros(steps.shape[0], steps.shape[1], num_frames)
        mask = layout != EMPTY
        q, s = mask.nonzero(as_tuple=True)
        codes[:, q, layout[q, s]] = steps[:, q, s]
        return codes


class ParallelPattern(Pattern):
    """Step t holds all Q codes of frame t: S = T."""

    def _layout(self, num_codebooks: int, num_frames: int) -> torch.Tensor:
        return torch.arange(num_frames).expand(num_codebooks, -1).clone()


class DelayPattern(Pattern):
    """Codebook q is shifted right by ``delays[q]`` steps (MusicGen's default: 0, 1, ..., Q-1):
    S = T + max(delays). Codebook q of frame t is predicted after the coarser codes of frame t."""

    def __init__(self, delays: Sequence[int] | None = None):
        if delays is not None and (not delays or any(d < 0 for d in delays)):
            raise ValueError(f"delays must be non-negative integers, one per codebook, got {delays}")
        self.delays = None if delays is None else [int(d) for d in delays]

    def _layout(self, num_codebooks: int, num_frames: int) -> torch.Tensor:
        delays = self.delays if self.delays is not None else list(range(num_codebooks))
        if len(delays) != num_codebooks:
            raise ValueError(f"DelayPattern has {len(delays)} delays for {num_codebooks} codebooks")
        layout = torch.full((num_codebooks, num_frames + max(delays)), EMPTY)
        for q, delay in enumerate(delays):
            layout[q, delay:delay + num_frames] = torch.arange(num_frames)
        return layout


class FlattenPattern(Pattern):
    """One code per step, frame by frame, codebook by codebook: S = Q · T (step t · Q + q)."""

    def _layout(self, num_codebooks: int, num_frames: int) -> torch.Tensor:
        layout = torch.full((num_codebooks, num_codebooks * num_frames), EMPTY)
        for q in range(num_codebooks):
            layout[q, q::num_codebooks] = torch.arange(num_frames)
        return layout


class CoarseFirstPattern(Pattern):
    """The first codebook for every frame (T steps), then the other Q - 1 codebooks of each frame in
    parallel (T more steps): S = 2T, or T when Q = 1."""

    def _layout(self, num_codebooks: int, num_frames: int) -> torch.Tensor:
        rest = num_frames if num_codebooks > 1 else 0
        layout = torch.full((num_codebooks, num_frames + rest), EMPTY)
        layout[0, :num_frames] = torch.arange(num_frames)
        if rest:
            layout[1:, num_frames:] = torch.arange(num_frames)
        return layout


PATTERN_NAMES = {"parallel": "ParallelPattern", "delay": "DelayPattern", "flatten": "FlattenPattern",
                 "coarse_first": "CoarseFirstPattern"}


def build_pattern(spec: str | dict) -> Pattern:
    """A pattern from a name (``"delay"``) or a ``{"class_path": "mmtok.patterns.DelayPattern",
    "init_args": {...}}`` dict, as in recipes. Only :class:`Pattern` subclasses in mmtok.patterns qualify."""
    if isinstance(spec, str):
        spec = {"class_path": PATTERN_NAMES.get(spec, spec)}
    name = str(spec.get("class_path", "")).rsplit(".", 1)[-1]
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, Pattern) and cls is not Pattern):
        raise ValueError(f"pattern {spec!r}: expected one of {sorted(PATTERN_NAMES)} or a mmtok.patterns class_path")
    return cls(**spec.get("init_args", {}))


def pattern_spec(pattern: Pattern) -> dict:
    return {"class_path": f"mmtok.patterns.{type(pattern).__name__}", "init_args": dict(vars(pattern))}
