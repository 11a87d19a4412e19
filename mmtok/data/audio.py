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

import hashlib
import json
import logging
import struct
from pathlib import Path

import lightning as L
import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import DataLoader, Dataset, get_worker_info

from mmtok.data.speech import build_speech_corpus

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
SPLITS = ("train", "valid", "test")
_PASS_THROUGH = ("text", "phonemes", "speaker", "path")
_SKIP_SLOTS = 256  # one skip counter per DataLoader worker (slot 0: the main process)


class AudioFileError(ValueError):
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


def read_manifest(path: str | Path) -> list[dict]:
    """Reads a manifest.jsonl; returns its entries with ``audio`` made an absolute path string.

    Every non-blank line must be a JSON object with an ``audio`` key naming an existing file
    (relative to the manifest's folder, or absolute). Otherwise raises ValueError naming the
    manifest and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
        if not isinstance(entry, dict) or "audio" not in entry:
            raise ValueError(
                f"{path}:{number}: expected a JSON object with an 'audio' key, got {line[:80]!r}"
            )
        audio = Path(entry["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        if not audio.is_file():
            raise ValueError(f"{path}:{number}: audio file {str(audio)!r} does not exist")
        entries.append({**entry, "audio": str(audio.resolve())})
    return entries


class AudioDataset(Dataset):
    """Audio items from manifest-style entries (dicts with an absolute ``audio`` path).

    An item is a dict: ``audio`` FloatTensor [1, L], ``length`` (valid samples), ``path`` and the
    entry's ``text``/``phonemes``/``speaker`` when present. With ``crop_samples`` L is that
    length: a random window of longer audio, zero-padded shorter audio; None keeps the whole
    utterance. With ``skip_bad_files`` a file that fails to load gives None (dropped by
    :func:`collate_audio`), a logged warning and one more :attr:`num_skipped`; otherwise its
    AudioFileError propagates.
    """

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
        self.entries = list(entries)
        self.sample_rate = sample_rate
        self.crop_samples = crop_samples
        self.skip_bad_files = skip_bad_files
        self.generator = generator
        # Shared memory, one slot per worker, so skips counted in DataLoader workers reach here.
        self._skips = torch.zeros(_SKIP_SLOTS, dtype=torch.long).share_memory_()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_skipped(self) -> int:
        """How many item loads were skipped because their file was bad (all workers together)."""
        return int(self._skips.sum())

    def _count_skip(self) -> None:
        worker = get_worker_info()
        self._skips[0 if worker is None else 1 + worker.id % (_SKIP_SLOTS - 1)] += 1

    def _crop(self, audio: torch.Tensor) -> tuple[torch.Tensor, int]:
        """audio [1, N] -> ([1, crop_samples], valid samples)."""
        crop, total = self.crop_samples, audio.shape[-1]
        if total >= crop:
            start = int(torch.randint(0, total - crop + 1, (1,), generator=self.generator))
            return audio[:, start:start + crop], crop
        return torch.nn.functional.pad(audio, (0, crop - total)), total

    def __getitem__(self, index: int) -> dict | None:
        entry = self.entries[index]
        try:
            audio = load_audio(entry["audio"], sample_rate=self.sample_rate)  # [1, N]
        except AudioFileError as error:
            if not self.skip_bad_files:
                raise
            self._count_skip()
            log.warning("skipping bad audio file: %s", error)
            return None
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


def _hash_fraction(name: str) -> float:
    """A stable number in [0, 1) from a string (sha1), independent of Python's hash seed."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def hash_splits(names: list[str], *, valid_fraction: float = 0.05, test_fraction: float = 0.05) -> list[str]:
    """Split per name from a hash of the name: ~5 % valid, ~5 % test, the rest train.

    Adding or removing files does not move the others. Tiny lists are fixed up so that there is
    always a train item, a valid item from 2 names on and a test item from 3 on (items are moved
    from a split that can spare one, lowest hash first).
    """
    fractions = [_hash_fraction(name) for name in names]
    splits = [
        "valid" if f < valid_fraction else "test" if f < valid_fraction + test_fraction else "train"
        for f in fractions
    ]
    minimum = {"train": int(len(names) >= 1), "valid": int(len(names) >= 2), "test": int(len(names) >= 3)}
    by_hash = sorted(range(len(names)), key=lambda i: fractions[i])
    for split in SPLITS:
        if splits.count(split) >= minimum[split]:
            continue
        donor = next(
            i for donor_split in ("train", "test", "valid") for i in by_hash
            if splits[i] == donor_split and splits.count(donor_split) > minimum[donor_split]
        )
        splits[donor] = split
    return splits


