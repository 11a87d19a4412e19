"""Encode and decode audio of any length in bounded memory.

A long signal is cut into chunks of ``chunk_seconds``; each chunk is processed with context on both
sides and only its central frames (or samples) are kept. The context is the tokenizer's declared
:class:`~mmtok.codecs.base.ReceptiveField` (the conv codecs' is well under a second; an X-Codec's
adds its teacher's bounded context), and each window starts on the tokenizer's alignment grid, so the
result equals whole-signal processing up to floating-point rounding. A tokenizer whose outputs
depend on the whole input (``receptive_field`` None) is run on the whole signal in one piece.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from mmtok.codecs.base import Tokenizer
from mmtok.tokens import Tokens


def _spans(total: int, chunk: int, context: int, alignment: int = 1):
    """(start, end, window_start, window_end) for each chunk of ``total`` steps; window starts lie on
    multiples of ``alignment``."""
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        yield start, end, max(0, start - context) // alignment * alignment, min(total, end + context)


def _plan(tokenizer: Tokenizer, total: int, chunk_seconds: float, context_seconds: float | None,
          side: str) -> list[tuple[int, int, int, int]]:
    """The chunks of ``total`` steps: ``context_seconds`` of context if given, else the tokenizer's
    receptive field for ``side`` ("encode" or "decode"); one chunk when that is unbounded."""
    frame_rate, field = tokenizer.frame_rate, tokenizer.receptive_field
    chunk = max(1, round(chunk_seconds * frame_rate))
    if context_seconds is not None:
        return list(_spans(total, chunk, math.ceil(context_seconds * frame_rate)))
    if field is None:
        return [(0, total, 0, total)]
    context = field.encode_context if side == "encode" else field.decode_context
    alignment = field.alignment if side == "encode" else 1
    return list(_spans(total, chunk, context, alignment))


def _hop(tokenizer: Tokenizer) -> int:
    hop = tokenizer.sample_rate / tokenizer.frame_rate
    if abs(hop - round(hop)) > 1e-6:
        raise ValueError(f"{type(tokenizer).__name__}: sample_rate / frame_rate = {hop} is not an integer hop")
    return round(hop)


@torch.no_grad()
def encode_chunked(tokenizer: Tokenizer, audio: torch.Tensor, *, chunk_seconds: float = 30.0,
                   context_seconds: float | None = None, num_quantizers: int | None = None,
                   progress: bool = False) -> Tokens:
    """audio: FloatTensor [1, 1, N] -> Tokens with codes [1, Q, ceil(N / hop)]. ``context_seconds``
    overrides the tokenizer's receptive field (less than it gives other codes near chunk edges)."""
    if audio.dim() != 3 or audio.shape[:2] != (1, 1):
        raise ValueError(f"encode_chunked takes one signal [1, 1, N], got {tuple(audio.shape)}")
    hop, frame_rate = _hop(tokenizer), tokenizer.frame_rate
    total = math.ceil(audio.shape[-1] / hop)
    pieces = []
    spans = _plan(tokenizer, total, chunk_seconds, context_seconds, "encode")
    for start, end, lo, hi in tqdm(spans, desc="encode", unit="chunk", disable=not progress):
        codes = tokenizer.encode(audio[..., lo * hop: hi * hop], num_quantizers=num_quantizers).codes
        pieces.append(codes[..., start - lo: end - lo])
    return Tokens(codes=torch.cat(pieces, dim=-1), frame_rate=frame_rate, sample_rate=tokenizer.sample_rate,
                  media_lengths=torch.tensor([audio.shape[-1]], device=audio.device))


@torch.no_grad()
def decode_chunked(tokenizer: Tokenizer, tokens: Tokens, *, chunk_seconds: float = 30.0,
                   context_seconds: float | None = None, num_quantizers: int | None = None,
                   progress: bool = False) -> torch.Tensor:
    """Tokens of one item [1, Q, T] -> audio FloatTensor [1, 1, N] (N from ``media_lengths`` when known)."""
    if tokens.batch_size != 1:
        raise ValueError(f"decode_chunked takes one item, got a batch of {tokens.batch_size}")
    hop, frame_rate = _hop(tokenizer), tokenizer.frame_rate
    pieces = []
    spans = _plan(tokenizer, tokens.num_steps, chunk_seconds, context_seconds, "decode")
    for start, end, lo, hi in tqdm(spans, desc="decode", unit="chunk", disable=not progress):
        window = Tokens(codes=tokens.codes[..., lo:hi], frame_rate=frame_rate, sample_rate=tokens.sample_rate)
        audio = tokenizer.decode(window, num_quantizers=num_quantizers)
        pieces.append(audio[..., (start - lo) * hop: (end - lo) * hop])
    audio = torch.cat(pieces, dim=-1)
    if tokens.media_lengths is not None:
        audio = audio[..., : int(tokens.media_lengths[0])]
    return audio
