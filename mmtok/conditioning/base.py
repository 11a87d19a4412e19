"""The condition interface, the prefix they form, the conditioner that joins them, and specs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class Condition(nn.Module, ABC):
    """One batch field (``key``) embedded as a sequence of ``dim``-vectors.

    ``forward`` puts the condition's null embedding first; it is valid only for dropped (or absent)
    items, whose own embeddings are then all invalid. ``dropout`` is the training probability of
    dropping an item's condition (classifier-free guidance, Ho & Salimans 2022).
    """

    type_name: str = ""
    placement: str = "prefix"  # or "frames": added to each generated frame (see frame_embeddings)

    def __init__(self, *, key: str, dim: int, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"condition {key!r}: dropout must be in [0, 1], got {dropout}")
        self.key, self.dim, self.dropout = key, dim, dropout
        self.null = nn.Parameter(torch.randn(dim) * 0.02)

    @abstractmethod
    def embed(self, value: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch field -> (embeddings [B, P, D], valid BoolTensor [B, P])."""

    @abstractmethod
    def spec(self) -> dict:
        """The JSON arguments that rebuild this condition (with :func:`build_condition`)."""

    def read(self, batch: dict) -> Any:
        """This condition's value in a batch dict (what :meth:`embed` and :meth:`frame_embeddings`
        take): its field ``key`` by default; None when absent."""
        return batch.get(self.key)

    def auxiliary_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """The loss of a module this condition owns besides its embeddings (e.g. a predictor of what a
        task needs at generation time), trained with the generator, and values to log; None without one."""
        return None

    def frame_embeddings(self, value: Any, *, lengths: torch.Tensor, num_frames: int, device: torch.device,
                         drop: torch.Tensor | None = None) -> torch.Tensor:
        """The condition spread over the frames to generate, [B, num_frames, D] (zeros past each
        item's length), for conditions with ``placement == "frames"``."""
        raise NotImplementedError(f"condition {self.key!r} ({self.type_name}) cannot be placed on frames")

    def positions(self, count: int, device: torch.device) -> torch.Tensor:
        """Rotary positions of the null embedding and ``count - 1`` embeddings, for generators that
        place the prefix explicitly: by default just before the sequence's step 0 (−count ... −1)."""
        return torch.arange(-count, 0, device=device, dtype=torch.float)

    def forward(self, value: Any, *, batch_size: int, device: torch.device,
                drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        null = self.null.expand(batch_size, 1, -1)
        if value is None:
            return null, torch.ones(batch_size, 1, dtype=torch.bool, device=device)
        embeddings, valid = self.embed(value, device)
        if embeddings.shape[0] != batch_size:
            raise ValueError(f"condition {self.key!r}: {embeddings.shape[0]} items for a batch of {batch_size}")
        drop = torch.zeros(batch_size, dtype=torch.bool, device=device) if drop is None else drop
        return torch.cat([null, embeddings], dim=1), torch.cat([drop[:, None], valid & ~drop[:, None]], dim=1)


@dataclass
class Prefix:
    """Condition embeddings that precede a generator's steps.

    embeddings: FloatTensor [B, P, D]; valid: BoolTensor [B, P] (False on left padding);
    positions: FloatTensor [B, P], each embedding's own rotary position
    (:meth:`Condition.positions`; negative: before step 0), read by generators that place the
    prefix explicitly.
    """

    embeddings: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor

    def __post_init__(self):
        batch, length = self.embeddings.shape[:2]
        if self.valid.shape != (batch, length) or self.positions.shape != (batch, length):
            raise ValueError(f"a prefix needs valid and positions of shape {(batch, length)}, got "
                             f"{tuple(self.valid.shape)} and {tuple(self.positions.shape)}")

    @property
    def length(self) -> int:
        return self.embeddings.shape[1]

    def left_packed(self) -> Prefix:
        """Each row's valid positions moved to the end, in order, and the leading columns that no
        row uses dropped. Left padding keeps every item's steps right after its own prefix."""
        order = torch.sort(self.valid.long(), dim=1, stable=True).indices
        embeddings = torch.gather(self.embeddings, 1, order[..., None].expand(-1, -1, self.embeddings.shape[2]))
        valid, positions = torch.gather(self.valid, 1, order), torch.gather(self.positions, 1, order)
        used = valid.any(0).nonzero()
        start = int(used[0]) if len(used) else valid.shape[1]
        return Prefix(embeddings[:, start:], valid[:, start:], positions[:, start:])

    def padded_left(self, length: int) -> Prefix:
        """Left-padded with invalid zeros to ``length`` positions."""
        extra = length - self.length
        if extra < 0:
            raise ValueError(f"cannot pad a prefix of {self.length} positions to {length}")
        batch = self.embeddings.shape[0]
        return Prefix(torch.cat([self.embeddings.new_zeros(batch, extra, self.embeddings.shape[2]), self.embeddings],
                                dim=1),
                      torch.cat([self.valid.new_zeros(batch, extra), self.valid], dim=1),
                      torch.cat([self.positions.new_zeros(batch, extra), self.positions], dim=1))

    def then(self, other: Prefix) -> Prefix:
        """This prefix followed by ``other`` (same batch)."""
        return Prefix(torch.cat([self.embeddings, other.embeddings], dim=1),
                      torch.cat([self.valid, other.valid], dim=1), torch.cat([self.positions, other.positions], dim=1))

    def stacked(self, other: Prefix) -> Prefix:
        """The batch of this prefix and then ``other``'s (equal lengths), e.g. conditional and null."""
        return Prefix(torch.cat([self.embeddings, other.embeddings]), torch.cat([self.valid, other.valid]),
                      torch.cat([self.positions, other.positions]))

    def to(self, device: torch.device | str) -> Prefix:
        return Prefix(self.embeddings.to(device), self.valid.to(device), self.positions.to(device))


class Conditioner(nn.Module):
    """Joins conditions, in order, into one left-padded prefix read from a batch dict; conditions
    placed on frames are summed into one embedding per generated frame instead (:meth:`frames`)."""

    def __init__(self, conditions: list[Condition]):
        super().__init__()
        keys = [c.key for c in conditions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"conditions must read distinct batch fields, got {keys}")
        self.conditions = nn.ModuleList(conditions)

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.conditions]

    @property
    def frame_aligned(self) -> bool:
        """Whether some condition is placed on the frames (which needs the length before generating)."""
        return any(c.placement == "frames" for c in self.conditions)

    def _drop(self, condition: Condition, batch_size: int, device: torch.device,
              rng: torch.Generator | None) -> torch.Tensor | None:
        if self.training and condition.dropout > 0:
            return torch.rand(batch_size, generator=rng).to(device) < condition.dropout
        return None

    def forward(self, batch: dict, *, batch_size: int, device: torch.device, null: bool = False,
                rng: torch.Generator | None = None) -> Prefix | None:
        """The left-packed :class:`Prefix` of the prefix-placed conditions, or None without any. In
        training mode each condition is dropped per item with its probability; ``null=True`` drops
        every condition."""
        prefixed = [c for c in self.conditions if c.placement == "prefix"]
        if not prefixed:
            return None
        pieces, masks, positions = [], [], []
        for condition in prefixed:
            drop = self._drop(condition, batch_size, device, rng)
            x, valid = condition(None if null else condition.read(batch), batch_size=batch_size, device=device,
                                 drop=drop)
            pieces.append(x)
            masks.append(valid)
            positions.append(condition.positions(x.shape[1], device).expand(batch_size, -1))
        return Prefix(torch.cat(pieces, dim=1), torch.cat(masks, dim=1), torch.cat(positions, dim=1)).left_packed()

    def frames(self, batch: dict, *, lengths: torch.Tensor, num_frames: int, device: torch.device,
               null: bool = False, rng: torch.Generator | None = None) -> torch.Tensor | None:
        """The sum of the frame-placed conditions, [B, num_frames, D], or None without any. Dropout
        and ``null`` act as in :meth:`forward`."""
        total = None
        for condition in self.conditions:
            if condition.placement != "frames":
                continue
            drop = self._drop(condition, len(lengths), device, rng)
            x = condition.frame_embeddings(None if null else condition.read(batch), lengths=lengths,
                                           num_frames=num_frames, device=device, drop=drop)
            total = x if total is None else total + x
        return total

    def auxiliary_loss(self, batch: dict) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The sum of the conditions' auxiliary losses (None without any) and their values to log."""
        total, logs = None, {}
        for condition in self.conditions:
            extra = condition.auxiliary_loss(batch)
            if extra is not None:
                total = extra[0] if total is None else total + extra[0]
                logs.update(extra[1])
        return total, logs

    def specs(self) -> list[dict]:
        return [condition.spec() for condition in self.conditions]


def build_condition(spec: dict, *, dim: int) -> Condition:
    """A condition from its spec: ``{"type": "class"|"phonemes"|"audio_prompt"|"text_encoder", ...}``
    (the other keys are the condition's arguments; ``dim`` is the generator's width)."""
    from mmtok.conditioning.conditions import AudioPromptCondition, ClassCondition, PhonemeCondition
    from mmtok.conditioning.text import TextEncoderCondition

    types = {cls.type_name: cls for cls in (ClassCondition, PhonemeCondition, AudioPromptCondition,
                                            TextEncoderCondition)}
    if not isinstance(spec, dict) or spec.get("type") not in types:
        raise ValueError(f"condition spec {spec!r}: needs 'type', one of {sorted(types)}")
    arguments = {k: v for k, v in spec.items() if k != "type"}
    try:
        return types[spec["type"]](dim=dim, **arguments)
    except TypeError as error:
        raise ValueError(f"condition spec {spec!r}: {error}") from error
