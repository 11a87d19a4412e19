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

import random
from pathlib import Path

import torch

from mmtok.data.loading import unseeded_rng

from mmtok.data.manifest import (  # noqa: F401  (SPLITS, assign_splits: re-exported)
    SPLITS,
    ManifestDataModule,
    ManifestDataset,
    assign_splits,
    find_media_files,
    read_media_manifest,
)
from mmtok.data.speech import build_speech_corpus
from mmtok.media import (  # noqa: F401  (the audio readers are re-exported from here)
    AUDIO_SUFFIXES,
    AudioFileError,
    AudioReader,
    load_audio,
)

_PASS_THROUGH = ("text", "phonemes", "speaker", "path")


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
    ) -> None:
        if crop_samples is not None and crop_samples <= 0:
            raise ValueError(f"AudioDataset: crop_samples must be > 0 or None, got {crop_samples}")
        if sample_rate <= 0:
            raise ValueError(f"AudioDataset: sample_rate must be > 0, got {sample_rate}")
        super().__init__(entries, skip_bad_files=skip_bad_files)
        self.sample_rate = sample_rate
        self.crop_samples = crop_samples

    def _crop(self, audio: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, int]:
        """audio [1, N] -> ([1, crop_samples], valid samples)."""
        crop, total = self.crop_samples, audio.shape[-1]
        if total >= crop:
            start = rng.randrange(total - crop + 1)
            return audio[:, start:start + crop], crop
        return torch.nn.functional.pad(audio, (0, crop - total)), total

    def load(self, path: str) -> torch.Tensor:
        return load_audio(path, sample_rate=self.sample_rate)  # [1, N]

    def make_item(self, entry: dict, audio: torch.Tensor, rng: random.Random | None) -> dict:
        length = audio.shape[-1]
        if self.crop_samples is not None:
            audio, length = self._crop(audio, rng or unseeded_rng())
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

    def batch_measures(self, batch: dict) -> dict[str, float]:
        """Items and seconds of audio (valid samples, padding left out)."""
        return {"samples": len(batch["lengths"]), "audio_seconds": float(batch["lengths"].sum()) / self.sample_rate}

    def list_folder(self, folder: Path) -> list[dict]:
        """Audio files under ``folder`` (no sidecar captions)."""
        return [{"audio": str(p.resolve())} for p in find_audio_files(folder)]

    def make_dataset(self, split: str, entries: list[dict]) -> AudioDataset:
        return AudioDataset(entries, sample_rate=self.sample_rate,
                            crop_samples=self.crop_samples if split == "train" else None,
                            skip_bad_files=self.skip_bad_files)

    def build_corpus(self) -> None:
        build_speech_corpus(self.path, num_utterances=self.num_utterances, seed=self.seed)
