"""The tokenizer contract every codec in ``mmtok.codecs`` fulfils.

A generator only ever sees :class:`~mmtok.tokens.Tokens` and the facts exposed here as properties
(``codebook_sizes``, ``frame_rate``, ``sample_rate``); it never knows which modality they came from.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from mmtok.hub import HubMixin
from mmtok.tokens import Tokens, concrete_grid, grid_fits, layout_cells


@dataclass(frozen=True)
class ReceptiveField:
    """How far a tokenizer's outputs depend on its inputs, in token steps.

    ``encode``'s codes at step t are a function of the input within steps t ± ``encode_context``, and
    ``decode``'s output over step t a function of the codes within t ± ``decode_context``; the same
    function wherever t sits, as long as the input starts at a multiple of ``alignment`` steps. So a
    long input processed in windows with that much context on each side gives the codes (and the
    media) of processing it whole (:mod:`mmtok.codecs.chunked`).
    """

    encode_context: int
    decode_context: int
    alignment: int = 1

    def __post_init__(self):
        if self.encode_context < 0 or self.decode_context < 0 or self.alignment < 1:
            raise ValueError(f"a receptive field needs contexts ≥ 0 and alignment ≥ 1, got {self}")


def check_image_batch(images: torch.Tensor, *, channels: int, image_size: tuple[int, int]) -> None:
    """Raise ValueError unless ``images`` is [B, channels, H, W] with (H, W) == ``image_size``."""
    expected = (channels, *image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images must be [B, {expected[0]}, {expected[1]}, {expected[2]}] (B, C, H, W), "
                         f"got shape {tuple(images.shape)}")


class Tokenizer(nn.Module, HubMixin, ABC):
    """Media ⇄ discrete codes.

    ``decode(encode(x))`` has the shape of ``x``. Audio tokenizers take ``x: FloatTensor [B, 1, N]``
    with ``lengths: LongTensor [B]`` in samples and return codes ``[B, Q, T]`` at ``frame_rate``.
    Image tokenizers take ``x: FloatTensor [B, C, H, W]`` in [0, 1] and return codes ``[B, Q, h · w]``
    in raster order with ``Tokens.grid == (h, w)``. ``modality`` names the kind of media (it picks
    the writers of examples and files); generators and samplers never read it.
    """

    modality: str = "audio"  # "audio", "image" or "video"

    @abstractmethod
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *,
               num_quantizers: int | None = None) -> Tokens:
        """Media -> tokens. ``num_quantizers`` keeps the first codebooks only (RVQ bitrate control)."""

    @abstractmethod
    def decode(self, tokens: Tokens, *, num_quantizers: int | None = None) -> torch.Tensor:
        """Tokens -> media. Tokens with fewer codebooks than the model has, or ``num_quantizers`` below
        the model's, decode at a lower bitrate."""

    def decoder_modules(self) -> list[nn.Module]:
        """The modules that turn dequantized codes into media: what a decoder-only fine-tune trains while
        the encoder and codebooks, and so every code, stay as they are. Tokenizers that support it
        override this together with ``decode_codes`` (codes [B, Q, N] -> media, differentiable)."""
        raise TypeError(f"{type(self).__name__} cannot train its decoder alone (it names no decoder modules)")

    @property
    @abstractmethod
    def codebook_sizes(self) -> list[int]:
        """Vocabulary size of each of the Q codebooks."""

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def _check_num_quantizers(self, num_quantizers: int | None) -> int:
        """The codebooks to use: all for None, else ``num_quantizers`` checked to lie in 1..Q."""
        if num_quantizers is None:
            return self.num_codebooks
        if not 1 <= num_quantizers <= self.num_codebooks:
            raise ValueError(f"num_quantizers must be in 1..{self.num_codebooks}, got {num_quantizers}")
        return num_quantizers

    @property
    def frame_rate(self) -> float | None:
        """Token steps per second for time-based media, else None."""
        return None

    @property
    def sample_rate(self) -> int | None:
        """Waveform sample rate for audio tokenizers, else None."""
        return None

    @property
    def grid(self) -> tuple[int | None, ...] | None:
        """The layout of a sequence's steps for media of a fixed shape: ``(h, w)`` for images (the
        codes of an item are its h · w grid cells in raster order), ``(None, h, w)`` for video (an
        open time axis: t frame groups of h · w cells, t set by each clip's length); None for a time
        axis of any length without a grid (audio)."""
        return None

    @property
    def receptive_field(self) -> ReceptiveField | None:
        """How far outputs depend on inputs along the token steps; None: on the whole input (such a
        tokenizer is only ever run on whole inputs)."""
        return None

    def codebook_vectors(self) -> list[torch.Tensor]:
        """What each codebook's codes stand for: per codebook q, FloatTensor [V_q, D], the vectors
        that decoding adds up (a residual tokenizer's codewords in its latent space). Generators that
        work in the codes' own geometry read them (Distilled Decoding's per-token flow)."""
        from mmtok.errors import UsageError

        raise UsageError(f"{type(self).__name__} does not expose codebook vectors")

    # keyword options of ``decode`` beyond num_quantizers that ``mmtok decode`` may pass (a diffusion
    # de-tokenizer's sampler, steps, guidance, seed); none for a deterministic decoder
    decode_options: tuple[str, ...] = ()
    dropped_code: int | None = None  # a code meaning "this codebook is not used here" (RVQ: -1), if any
    # whether ``decode`` takes ``prompt=`` audio whose voice it speaks in (Vec-Tok: the tokens carry the
    # words, the prompt the voice); a TTS task then hands its voice prompt to the tokenizer too
    takes_voice_prompt: bool = False

    def check_tokens(self, tokens: Tokens, *, source: str = "tokens", allow_empty: bool = False) -> None:
        """Raise :class:`~mmtok.errors.DataError` naming ``source`` unless this tokenizer can decode
        ``tokens``: at most its codebooks, each code within its codebook (or :attr:`dropped_code`), at
        least one step (unless ``allow_empty``: a generated item may end at once), and the grid, frame
        rate and sample rate it produces."""
        from mmtok.errors import DataError

        if tokens.num_codebooks > self.num_codebooks:
            raise DataError(f"{source}: {tokens.num_codebooks} codebooks, this tokenizer has {self.num_codebooks}")
        if tokens.num_steps == 0 and not allow_empty:
            raise DataError(f"{source}: no steps, expected at least one")
        for q in range(tokens.num_codebooks):
            codes, size = tokens.codes[:, q], self.codebook_sizes[q]
            bad = (codes < 0) | (codes >= size)
            if self.dropped_code is not None:
                bad &= codes != self.dropped_code
            if bool(bad.any()):
                allowed = f"0..{size - 1}" + ("" if self.dropped_code is None else f" or {self.dropped_code}")
                raise DataError(f"{source}: codebook {q} holds {int(codes[bad][0])}, expected {allowed} "
                                f"(codebook sizes {self.codebook_sizes})")
        for fact in ("frame_rate", "sample_rate"):
            theirs, ours = getattr(tokens, fact), getattr(self, fact)
            if theirs is not None and ours is not None and theirs != ours:
                raise DataError(f"{source}: tokens of {fact} {theirs}, this tokenizer's is {ours}")
        if tokens.grid is not None and self.grid is not None and not grid_fits(tokens.grid, self.grid):
            raise DataError(f"{source}: tokens of grid {tokens.grid}, this tokenizer's is {self._grid_name}")
        if self.grid is not None and tokens.num_steps != math.prod(concrete_grid(self.grid, tokens.num_steps)):
            raise DataError(f"{source}: {tokens.num_steps} steps, this tokenizer's {self._grid_name} grid has "
                            f"{'a multiple of ' if self.grid[0] is None else ''}{layout_cells(self.grid)}")

    @property
    def _grid_name(self) -> str:
        return "(" + ", ".join("t" if size is None else str(size) for size in self.grid) + ")"
