"""The generators' backbone: a transformer over pattern steps, one embedding and one head per codebook.

The input of a step is the sum over codebooks of their embeddings (MusicGen, Copet et al. 2023,
sec. 2.3). Each codebook q has ``codebook_sizes[q] + 1`` input ids: its codes and one special id,
``codebook_sizes[q]``. Run causally (AR), inputs are the steps shifted right and the special id
stands for "start" and for a pattern's empty slots; run bidirectionally (masked diffusion,
``causal=False``), inputs are the noisy steps and the special id is the absorbing mask. An optional
prefix of condition embeddings ``[B, P, D]`` (phonemes, a voice prompt, a class) precedes the steps,
and optional ``step_embeddings [B, S, D]`` (conditions placed on the frames) are added to the steps'
inputs; outputs are read only at the step positions.

With ``end_token`` the first codebook's head has one more output, ``codebook_sizes[0]``, meaning
"the sequence ends before this frame" (VALL-E's end-of-sequence on its first codebook): generation
stops per item when it is drawn. It is never fed back, so it may share its id with "start".

Positions: the generator gives each prefix embedding and step its coordinates, ``[B, P + S]`` on a
time axis or ``[B, P + S, A]`` on an A-axis grid ((h, w) images, (t, h, w) video). With
``positions="rotary"`` they are the rotary positions (axial over A = ``position_axes`` axes, see
:func:`mmtok.nn.rotary_angles`); with ``"learned"`` each step gets learned embeddings of its
coordinate along every axis (``grid`` gives the sizes: VQGAN's transformer, Esser et al. 2021), and
attention uses rotary positions over the sequence order.

Shapes: ``steps: LongTensor [B, Q, S]`` -> ``logits: FloatTensor [B, Q, S, V]`` with V the widest
head, and ``-inf`` past a smaller head's size. With ``heads=False`` the backbone has no token heads
and gives hidden states only (:meth:`hidden`), for a generator with its own output head (ResGen's
mixture of Gaussians): heads it never trains would be dead weights, and DDP refuses parameters
without gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmtok.conditioning.base import Prefix
from mmtok.hub import class_name
from mmtok.nn import KVCache, Transformer

POSITION_KINDS = ("rotary", "learned")


class CodebookTransformer(nn.Module):
    """The backbone generators are built from (injected by ``class_path``; :meth:`spec` records it)."""

    def __init__(self, *, codebook_sizes: Sequence[int], dim: int = 256, num_layers: int = 6, num_heads: int = 4,
                 ff_mult: float = 8 / 3, dropout: float = 0.0, end_token: bool = False, positions: str = "rotary",
                 position_axes: int = 1, grid: Sequence[int] | None = None, heads: bool = True):
        super().__init__()
        if not codebook_sizes or any(size < 1 for size in codebook_sizes):
            raise ValueError(f"codebook_sizes must be positive integers, got {list(codebook_sizes)}")
        if positions not in POSITION_KINDS:
            raise ValueError(f"positions must be one of {POSITION_KINDS}, got {positions!r}")
        if positions == "learned" and not grid:
            raise ValueError("learned positions need the grid's size per axis, e.g. grid: [8, 8]")
        self.init_args = dict(codebook_sizes=[int(size) for size in codebook_sizes], dim=dim, num_layers=num_layers,
                              num_heads=num_heads, ff_mult=ff_mult, dropout=dropout, end_token=end_token,
                              positions=positions, position_axes=position_axes,
                              grid=None if grid is None else [int(g) for g in grid], heads=heads)
        self.codebook_sizes = self.init_args["codebook_sizes"]
        self.embeddings = nn.ModuleList(nn.Embedding(size + 1, dim) for size in self.codebook_sizes)
        self.positions = positions
        self.transformer = Transformer(dim=dim, num_layers=num_layers, num_heads=num_heads, ff_mult=ff_mult,
                                       dropout=dropout, position_axes=position_axes if positions == "rotary" else 1)
        self.axis_embeddings = (nn.ModuleList(nn.Embedding(size, dim) for size in grid) if positions == "learned"
                                else None)
        self.end_token = end_token
        self.head_sizes = [size + (end_token and q == 0) for q, size in enumerate(self.codebook_sizes)]
        self.heads = nn.ModuleList(nn.Linear(dim, size) for size in self.head_sizes) if heads else None

    def spec(self) -> dict:
        """``{"class_path", "init_args"}``: what a generator's config records to rebuild this backbone."""
        return {"class_path": class_name(type(self)), "init_args": dict(self.init_args)}

    @property
    def dim(self) -> int:
        return self.init_args["dim"]

    @property
    def device(self) -> torch.device:
        return self.embeddings[0].weight.device

    @property
    def coordinate_axes(self) -> int:
        """How many coordinates per position the generator must give (1: a time axis)."""
        return len(self.init_args["grid"]) if self.positions == "learned" else self.transformer.position_axes

    @property
    def special_ids(self) -> list[int]:
        """Per codebook, the id of "start / empty slot"."""
        return list(self.codebook_sizes)

    @property
    def end_id(self) -> int | None:
        """The first codebook's output id meaning "end", or None without an end token."""
        return self.codebook_sizes[0] if self.end_token else None

    def embed(self, steps: torch.Tensor) -> torch.Tensor:
        """steps [B, Q, S] -> the sum of the codebooks' embeddings, [B, S, D]."""
        if steps.dim() != 3 or steps.shape[1] != len(self.embeddings):
            raise ValueError(f"steps must be [B, {len(self.embeddings)}, S], got shape {tuple(steps.shape)}")
        return sum(embedding(steps[:, q]) for q, embedding in enumerate(self.embeddings))

    def shift_right(self, steps: torch.Tensor) -> torch.Tensor:
        """The input ids for predicting ``steps``: the start token, then steps[:, :, :-1]."""
        start = torch.tensor(self.special_ids, device=steps.device)[None, :, None].expand(steps.shape[0], -1, 1)
        return torch.cat([start, steps[:, :, :-1]], dim=2)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D] -> [B, Q, S, max head size], -inf past each head's size."""
        width = max(self.head_sizes)
        if all(size == width for size in self.head_sizes):  # nothing to pad with -inf
            return torch.stack([head(hidden) for head in self.heads], dim=1)
        out = hidden.new_full((hidden.shape[0], len(self.heads), hidden.shape[1], width), float("-inf"))
        for q, head in enumerate(self.heads):
            out[:, q, :, : self.head_sizes[q]] = head(hidden)
        return out

    def forward(self, inputs: torch.Tensor, *, prefix: Prefix | None = None, steps_valid: torch.Tensor | None = None,
                cache: KVCache | None = None, causal: bool = True, positions: torch.Tensor | None = None,
                step_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every input step ``inputs [B, Q, S]``. Causally, they predict the next step (the
        inputs are already shifted, :meth:`shift_right`; with ``cache`` only the new steps are given);
        bidirectionally, the clean step at each position. ``steps_valid [B, S]`` hides padded steps
        from attention; ``positions`` ([B, P + S] or [B, P + S, A]) are the coordinates of prefix and
        steps (None: 0, 1, 2, ... in sequence order)."""
        return self.logits(self.hidden(inputs, prefix=prefix, steps_valid=steps_valid, cache=cache, causal=causal,
                                       positions=positions, step_embeddings=step_embeddings))

    def hidden(self, inputs: torch.Tensor, *, prefix: Prefix | None = None, steps_valid: torch.Tensor | None = None,
               cache: KVCache | None = None, causal: bool = True, positions: torch.Tensor | None = None,
               step_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden states of the steps, [B, S, D] (:meth:`forward` without the heads)."""
        x = self.embed(inputs)
        if step_embeddings is not None:
            x = x + step_embeddings
        if self.axis_embeddings is not None:  # learned coordinates of the steps; attention in sequence order
            if positions is None:
                raise ValueError("a backbone with learned positions needs the steps' coordinates")
            coordinates = positions[:, -inputs.shape[2]:].round().long()
            if coordinates.dim() == 2:  # a time axis: [B, S] -> [B, S, 1]
                coordinates = coordinates[..., None]
            x = x + sum(table(coordinates[..., axis].clamp(0, table.num_embeddings - 1))
                        for axis, table in enumerate(self.axis_embeddings))
            positions = None
        valid = steps_valid
        if prefix is not None:
            x = torch.cat([prefix.embeddings, x], dim=1)
            if steps_valid is not None or not bool(prefix.valid.all()):
                ones = torch.ones(x.shape[0], inputs.shape[2], dtype=torch.bool, device=x.device)
                valid = torch.cat([prefix.valid, ones if steps_valid is None else steps_valid], dim=1)
        hidden = self.transformer(x, valid=valid, causal=causal, cache=cache, positions=positions)
        return hidden[:, hidden.shape[1] - inputs.shape[2]:]

    def logits_at(self, hidden: torch.Tensor, codebooks: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Logits of codebook ``codebooks[b, k]`` at step ``steps[b, k]`` only ([B, k] each), from
        ``hidden [B, S, D]``: [B, k, V] (V the widest head, -inf past a smaller head's size)."""
        selected = torch.gather(hidden, 1, steps[..., None].expand(-1, -1, hidden.shape[2]))
        every_head = self.logits(selected)  # [B, Q, k, V]: Q heads on k vectors, not on all S
        index = codebooks[:, None, :, None].expand(-1, 1, -1, every_head.shape[-1])
        return torch.gather(every_head, 1, index)[:, 0]

    def new_cache(self, batch: int, max_length: int, *, device: torch.device | None = None) -> KVCache:
        return self.transformer.new_cache(batch, max_length, device=device)
