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
from safetensors.torch import load_file


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

    def save(self, path: str | Path) -> None:
        """Write to a ``.safetensors`` file (no pickle): :func:`write_tokens`."""
        write_tokens(path, self.codes, lengths=self.lengths, media_lengths=self.media_lengths,
                     frame_rate=self.frame_rate, grid=self.grid, sample_rate=self.sample_rate)

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


def write_tokens(path: str | Path, codes: torch.Tensor, *, lengths: torch.Tensor | None = None,
                 media_lengths: torch.Tensor | None = None, frame_rate: float | None = None,
                 grid: Sequence[int] | None = None, sample_rate: int | None = None, block: int = 1 << 20) -> Path:
    """The tokens file :meth:`Tokens.save` writes (``.safetensors``: codes int64 [B, Q, T], ``lengths``,
    ``media_lengths``, the metadata), from ``codes`` in any integer dtype, converted ``block`` codes at
    a time and written through a temporary file. So a long file's codes can be held as int16 while
    they are made: 10 hours of 8 codebooks at 50 frames/s are 115 MB as int64, 29 MB as int16, and
    safetensors' own writer holds one more copy of them as bytes."""
    from mmtok.files import atomic_path

    tensors = {"codes": codes}
    tensors.update({name: value for name, value in (("lengths", lengths), ("media_lengths", media_lengths))
                    if value is not None})
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * 8
        header[name] = {"dtype": "I64", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    meta = {"frame_rate": frame_rate, "grid": None if grid is None else tuple(grid), "sample_rate": sample_rate}
    header["__metadata__"] = {"mmtok_tokens": json.dumps(meta)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text)
        for tensor in tensors.values():
            flat = tensor.detach().cpu().reshape(-1)
            for start in range(0, flat.numel(), block):
                handle.write(flat[start:start + block].to(torch.int64).numpy().tobytes())
    return Path(path)


class TokensFile:
    """A tokens file read window by window (``codes[..., lo:hi]`` from the file, never all of it), for
    decoding a long file in bounded memory: ``num_steps``, ``media_lengths``, the metadata, and
    :meth:`window`. Use as a context manager. Errors as :meth:`Tokens.load`'s, naming the file."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        from mmtok.errors import DataError, MissingFileError

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such tokens file")
        try:
            self._file = safe_open(str(self.path), framework="pt").__enter__()
            meta = json.loads((self._file.metadata() or {})["mmtok_tokens"])
            self._codes = self._file.get_slice("codes")
            shape = self._codes.get_shape()
            names = set(self._file.keys())
            self.media_lengths = self._file.get_tensor("media_lengths") if "media_lengths" in names else None
        except Exception as error:  # safetensors raises several types for a bad header
            raise DataError(f"{self.path}: not a tokens .safetensors file written by Tokens.save ({error})") from error
        if len(shape) != 3 or "lengths" in names or shape[0] != 1:
            raise DataError(f"{self.path}: read window by window only for one item without lengths, got codes "
                            f"{list(shape)}")
        self.num_codebooks, self.num_steps = shape[1], shape[2]
        grid = meta.get("grid")
        self.facts = dict(frame_rate=meta.get("frame_rate"), grid=tuple(grid) if grid else None,
                          sample_rate=meta.get("sample_rate"))

    def window(self, lo: int, hi: int) -> Tokens:
        """Steps ``lo:hi`` as Tokens (one item)."""
        return Tokens(codes=self._codes[:, :, lo:hi].long(), **self.facts)

    def __enter__(self) -> TokensFile:
        return self

    def __exit__(self, *exc) -> None:
        self._file.__exit__(*exc)
