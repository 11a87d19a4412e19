"""The one contract between tokenizers and generators.

A tokenizer's ``encode`` returns :class:`Tokens`; its ``decode`` takes them back. Generators read
and write ``Tokens`` without knowing which modality produced them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def grid_fits(grid: Sequence[int], layout: Sequence[int | None]) -> bool:
    """Whether a batch's ``grid`` (e.g. (t, h, w)) is of ``layout``, a tokenizer's or generator's grid
    whose first axis may be open (None: video of any length, ``(None, h, w)``)."""
    return len(grid) == len(layout) and all(size is None or int(g) == size for g, size in zip(grid, layout))


def concrete_grid(layout: Sequence[int | None], steps: int) -> tuple[int, ...]:
    """The grid of ``steps`` steps laid out by ``layout``: an open first axis is as long as the steps fill."""
    if layout[0] is not None:
        return tuple(int(size) for size in layout)
    cells = math.prod(int(size) for size in layout[1:])
    return (math.ceil(steps / cells), *(int(size) for size in layout[1:]))


def layout_cells(layout: Sequence[int | None]) -> int:
    """Steps in one slice along the first axis of a layout ((h, w) -> h · w ... (None, h, w) -> h · w)."""
    return math.prod(int(size) for size in layout[1:]) if layout[0] is None else math.prod(layout)


@dataclass
class Tokens:
    """Discrete codes with what is needed to decode them.

    Attributes:
        codes: LongTensor [B, Q, T]: Q codebooks (RVQ depth) by T steps.
        lengths: LongTensor [B] of valid steps per item, or None when all T are valid.
        frame_rate: steps per second (audio, video), or None.
        grid: spatial/temporal layout of the T steps, ``(h, w)`` or ``(t, h, w)``, or None.
        sample_rate: the waveform rate the codes decode to (audio), or None.
        media_lengths: LongTensor [B], each item's length in the media's own unit (samples for audio,
            frames for video) so that ``decode`` restores the input's exact shape; None if unknown.
    """

    codes: torch.Tensor
    lengths: torch.Tensor | None = None
    frame_rate: float | None = None
    grid: tuple[int, ...] | None = None
    sample_rate: int | None = None
    media_lengths: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.codes.dim() != 3:
            raise ValueError(f"Tokens.codes must be [B, Q, T], got shape {tuple(self.codes.shape)}")
        if self.codes.dtype != torch.long:
            raise ValueError(f"Tokens.codes must be torch.long, got {self.codes.dtype}")
        if self.lengths is not None:
            if self.lengths.shape != (self.codes.shape[0],):
                raise ValueError(
                    f"Tokens.lengths must be [B]={self.codes.shape[0]}, got {tuple(self.lengths.shape)}"
                )
            if self.lengths.numel() and int(self.lengths.max()) > self.codes.shape[-1]:
                raise ValueError(f"Tokens.lengths exceed T={self.codes.shape[-1]}: {self.lengths.tolist()}")
        if self.grid is not None:
            self.grid = tuple(int(g) for g in self.grid)

    @property
    def batch_size(self) -> int:
        return self.codes.shape[0]

    @property
    def num_codebooks(self) -> int:
        return self.codes.shape[1]

    @property
    def num_steps(self) -> int:
        return self.codes.shape[2]

    def to(self, device: torch.device | str) -> Tokens:
        def move(t):
            return None if t is None else t.to(device)

        return replace(self, codes=self.codes.to(device), lengths=move(self.lengths),
                       media_lengths=move(self.media_lengths))

    def first_codebooks(self, count: int) -> Tokens:
        """The same tokens from their first ``count`` codebooks only (the coarse levels of an RVQ)."""
        if not 1 <= count <= self.num_codebooks:
            raise ValueError(f"Tokens have {self.num_codebooks} codebooks, asked for the first {count}")
        return replace(self, codes=self.codes[:, :count])

    def __getitem__(self, index: int) -> Tokens:
        """Item ``index`` of the batch, trimmed to its valid length, as a batch of one."""
        index = range(self.batch_size)[index]  # negative counts from the end; out of range raises IndexError
        length = self.num_steps if self.lengths is None else int(self.lengths[index])
        media = None if self.media_lengths is None else self.media_lengths[index : index + 1]
        return replace(self, codes=self.codes[index : index + 1, :, :length], lengths=None, media_lengths=media)

    def _metadata(self) -> dict[str, str]:
        meta = {"frame_rate": self.frame_rate, "grid": self.grid, "sample_rate": self.sample_rate}
        return {"mmtok_tokens": json.dumps(meta)}

    def save(self, path: str | Path) -> None:
        """Write to a ``.safetensors`` file (no pickle)."""
        from mmtok.files import atomic_path

        tensors = {"codes": self.codes.contiguous().cpu()}
        for name in ("lengths", "media_lengths"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).contiguous().cpu()
        with atomic_path(path) as temporary:  # a half-written file never carries the final name
            save_file(tensors, str(temporary), metadata=self._metadata())

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        """Read a file written by :meth:`save`; anything else raises :class:`~mmtok.errors.DataError`
        naming the file (a missing one :class:`~mmtok.errors.MissingFileError`)."""
        from safetensors import safe_open

        from mmtok.errors import DataError, MissingFileError

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{path}: no such tokens file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = (f.metadata() or {}).get("mmtok_tokens")
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises several types for a bad header
            raise DataError(f"{path}: not a tokens .safetensors file ({error})") from error
        if meta is None or "codes" not in tensors:
            raise DataError(f"{path}: not written by Tokens.save (no 'mmtok_tokens' metadata or 'codes')")
        try:
            info = json.loads(meta)
            grid = info.get("grid")
            return cls(codes=tensors["codes"], lengths=tensors.get("lengths"), frame_rate=info.get("frame_rate"),
                       grid=tuple(grid) if grid else None, sample_rate=info.get("sample_rate"),
                       media_lengths=tensors.get("media_lengths"))
        except Exception as error:  # metadata or tensors that do not make Tokens
            raise DataError(f"{path}: not valid tokens ({error})") from error
