"""Audio loading, manifests, datasets and the Lightning data module for every audio recipe.

Files are read with soundfile (torchaudio's file I/O moved to torchcodec), mixed to mono and
resampled with ``torchaudio.functional.resample``. A data source is one of

- a folder holding ``manifest.jsonl`` (e.g. the embedded espeak-ng corpus, :mod:`mmtok.data.speech`),
- a manifest file itself: one JSON object per line with an ``audio`` path (relative to the
  manifest's folder, or absolute) and optionally ``split``, ``text``, ``phonemes``, ``speaker``,
- a plain folder of .wav/.flac/.ogg/.mp3 files, searched recursively, split ~90/5/5 by a hash of
  each file's relative path.

Batches are dicts: ``audio`` FloatTensor [B, 1, N] zero-padded to the longest item, ``lengths``
LongTensor [B] of valid samples, and ``text``/``phonemes``/``speaker``/``path`` lists when known.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from mmtok.data.manifest import (  # noqa: F401  (SPLITS, assign_splits: re-exported)
    SPLITS,
    ManifestDataModule,
    ManifestDataset,
    assign_splits,
    find_media_files,
    read_media_manifest,
)
from mmtok.data.speech import build_speech_corpus
from mmtok.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
_PASS_THROUGH = ("text", "phonemes", "speaker", "path")


class AudioFileError(DataError):
    """An audio file that cannot be used: undecodable, truncated, empty, or holding NaN/Inf."""


def _check_wav_complete(path: Path) -> None:
    """Raises AudioFileError when a RIFF/WAVE file's data chunk is shorter than its header says.

    libsndfile reads such files silently, returning only the samples present.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return  # not RIFF/WAVE (or too short for it): soundfile decides
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                if chunk_size not in (0, 0xFFFFFFFF) and offset + 8 + chunk_size > size:
                    raise AudioFileError(
                        f"{path}: truncated wav: the header declares {chunk_size} data bytes, "
                        f"the file holds {size - offset - 8}"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)


def load_audio(path: str | Path, *, sample_rate: int) -> torch.Tensor:
    """Reads an audio file of any rate and channel count as mono at ``sample_rate``.

    Returns FloatTensor [1, N] (float32, the mean of the channels). Raises AudioFileError naming
    the file when it cannot be decoded (missing, truncated, not audio), has no samples, or holds
    NaN/Inf.
    """
    path = Path(path)
    try:
        _check_wav_complete(path)
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    except (sf.SoundFileError, OSError) as error:
        raise AudioFileError(f"{path}: cannot decode audio ({error})") from error
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioFileError(f"{path}: empty audio file (0 samples)")
    if not np.isfinite(data).all():
        raise AudioFileError(f"{path}: audio holds NaN or Inf values")
    audio = torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)  # [1, N]
    if rate != sample_rate:
        audio = torchaudio.functional.resample(audio, int(rate), int(sample_rate))
    return audio


class AudioReader:
    """An audio file read block by block, mono at ``sample_rate``: memory bounded by the block, not
    the file. ``len(reader)`` is the file's length in samples at ``sample_rate``; ``reader.read(start,
    stop)`` a FloatTensor [1, stop - start] (the same samples :func:`load_audio` gives there).

    A file at another rate is resampled per block from a source window that starts on the phase grid
    of the two rates and reaches ``margin`` samples past the block on each side, so the samples equal
    whole-file resampling up to rounding."""

    def __init__(self, path: str | Path, *, sample_rate: int, margin: int = 1024):
        self.path, self.sample_rate, self.margin = Path(path), int(sample_rate), margin
        try:
            _check_wav_complete(self.path)
            info = sf.info(str(self.path))
        except (sf.SoundFileError, OSError) as error:
            raise AudioFileError(f"{self.path}: cannot decode audio ({error})") from error
        if info.frames == 0 or info.channels == 0:
            raise AudioFileError(f"{self.path}: empty audio file (0 samples)")
        self.source_rate, self.source_frames = int(info.samplerate), int(info.frames)
        common = math.gcd(self.source_rate, self.sample_rate)
        self.period = self.sample_rate // common  # target samples per whole number of source samples

    def __len__(self) -> int:
        return math.ceil(self.source_frames * self.sample_rate / self.source_rate)

    def _source(self, start: int, stop: int) -> torch.Tensor:
        """Source samples [start, stop) as mono [1, n]."""
        try:
            data = sf.read(str(self.path), start=start, stop=stop, dtype="float32", always_2d=True)[0]
        except (sf.SoundFileError, OSError) as error:
            raise AudioFileError(f"{self.path}: cannot decode audio ({error})") from error
        if not np.isfinite(data).all():
            raise AudioFileError(f"{self.path}: audio holds NaN or Inf values")
        return torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)

    def read(self, start: int, stop: int) -> torch.Tensor:
        stop = min(stop, len(self))
        if self.source_rate == self.sample_rate:
            return self._source(start, stop)
        first = max(0, start - self.margin) // self.period * self.period  # on the phase grid
        source_start = first * self.source_rate // self.sample_rate
        source_stop = min(self.source_frames, math.ceil((stop + self.margin) * self.source_rate / self.sample_rate))
        block = torchaudio.functional.resample(self._source(source_start, source_stop), self.source_rate,
                                               self.sample_rate)
        return block[:, start - first: stop - first]


