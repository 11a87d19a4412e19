"""Transformer blocks shared by every model: recognizer encoders, AR decoders, masked-diffusion denoisers.

Pre-norm blocks with RMSNorm (Zhang & Sennrich, 2019), rotary position embeddings (Su et al., 2021,
RoFormer eq. 34: pairs of channels rotated by position-dependent angles), attention through
``scaled_dot_product_attention`` and SwiGLU feed-forward layers (Shazeer, 2020). The same blocks run
causally (``causal=True``) or bidirectionally, with a key padding mask for batches of unequal lengths.

Shapes: ``x: FloatTensor [B, T, D]``, ``valid: BoolTensor [B, T]`` (True = real step). A
:class:`KVCache` makes decoding incremental: each call feeds only the new steps.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rotary_angles(positions: torch.Tensor, head_dim: int, *, base: float = 10000.0, axes: int = 1) -> torch.Tensor:
    """positions [..., T] (``axes`` 1) or [..., T, A] -> angles [..., T, head_dim / 2].

    One axis: position · base^(-2i / head_dim) for pair i. Several axes (a (h, w) grid, a (t, h, w)
    volume): axial rotary embeddings (Heo et al. 2024, "Rotary Position Embedding for Vision
    Transformer", RoPE-Axial): the pairs are split into A equal groups, group a rotated by the
    position along axis a with its own frequency ladder, so attention sees relative offsets along
    every axis."""
    if head_dim % (2 * axes):
        raise ValueError(f"rotary embeddings over {axes} axes need a head dimension divisible by {2 * axes}, "
                         f"got {head_dim}")
    per_axis = head_dim // axes
    inverse_frequency = base ** (-torch.arange(0, per_axis, 2, device=positions.device).float() / per_axis)
    if axes == 1:
        return positions.float()[..., None] * inverse_frequency
    if positions.shape[-1] != axes:
        raise ValueError(f"positions for {axes} axes must end in {axes}, got shape {tuple(positions.shape)}")
    return (positions.float()[..., None] * inverse_frequency).flatten(-2)


def rotary_rotation(angles: torch.Tensor) -> torch.Tensor:
    """angles [T, Dh / 2] -> the unit complex numbers e^(i·angle), computed once per forward pass
    and shared by every layer."""
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, H, T, Dh] by complex ``rotation`` [T, Dh / 2]: each
    pair read as one complex number and multiplied (one kernel instead of six; same values)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to ``max_length`` steps.

    ``keys``/``values``: [layers, B, H, max_length, Dh]; ``valid``: [B, max_length] (which cached steps
    may be attended to: False for a padded prompt position); ``length``: steps stored so far. The
    transformer writes a layer's new keys with :meth:`store` and moves on with :meth:`advance`.
    """

    def __init__(self, *, num_layers: int, batch: int, num_heads: int, head_dim: int, max_length: int,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32):
        shape = (num_layers, batch, num_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.ones(batch, max_length, dtype=torch.bool, device=device)
        self.all_valid = True  # no padded step stored yet: attention needs no mask
        self.length = 0

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write [B, H, T, Dh] at the next T steps; return all keys and values so far, [B, H, length + T, Dh]."""
        end = self.length + keys.shape[2]
        if end > self.max_length:
            raise ValueError(f"KVCache holds {self.max_length} steps; {end} were asked for")
        self.keys[layer, :, :, self.length:end] = keys
        self.values[layer, :, :, self.length:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, steps: int, valid: torch.Tensor | None = None) -> None:
        if valid is not None:
            self.valid[:, self.length:self.length + steps] = valid
            self.all_valid = self.all_valid and bool(valid.all())
        self.length += steps


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions. No dropout on the attention probabilities:
    on CPU it forces the unfused kernel and its Bernoulli draw over [B, H, T, T] costs a quarter of
    a training step; the blocks drop out their residual branches instead."""

    def __init__(self, *, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, *, rotation: torch.Tensor,
                valid: torch.Tensor | None = None, causal: bool = False, cache: KVCache | None = None,
                layer: int = 0, window: int | torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        if cache is not None:
            if window is not None:
                raise ValueError("a local attention window is not supported with a KV cache")
            return self._cached(q, k, v, valid=valid, causal=causal, cache=cache, layer=layer)
        mask = None
        if valid is not None:
            mask = valid[:, None, None, :]  # [B, 1, 1, T]: which keys may be attended to
        if causal and (mask is not None or window is not None):
            mask = _and(mask, torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril())
        if window is not None:
            # A padded query far past its item's end may have no valid key in its window: let every
            # query see itself, so no row is empty (an empty row would give NaN, and NaN × 0 = NaN).
            allowed = (window if isinstance(window, torch.Tensor)
                       else local_attention_mask(x.shape[1], window, device=x.device))
            mask = _and(mask, allowed)
            mask = mask | torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out(rearrange(out, "b h t d -> b t (h d)"))

    def _cached(self, q, k, v, *, valid, causal: bool, cache: KVCache, layer: int) -> torch.Tensor:
        """Attend from the T new steps to every cached step and to themselves (causally if asked)."""
        start, steps = cache.length, q.shape[2]
        k, v = cache.store(layer, k, v)
        if valid is None and cache.all_valid and (steps == 1 or not causal or start == 0):
            # No padding anywhere: one new step may see every key, and a first chunk is plainly causal.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and steps > 1)
            return self.out(rearrange(out, "b h t d -> b t (h d)"))
        keys_valid = cache.valid[:, : start + steps].clone()
        if valid is not None:
            keys_valid[:, start:] = valid
        mask = keys_valid[:, None, None, :].expand(-1, 1, steps, -1)
        if causal:
            query_positions = torch.arange(start, start + steps, device=q.device)
            mask = mask & (torch.arange(start + steps, device=q.device)[None, :] <= query_positions[:, None])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(rearrange(out, "b h t d -> b t (h d)"))


def local_attention_mask(length: int, window: int, *, device: torch.device | None = None) -> torch.Tensor:
    """BoolTensor [T, T]: query i may attend to key j iff |i − j| ≤ ``window`` (local attention, as in
    Longformer's sliding window, Beltagy et al. 2020). With rotary (relative) positions, a stack of L
    such layers computes each output from the ±L · window steps around it, the same wherever it sits."""
    if window < 0:
        raise ValueError(f"attention window must be ≥ 0 steps, got {window}")
    steps = torch.arange(length, device=device)
    return (steps[:, None] - steps[None, :]).abs() <= window


def grid_window_mask(positions: torch.Tensor, window: int) -> torch.Tensor:
    """BoolTensor [T, T] from grid ``positions`` [T, A]: query i may attend to key j iff they are at
    most ``window`` apart on every axis (a square window of 2 · window + 1 cells on a 2-D grid; 0: each
    cell sees only itself). Pass it as a :class:`Transformer`'s ``window``."""
    if window < 0:
        raise ValueError(f"attention window must be ≥ 0 cells, got {window}")
    return (positions[:, None, :] - positions[None, :, :]).abs().amax(-1) <= window


def _and(mask: torch.Tensor | None, other: torch.Tensor) -> torch.Tensor:
    return other if mask is None else mask & other


class SwiGLU(nn.Module):
    def __init__(self, *, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.gate_and_value = nn.Linear(dim, 2 * hidden_dim, bias=False)
        self.out = nn.Linear(hidden_dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.gate_and_value(x).chunk(2, dim=-1)
        return self.out(self.dropout(F.silu(gate) * value))


class TransformerBlock(nn.Module):
    def __init__(self, *, dim: int, num_heads: int, ff_mult: float = 8 / 3, dropout: float = 0.0):
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = SelfAttention(dim=dim, num_heads=num_heads)
        self.ff_norm = RMSNorm(dim)
        self.ff = SwiGLU(dim=dim, hidden_dim=int(ff_mult * dim), dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, rotation: torch.Tensor,
                valid: torch.Tensor | None = None, causal: bool = False, cache: KVCache | None = None,
                layer: int = 0, window: int | torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), rotation=rotation, valid=valid, causal=causal,
                                            cache=cache, layer=layer, window=window))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class Transformer(nn.Module):
    """A stack of pre-norm blocks with a final RMSNorm: x [B, T, D] -> [B, T, D]."""

    def __init__(self, *, dim: int, num_layers: int, num_heads: int, ff_mult: float = 8 / 3,
                 dropout: float = 0.0, rotary_base: float = 10000.0, position_axes: int = 1):
        super().__init__()
        self.head_dim = dim // num_heads
        self.rotary_base = rotary_base
        self.position_axes = position_axes
        rotary_angles(torch.zeros(1, position_axes), self.head_dim, axes=position_axes)  # checks the sizes
        self.blocks = nn.ModuleList(
            TransformerBlock(dim=dim, num_heads=num_heads, ff_mult=ff_mult, dropout=dropout)
            for _ in range(num_layers)
        )
        self.norm = RMSNorm(dim)

    def new_cache(self, batch: int, max_length: int, *, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> KVCache:
        """An empty cache for incremental decoding of up to ``max_length`` steps."""
        return KVCache(num_layers=len(self.blocks), batch=batch, num_heads=self.blocks[0].attention.num_heads,
                       head_dim=self.head_dim, max_length=max_length, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, *, valid: torch.Tensor | None = None, causal: bool = False,
                cache: KVCache | None = None, positions: torch.Tensor | None = None,
                window: int | torch.Tensor | None = None, num_layers: int | None = None) -> torch.Tensor:
        """With ``cache``, x holds the next steps after the cached ones (positions continue from
        ``cache.length``) and the cache is extended by them: feeding a sequence in pieces gives the
        outputs of one full pass. ``positions`` ([T] or per item [B, T], any real numbers; with
        ``position_axes`` A > 1, [T, A] or [B, T, A]) replaces the default 0, 1, 2, ... of the rotary
        embedding (on every axis). ``window`` restricts every layer's attention to the steps within
        ``window`` of the query (:func:`local_attention_mask`), or, a BoolTensor [T, T], to the keys it
        allows each query (:func:`grid_window_mask`). ``num_layers`` runs the first blocks only
        and returns their output without the final norm (a layer's features; 0 returns x)."""
        if num_layers is not None and not 0 <= num_layers <= len(self.blocks):
            raise ValueError(f"num_layers must be in 0..{len(self.blocks)}, got {num_layers}")
        axes = self.position_axes
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + x.shape[1], device=x.device)
            if axes > 1:
                positions = positions[:, None].expand(-1, axes)
        rotation = rotary_rotation(rotary_angles(positions, self.head_dim, base=self.rotary_base, axes=axes))
        if rotation.dim() == 3:  # per item: broadcast over heads
            rotation = rotation[:, None]
        blocks = self.blocks if num_layers is None else self.blocks[:num_layers]
        for layer, block in enumerate(blocks):
            x = block(x, rotation=rotation, valid=valid, causal=causal, cache=cache, layer=layer, window=window)
        if cache is not None:
            cache.advance(x.shape[1], valid)
        return self.norm(x) if num_layers is None else x


def deepen_state(state: dict[str, torch.Tensor], *, prefix: str, num_layers: int) -> dict[str, torch.Tensor]:
    """``state`` with its stack of :class:`TransformerBlock` ``{prefix}.{i}.*`` grown to ``num_layers``
    blocks that compute the same function (Net2DeeperNet, Chen et al. 2016). Block i of n moves to
    i * num_layers // n; each new block copies the block below it with its two output projections
    zeroed, so it adds nothing to the residual stream until training moves them, and its attention
    and gates start from trained weights rather than noise."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    grown = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match:
            blocks.setdefault(int(match[1]), {})[match[2]] = value
        else:
            grown[key] = value
    count = len(blocks)
    if sorted(blocks) != list(range(count)) or not 0 < count <= num_layers:
        raise ValueError(f"deepen_state: {prefix} holds blocks {sorted(blocks)}, which cannot grow to {num_layers}")
    placed = {i * num_layers // count: blocks[i] for i in range(count)}
    below = None
    for layer in range(num_layers):
        if layer in placed:
            below = placed[layer]
            block = below
        else:
            block = {name: torch.zeros_like(value) if name in ("attention.out.weight", "ff.out.weight")
                     else value.clone() for name, value in below.items()}
        grown.update({f"{prefix}.{layer}.{name}": value for name, value in block.items()})
    return grown