def _relative_name(audio: str, root: Path) -> str:
    """``audio`` relative to ``root`` (posix) when inside it, else the absolute path."""
    path, root = Path(audio), root.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def find_audio_files(folder: str | Path) -> list[Path]:
    """Audio files (.wav/.flac/.ogg/.mp3, any case) under ``folder``, recursively, sorted."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


class AudioDataModule(L.LightningDataModule):
    """Train/valid/test audio loaders from a manifest, a folder holding one, or a folder of files.

    ``path`` is a folder with ``manifest.jsonl``, a manifest file, or a plain folder of audio
    files. With ``build_embedded`` and no manifest there, :meth:`prepare_data` builds the
    embedded espeak-ng speech corpus in ``path`` (``num_utterances``, ``seed``). Training batches
    are random crops of ``crop_seconds`` (None: whole utterances), shuffled; valid/test batches hold
    whole utterances, the valid set capped at ``max_valid_items``. With ``skip_bad_files`` a batch
    whose items were all skipped arrives as None (see :func:`collate_audio`): steps should
    return None for it, which Lightning treats as a skipped step.
    """

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
        super().__init__()
        self.save_hyperparameters()
        if not build_embedded and not Path(path).exists():
            raise FileNotFoundError(
                f"AudioDataModule: path {path!r} does not exist; expected a folder holding manifest.jsonl, "
                "a manifest file, or a folder of audio files (or set build_embedded=True to build the "
                "embedded speech corpus there)"
            )
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"AudioDataModule: crop_seconds must be > 0 or None, got {crop_seconds}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.crop_samples = None if crop_seconds is None else int(round(crop_seconds * sample_rate))
        self.batch_size = batch_size
        self.valid_batch_size = valid_batch_size
        self.num_workers = num_workers
        self.skip_bad_files = skip_bad_files
        self.build_embedded = build_embedded
        self.num_utterances = num_utterances
        self.seed = seed
        self.max_valid_items = max_valid_items
        self.datasets: dict[str, AudioDataset] = {}

    def _manifest_path(self) -> Path | None:
        if self.path.is_file():
            return self.path
        candidate = self.path / "manifest.jsonl"
        return candidate if candidate.is_file() else None

    def prepare_data(self) -> None:
        """Builds the embedded speech corpus in ``path`` when asked to and no manifest is there."""
        if self.build_embedded and self._manifest_path() is None:
            build_speech_corpus(self.path, num_utterances=self.num_utterances, seed=self.seed)

    def _entries(self) -> list[dict]:
        """Every entry with its ``split`` filled in."""
        manifest = self._manifest_path()
        if manifest is not None:
            entries = read_manifest(manifest)
            root = manifest.parent
        else:
            if not self.path.is_dir():
                hint = " (call prepare_data() first)" if self.build_embedded else ""
                raise FileNotFoundError(f"AudioDataModule: path {str(self.path)!r} does not exist{hint}")
            entries = [{"audio": str(p.resolve())} for p in find_audio_files(self.path)]
            root = self.path
            if not entries:
                raise FileNotFoundError(
                    f"AudioDataModule: {str(self.path)!r} holds no manifest.jsonl and no audio files "
                    f"({', '.join(AUDIO_SUFFIXES)}); set build_embedded=True to build the embedded "
                    "speech corpus there"
                )
        missing = [e for e in entries if "split" not in e]
        names = [_relative_name(e["audio"], root) for e in missing]
        for entry, split in zip(missing, hash_splits(names)):
            entry["split"] = split
        bad = sorted({str(e["split"]) for e in entries} - set(SPLITS))
        if bad:
            raise ValueError(f"AudioDataModule: {manifest}: unknown split values {bad}, expected {SPLITS}")
        return entries

    def setup(self, stage: str | None = None) -> None:
        """Reads the source and makes the train/valid/test datasets (all stages at once)."""
        if self.datasets:
            return
        entries = self._entries()
        by_split = {split: [e for e in entries if e["split"] == split] for split in SPLITS}
        if not by_split["train"]:
            raise ValueError(f"AudioDataModule: {str(self.path)!r} has no train items")
        if self.max_valid_items is not None:
            by_split["valid"] = by_split["valid"][: self.max_valid_items]
        for split, items in by_split.items():
            self.datasets[split] = AudioDataset(
                items,
                sample_rate=self.sample_rate,
                crop_samples=self.crop_samples if split == "train" else None,
                skip_bad_files=self.skip_bad_files,
            )

    @property
    def num_skipped(self) -> int:
        """Bad files skipped so far, summed over the train/valid/test datasets."""
        return sum(dataset.num_skipped for dataset in self.datasets.values())

    def _loader(self, split: str, *, batch_size: int, shuffle: bool) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("AudioDataModule: call setup() before asking for a dataloader")
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_audio,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", batch_size=self.valid_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.valid_batch_size, shuffle=False)