class AudioDataset(ManifestDataset):
    """Audio items from manifest-style entries (dicts with an absolute ``audio`` path).

    An item is a dict: ``audio`` FloatTensor [1, L], ``length`` (valid samples), ``path`` and the
    entry's ``text``/``phonemes``/``speaker`` when present. With ``crop_samples`` L is that
    length: a random window of longer audio, zero-padded shorter audio; None keeps the whole
    utterance. With ``skip_bad_files`` a file that fails to load gives None (dropped by
    :func:`collate_audio`), a logged warning and one more :attr:`num_skipped`; otherwise its
    AudioFileError propagates.
    """

    key = "audio"
    error = AudioFileError

    def __init__(
        self,
        entries: list[dict],
        *,
        sample_rate: int = 16000,
        crop_samples: int | None = None,
        skip_bad_files: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if crop_samples is not None and crop_samples <= 0:
            raise ValueError(f"AudioDataset: crop_samples must be > 0 or None, got {crop_samples}")
        if sample_rate <= 0:
            raise ValueError(f"AudioDataset: sample_rate must be > 0, got {sample_rate}")
        super().__init__(entries, skip_bad_files=skip_bad_files)
        self.sample_rate = sample_rate
        self.crop_samples = crop_samples
        self.generator = generator

    def _crop(self, audio: torch.Tensor) -> tuple[torch.Tensor, int]:
        """audio [1, N] -> ([1, crop_samples], valid samples)."""
        crop, total = self.crop_samples, audio.shape[-1]
        if total >= crop:
            start = int(torch.randint(0, total - crop + 1, (1,), generator=self.generator))
            return audio[:, start:start + crop], crop
        return torch.nn.functional.pad(audio, (0, crop - total)), total

    def load(self, path: str) -> torch.Tensor:
        return load_audio(path, sample_rate=self.sample_rate)  # [1, N]

    def make_item(self, entry: dict, audio: torch.Tensor) -> dict:
        length = audio.shape[-1]
        if self.crop_samples is not None:
            audio, length = self._crop(audio)
        item = {"audio": audio, "length": length, "path": entry["audio"]}
        item.update({key: entry[key] for key in ("text", "phonemes", "speaker") if key in entry})
        return item


def collate_audio(items: list[dict | None]) -> dict | None:
    """Batches dataset items, dropping None (skipped) ones; None when nothing is left.

    Returns ``audio`` FloatTensor [B, 1, N] zero-padded to the longest item, ``lengths``
    LongTensor [B], and the ``text``/``phonemes``/``speaker``/``path`` lists held by every item.
    """
    items = [item for item in items if item is not None]
    if not items:
        return None
    longest = max(item["audio"].shape[-1] for item in items)
    audio = torch.zeros(len(items), 1, longest)  # [B, 1, N]
    for row, item in enumerate(items):
        audio[row, :, : item["audio"].shape[-1]] = item["audio"]
    batch = {"audio": audio, "lengths": torch.tensor([item["length"] for item in items], dtype=torch.long)}
    for key in _PASS_THROUGH:
        if all(key in item for item in items):
            batch[key] = [item[key] for item in items]
    return batch


def find_audio_files(folder: str | Path) -> list[Path]:
    """Audio files (.wav/.flac/.ogg/.mp3, any case) under ``folder``, recursively, sorted."""
    return find_media_files(folder, AUDIO_SUFFIXES)


class AudioDataModule(ManifestDataModule):
    """Train/valid/test audio loaders from a manifest, a folder holding one, or a folder of files.

    ``path`` is a folder with ``manifest.jsonl``, a manifest file, or a plain folder of audio
    files. With ``build_embedded`` and no manifest there, :meth:`prepare_data` builds the
    embedded espeak-ng speech corpus in ``path`` (``num_utterances``, ``seed``). Training batches
    are random crops of ``crop_seconds`` (None: whole utterances), shuffled; valid/test batches hold
    whole utterances, the valid set capped at ``max_valid_items``. With ``skip_bad_files`` a batch
    whose items were all skipped arrives as None (see :func:`collate_audio`): steps should
    return None for it, which Lightning treats as a skipped step. Bad manifest lines always raise.
    """

    key = "audio"
    suffixes = AUDIO_SUFFIXES
    media = "audio files"
    corpus = "speech corpus"
    collate = staticmethod(collate_audio)

    def __init__(
        self,
        *,
        path: str,
        sample_rate: int = 16000,
        crop_seconds: float | None = 1.0,
        batch_size: int = 16,
        valid_batch_size: int = 8,
        num_workers: int = 0,
        skip_bad_files: bool = False,
        build_embedded: bool = False,
        num_utterances: int = 2000,
        seed: int = 0,
        max_valid_items: int | None = 64,
    ) -> None:
        super().__init__(path=path, batch_size=batch_size, valid_batch_size=valid_batch_size, num_workers=num_workers,
                         skip_bad_files=skip_bad_files, build_embedded=build_embedded, seed=seed,
                         max_valid_items=max_valid_items)
        self.save_hyperparameters()
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"AudioDataModule: crop_seconds must be > 0 or None, got {crop_seconds}")
        self.sample_rate = sample_rate
        self.crop_samples = None if crop_seconds is None else int(round(crop_seconds * sample_rate))
        self.num_utterances = num_utterances

    def list_folder(self, folder: Path) -> list[dict]:
        """Audio files under ``folder`` (no sidecar captions)."""
        return [{"audio": str(p.resolve())} for p in find_audio_files(folder)]

    def make_dataset(self, split: str, entries: list[dict]) -> AudioDataset:
        return AudioDataset(entries, sample_rate=self.sample_rate,
                            crop_samples=self.crop_samples if split == "train" else None,
                            skip_bad_files=self.skip_bad_files)

    def build_corpus(self) -> None:
        build_speech_corpus(self.path, num_utterances=self.num_utterances, seed=self.seed)
