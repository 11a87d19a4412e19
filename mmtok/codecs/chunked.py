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
from collections.abc import Iterator
from typing import Protocol

import torch
from tqdm import tqdm

from mmtok.codecs.base import Tokenizer
from mmtok.tokens import Tokens, TokensFile


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
def encode_chunked(tokenizer: Tokenizer, audio: torch.Tensor | AudioSource, *, chunk_seconds: float = 10.0,
                   context_seconds: float | None = None, num_quantizers: int | None = None,
                   progress: bool = False) -> Tokens:
    """audio: FloatTensor [1, 1, N], or a source read block by block (``len`` and ``read(start, stop)
    -> [1, n]``, e.g. :class:`mmtok.data.audio.AudioReader`, so that memory does not grow with the
    file) -> Tokens with codes [1, Q, ceil(N / hop)]. ``context_seconds`` overrides the tokenizer's
    receptive field (less than it gives other codes near chunk edges)."""
    codes, num_samples = encode_chunked_codes(tokenizer, audio, chunk_seconds=chunk_seconds,
                                              context_seconds=context_seconds, num_quantizers=num_quantizers,
                                              progress=progress)
    return Tokens(codes=codes, frame_rate=tokenizer.frame_rate, sample_rate=tokenizer.sample_rate,
                  media_lengths=torch.tensor([num_samples]))


@torch.no_grad()
def encode_chunked_codes(tokenizer: Tokenizer, audio: torch.Tensor | AudioSource, *, chunk_seconds: float = 10.0,
                         context_seconds: float | None = None, num_quantizers: int | None = None,
                         progress: bool = False, dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, int]:
    """What :func:`encode_chunked` computes, as (codes [1, Q, T] in ``dtype``, the signal's samples): the
    codes fill one tensor chunk by chunk, so `mmtok encode` can hold 10 hours of them as int16 and write
    them with :func:`mmtok.tokens.write_tokens`."""
    if isinstance(audio, torch.Tensor):
        if audio.dim() != 3 or audio.shape[:2] != (1, 1):
            raise ValueError(f"encode_chunked takes one signal [1, 1, N], got {tuple(audio.shape)}")
        audio = TensorSource(audio)
    hop = _hop(tokenizer)
    num_samples = len(audio)
    total = math.ceil(num_samples / hop)
    codes = None  # filled in place: joining the chunks at the end held the codes twice
    spans = _plan(tokenizer, total, chunk_seconds, context_seconds, "encode")
    for start, end, lo, hi in tqdm(spans, desc="encode", unit="chunk", disable=not progress):
        window = audio.read(lo * hop, hi * hop)[None]  # [1, 1, n]
        chunk = tokenizer.encode(window, num_quantizers=num_quantizers).codes
        if codes is None:
            codes = torch.empty(1, chunk.shape[1], total, dtype=dtype)
        codes[..., start:end] = chunk[..., start - lo: end - lo].to(dtype)
    if codes is None:
        raise ValueError("encode_chunked: the signal holds no frame to encode")
    return codes, num_samples


class AudioSource(Protocol):
    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> torch.Tensor: ...


class TensorSource:
    """A signal in memory [1, 1, N] as an :class:`AudioSource`."""

    def __init__(self, audio: torch.Tensor):
        self.audio = audio

    def __len__(self) -> int:
        return self.audio.shape[-1]

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.audio[0, :, start:stop]


@torch.no_grad()
def decode_chunks(tokenizer: Tokenizer, tokens: Tokens | TokensFile, *, chunk_seconds: float = 10.0,
                  context_seconds: float | None = None, num_quantizers: int | None = None,
                  progress: bool = False, source: str | None = None) -> Iterator[torch.Tensor]:
    """Tokens of one item [1, Q, T] -> the audio chunk by chunk, FloatTensors [1, 1, n] that end to end
    are the whole signal (N samples, from ``media_lengths`` when known): what a streaming writer takes.
    From a :class:`~mmtok.tokens.TokensFile` each window's codes are read from the file when needed and
    checked (:meth:`Tokenizer.check_tokens`, naming ``source``), so memory does not grow with the file."""
    if isinstance(tokens, Tokens) and tokens.batch_size != 1:
        raise ValueError(f"decode_chunked takes one item, got a batch of {tokens.batch_size}")
    hop = _hop(tokenizer)
    limit = None if tokens.media_lengths is None else int(tokens.media_lengths[0])
    spans = _plan(tokenizer, tokens.num_steps, chunk_seconds, context_seconds, "decode")
    for start, end, lo, hi in tqdm(spans, desc="decode", unit="chunk", disable=not progress):
        if isinstance(tokens, Tokens):
            window = Tokens(codes=tokens.codes[..., lo:hi], frame_rate=tokenizer.frame_rate,
                            sample_rate=tokens.sample_rate)
        else:
            window = tokens.window(lo, hi)
            tokenizer.check_tokens(window, source=source or str(tokens.path))
        audio = tokenizer.decode(window, num_quantizers=num_quantizers)
        piece_end = (end - lo) * hop if limit is None else min((end - lo) * hop, limit - lo * hop)
        yield audio[..., (start - lo) * hop: piece_end]


def decode_chunked(tokenizer: Tokenizer, tokens: Tokens, **options) -> torch.Tensor:
    """Tokens of one item [1, Q, T] -> audio FloatTensor [1, 1, N] (:func:`decode_chunks`, joined)."""
    return torch.cat(list(decode_chunks(tokenizer, tokens, **options)), dim=-1)
