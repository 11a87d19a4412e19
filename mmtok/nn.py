"""Transformer blocks shared by every model: recognizer encoders, AR decoders, masked-diffusion denoisers.

Pre-norm blocks with RMSNorm (Zhang & Sennrich, 2019), rotary position embeddings (Su et al., 2021,
RoFormer eq. 34: pairs of channels rotated by position-dependent angles), attention through
``scaled_dot_product_attention`` and SwiGLU feed-forward layers (Shazeer, 2020). The same blocks run
causally (``causal=True``) or bidirectionally, with a key padding mask for batches of unequal lengths.

Shapes: ``x: FloatTensor [B, T, D]``, ``valid: BoolTensor [B, T]`` (True = real step).
"""

from __future__ import annotations

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
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_angles(positions: torch.Tensor, head_dim: int, *, base: float = 10000.0) -> torch.Tensor:
    """positions [T] -> angles [T, head_dim / 2]: position · base^(-2i / head_dim)."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    inverse_frequency = base ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    return positions.float()[:, None] * inverse_frequency[None, :]


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, H, T, Dh] by angles [T, Dh / 2]."""
    x_pairs = rearrange(x.float(), "... (d two) -> ... d two", two=2)
    cos, sin = angles.cos(), angles.sin()
    even, odd = x_pairs[..., 0], x_pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rearrange(rotated, "... d two -> ... (d two)").type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, *, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, *, angles: torch.Tensor, valid: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        mask = None
        if valid is not None:
            mask = valid[:, None, None, :]  # [B, 1, 1, T]: which keys may be attended to
            if causal:
                mask = mask & torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                             is_causal=causal and mask is None)
        return self.out(rearrange(out, "b h t d -> b t (h d)"))


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
        self.attention = SelfAttention(dim=dim, num_heads=num_heads, dropout=dropout)
        self.ff_norm = RMSNorm(dim)
        self.ff = SwiGLU(dim=dim, hidden_dim=int(ff_mult * dim), dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, angles: torch.Tensor, valid: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), angles=angles, valid=valid, causal=causal))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class Transformer(nn.Module):
    """A stack of pre-norm blocks with a final RMSNorm: x [B, T, D] -> [B, T, D]."""

    def __init__(self, *, dim: int, num_layers: int, num_heads: int, ff_mult: float = 8 / 3,
                 dropout: float = 0.0, rotary_base: float = 10000.0):
        super().__init__()
        self.head_dim = dim // num_heads
        self.rotary_base = rotary_base
        self.blocks = nn.ModuleList(
            TransformerBlock(dim=dim, num_heads=num_heads, ff_mult=ff_mult, dropout=dropout)
            for _ in range(num_layers)
        )
        self.norm = RMSNorm(dim)

    def forward(self, x: torch.Tensor, *, valid: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        angles = rotary_angles(positions, self.head_dim, base=self.rotary_base)
        for block in self.blocks:
            x = block(x, angles=angles, valid=valid, causal=causal)
        return self.norm(x)
