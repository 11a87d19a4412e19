"""Zero-shot voice conversion: each source file's words and timing in the voice of one prompt.

What ``mmtok convert MODEL SOURCE --prompt TARGET.wav --out DIR`` runs. The model is any tokenizer
with ``convert(source, prompt, source_lengths=, prompt_lengths=)`` (Vec-Tok: the source's semantic
tokens, decoded by inverse k-means with the prompt's vectors, then vocoded).
"""

from __future__ import annotations

from pathlib import Path

from mmtok.errors import UsageError
from mmtok.media import AUDIO_SUFFIXES, load_audio, write_wav


def conversion_pairs(source: Path, out: Path) -> list[tuple[Path, Path]]:
    """(source file, output wav) pairs: a file gives ``out/<stem>.wav``; a folder every audio file under
    it, the tree mirrored under ``out``."""
    from mmtok.errors import DataError, MissingFileError

    if not source.exists():
        raise MissingFileError(f"{source}: no such file or folder")
    if source.is_file():
        return [(source, out / f"{source.stem}.wav")]
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"{source}: no {'/'.join(AUDIO_SUFFIXES)} files in this folder")
    return [(p, out / p.relative_to(source).with_suffix(".wav")) for p in files]


def convert_files(model, pairs: list[tuple[Path, Path]], prompt: Path, *, overwrite: bool = False,
                  fail_fast: bool = False) -> int:
    """Convert every pair (past a file that fails, listed at the end); returns the files written."""
    from mmtok.files import process_files

    if not callable(getattr(model, "convert", None)):
        raise UsageError(f"{type(model).__name__} does not convert voices (a Vec-Tok model does)")
    prompt_audio = load_audio(prompt, sample_rate=model.sample_rate)[None]

    def convert(source: Path, target: Path) -> None:
        audio = load_audio(source, sample_rate=model.sample_rate)[None]
        write_wav(target, model.convert(audio, prompt_audio)[0], sample_rate=model.sample_rate)

    return process_files(pairs, convert, desc="convert", overwrite=overwrite, fail_fast=fail_fast)
