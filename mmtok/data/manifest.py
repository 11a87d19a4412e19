"""Manifests, folders, splits, corpus caches and the base Lightning data module of every modality.

A data source is a folder holding ``manifest.jsonl``, a manifest file itself (one JSON object
per line naming a media file under a key such as ``audio``, ``image`` or ``video``, relative to
the manifest's folder or absolute, and optionally ``split``), or a plain folder of media files
split ~90/5/5 by a hash of each file's relative path. A manifest line that is not a JSON object
with the media key, names a missing file or an unknown split raises ValueError naming the
manifest and the line, or with ``skip_bad_lines`` is logged, skipped and counted.

Embedded corpora are folders ``out_dir/corpus.json`` (build parameters, a cache key, written
last) and ``out_dir/manifest.jsonl`` (sorted); :func:`corpus_is_cached` tells whether a build
with the same parameters is finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from mmtok.data.loading import split_key, training_loader
from mmtok.data.shards import is_shards, read_split, streaming_dataset, streaming_loader
from mmtok.files import write_text_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SKIP_SLOTS = 256  # one skip counter per DataLoader worker (slot 0: the main process)


# ----------------------------------------------------------------------------- manifests and folders


def _bad_line(manifest: Path, number: int, message: str, *, skip: bool) -> None:
    text = f"{manifest}:{number}: {message}"
    if not skip:
        raise ValueError(text)
    log.warning("skipping manifest line: %s", text)


def read_media_manifest(path: str | Path, *, key: str | None, skip_bad_lines: bool = False) -> tuple[list[dict], int]:
    """Reads a manifest.jsonl (the one reader of manifests) whose entries name a media file under
    ``key`` (e.g. "audio", "image"; None: entries need not name one).

    Every non-blank line must be a JSON object whose ``key`` is a string naming an existing file
    (relative to the manifest's folder, or absolute) and whose ``split``, when present, is one of
    train/valid/test. Otherwise raises ValueError naming the manifest and the line number, or with
    ``skip_bad_lines`` logs a warning and skips the line. Returns (entries with ``key`` made an
    absolute path string, number of lines skipped).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    entries, skipped = [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        problem = None
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            problem = f"not valid JSON ({error.msg})"
        else:
            if not isinstance(entry, dict) or (key is not None and not isinstance(entry.get(key), str)):
                problem = f"expected a JSON object{f' with a string {key!r} key' if key else ''}, got {line[:80]!r}"
            elif "split" in entry and entry["split"] not in SPLITS:
                problem = f"unknown split {entry['split']!r}, expected one of {SPLITS}"
            elif key is not None:
                media = Path(entry[key])
                media = media if media.is_absolute() else path.parent / media
                if not media.is_file():
                    problem = f"{key} file {str(media)!r} does not exist"
        if problem is not None:
            _bad_line(path, number, problem, skip=skip_bad_lines)
            skipped += 1
            continue
        entries.append(entry if key is None else {**entry, key: str(media.resolve())})
    return entries, skipped


def manifest_path(source: str | Path) -> Path:
    """``source/manifest.jsonl`` for a corpus folder, else ``source`` (a manifest file)."""
    path = Path(source)
    return path / "manifest.jsonl" if path.is_dir() else path


def read_manifest(source: str | Path, *, key: str | None = None) -> list[dict]:
    """The entries of a corpus folder's manifest or of a manifest file (:func:`read_media_manifest`)."""
    return read_media_manifest(manifest_path(source), key=key)[0]


def find_media_files(folder: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``folder`` (recursively) whose suffix, any case, is in ``suffixes``; sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def sidecar_text(path: str | Path) -> str | None:
    """The caption in ``<path without suffix>.txt`` (stripped), or None when there is none."""
    sidecar = Path(path).with_suffix(".txt")
    if not sidecar.is_file():
        return None
    try:
        return sidecar.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as error:
        raise ValueError(f"{sidecar}: caption file is not UTF-8 text ({error})") from error


def folder_entries(folder: str | Path, *, key: str, suffixes: tuple[str, ...]) -> list[dict]:
    """Entries for a plain folder of media files: ``key`` (absolute path), ``text`` from a sidecar."""
    entries = []
    for file in find_media_files(folder, suffixes):
        entry = {key: str(file.resolve())}
        text = sidecar_text(file)
        if text is not None:
            entry["text"] = text
        entries.append(entry)
    return entries


# ----------------------------------------------------------------------------- splits


def _hash_fraction(name: str) -> float:
    """A stable number in [0, 1) from a string (sha1), independent of Python's hash seed."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def assign_splits(names: list[str] | int, *, seed: int | None = None, valid_fraction: float = 0.05,
                  test_fraction: float = 0.05) -> list[str]:
    """Split per item, ~5 % valid, ~5 % test, the rest train, from each item's place in an order:
    with ``seed``, a seeded permutation of the items (``names`` may then be a count: an embedded
    corpus, whose splits are exact fractions); without, a hash of each name (a folder of files:
    adding or removing files does not move the others). An item at ``f`` (its hash, or its rank over
    the count) is valid when f < ``valid_fraction``, test when below ``valid_fraction + test_fraction``.

    Tiny lists are fixed up so that there is always a train item, a valid item from 2 items on and a
    test item from 3 on (items are moved from a split that can spare one, lowest ``f`` first).
    """
    if isinstance(names, int):
        if seed is None:
            raise ValueError("assign_splits: a count of items needs a seed (names give a hash order)")
        names = [str(i) for i in range(names)]
    if seed is None:
        fractions = [_hash_fraction(name) for name in names]
    else:
        order = random.Random(f"mmtok-splits-{seed}").sample(range(len(names)), len(names))
        fractions = [0.0] * len(names)
        for rank, index in enumerate(order):
            fractions[index] = rank / len(names)
    splits = [
        "valid" if f < valid_fraction else "test" if f < valid_fraction + test_fraction else "train"
        for f in fractions
    ]
    minimum = {"train": int(len(names) >= 1), "valid": int(len(names) >= 2), "test": int(len(names) >= 3)}
    by_fraction = sorted(range(len(names)), key=lambda i: fractions[i])
    for split in SPLITS:
        if splits.count(split) >= minimum[split]:
            continue
        donor = next(
            i for donor_split in ("train", "test", "valid") for i in by_fraction
            if splits[i] == donor_split and splits.count(donor_split) > minimum[donor_split]
        )
        splits[donor] = split
    return splits


def assign_missing_splits(entries: list[dict], *, key: str, root: Path) -> list[dict]:
    """Fills ``split`` where missing from a hash of each file's path relative to ``root``."""
    missing = [entry for entry in entries if "split" not in entry]
    root = root.resolve()
    names = []
    for entry in missing:
        media = Path(entry[key])
        names.append(media.relative_to(root).as_posix() if media.is_relative_to(root) else media.as_posix())
    for entry, split in zip(missing, assign_splits(names)):
        entry["split"] = split
    return entries


def load_entries(
    path: Path, *, key: str, suffixes: tuple[str, ...], skip_bad_lines: bool, owner: str,
    list_folder: Callable[[Path], list[dict]] | None = None, hint: str = "",
) -> tuple[list[dict], int]:
    """Entries (with splits) of a manifest file, a folder holding manifest.jsonl, or a plain folder.

    A plain folder is listed by ``list_folder`` (default :func:`folder_entries`: files with
    ``suffixes`` and sidecar captions). Returns (entries, manifest lines skipped). ``owner`` names
    the caller in error messages; ``hint`` ends the message when there is no data.
    """
    manifest = path if path.is_file() else path / "manifest.jsonl"
    if manifest.is_file():
        entries, skipped = read_media_manifest(manifest, key=key, skip_bad_lines=skip_bad_lines)
        return assign_missing_splits(entries, key=key, root=manifest.parent), skipped
    hint = f"; {hint}" if hint else ""
    if not path.is_dir():
        raise FileNotFoundError(f"{owner}: path {str(path)!r} does not exist{hint}")
    entries = folder_entries(path, key=key, suffixes=suffixes) if list_folder is None else list_folder(path)
    if not entries:
        raise FileNotFoundError(f"{owner}: {str(path)!r} holds no manifest.jsonl and no {key} files "
                                f"({', '.join(suffixes)}){hint}")
    return assign_missing_splits(entries, key=key, root=path), 0


def split_datasets(entries: list[dict], *, path: Path, max_valid_items: int | None, owner: str,
                   make: Callable[[str, list[dict]], Dataset]) -> dict[str, Dataset]:
    """One dataset per split from entries holding ``split``; ValueError when there is no train item."""
    by_split = {split: [e for e in entries if e["split"] == split] for split in SPLITS}
    if not by_split["train"]:
        raise ValueError(f"{owner}: {str(path)!r} has no train items")
    if max_valid_items is not None:
        by_split["valid"] = by_split["valid"][:max_valid_items]
    return {split: make(split, items) for split, items in by_split.items()}


class SkipCounter:
    """Counts skipped items across DataLoader workers (shared memory, one slot per worker)."""

    def __init__(self) -> None:
        self._counts = torch.zeros(_SKIP_SLOTS, dtype=torch.long).share_memory_()

    def add(self) -> None:
        worker = get_worker_info()
        self._counts[0 if worker is None else 1 + worker.id % (_SKIP_SLOTS - 1)] += 1

    @property
    def total(self) -> int:
        return int(self._counts.sum())


class ManifestDataset(Dataset, ABC):
    """Items from manifest-style entries (dicts with an absolute path under :attr:`key`).

    Subclasses set ``key`` and ``error`` (the exception a bad file raises) and supply
    :meth:`load` (path -> tensor) and :meth:`make_item` (entry, tensor -> item dict). A bad file
    raises its error naming it, or with ``skip_bad_files`` gives None, a warning logged by the
    subclass's module and one more :attr:`num_skipped` (counted across DataLoader workers).
    """

    key: str
    error: type[Exception]

    def __init__(self, entries: list[dict], *, skip_bad_files: bool = False) -> None:
        self.entries = list(entries)
        self.skip_bad_files = skip_bad_files
        self._skips = SkipCounter()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_skipped(self) -> int:
        """How many item loads were skipped because their file was bad (all workers together)."""
        return self._skips.total

    @abstractmethod
    def load(self, path: str) -> torch.Tensor:
        """The media tensor of one file; raises the modality's error naming the file when it is bad."""

    @abstractmethod
    def make_item(self, entry: dict, media: torch.Tensor, rng: random.Random | None) -> dict:
        """The dataset item for ``entry`` whose file loaded as ``media``; its random draws (a crop) come
        from ``rng``, the item's own generator (None: not seeded, see :func:`mmtok.data.loading.split_key`)."""

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        index, rng = split_key(key)
        entry = self.entries[index]
        return self.item_from(entry, entry[self.key], rng)

    def item_from(self, entry: dict, source, rng: random.Random | None) -> dict | None:
        """The item of ``entry`` whose media is ``source`` (its path, or a
        :class:`~mmtok.media.MediaBytes` from a shard), or None when it is bad and skipped."""
        try:
            media = self.load(source)
        except self.error as error:
            if not self.skip_bad_files:
                raise
            self._skips.add()
            logging.getLogger(type(self).__module__).warning("skipping bad %s file: %s", self.key, error)
            return None
        return self.make_item(entry, media, rng)


# ----------------------------------------------------------------------------- corpus cache


def corpus_is_cached(out_dir: Path, params: dict, *, key: str, count_key: str) -> bool:
    """True when ``out_dir`` holds a finished build with ``params`` and every file it lists."""
    corpus, manifest = out_dir / "corpus.json", out_dir / "manifest.jsonl"
    if not (corpus.is_file() and manifest.is_file()):
        return False
    try:
        if json.loads(corpus.read_text(encoding="utf-8")) != params:
            return False
        entries = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
        complete = all((out_dir / entry[key]).is_file() for entry in entries)
        return complete and len(entries) == params[count_key]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return False


def build_items(pool, make: Callable[[object], dict], jobs: list, *, out_dir: Path, key: str, desc: str,
                progress: bool, unit: str = "item") -> list[dict]:
    """The manifest rows of an embedded corpus, one ``make(job)`` each (in ``pool``), going on past an
    item whose tool fails (espeak-ng, fluidsynth): the others are built and, if any failed, written as a
    manifest without ``corpus.json`` (so the build is not taken as finished and a rerun retries), the
    failures listed on stderr and counted in a :class:`~mmtok.errors.DataError`."""
    from mmtok.errors import DataError

    def attempt(job):
        try:
            return make(job), None
        except (RuntimeError, ValueError, OSError) as error:
            return None, " ".join(str(error).split())

    rows, failures = [], []
    for row, failure in tqdm(pool.map(attempt, jobs), total=len(jobs), desc=desc, unit=unit, disable=not progress):
        if failure is None:
            rows.append(row)
        else:
            failures.append(failure)
    if failures:
        write_text_atomic(out_dir / "manifest.jsonl", "".join(
            json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in sorted(rows, key=lambda r: r[key])))
        for failure in failures:
            print(f"  failed: {failure}", file=sys.stderr)
        raise DataError(f"{out_dir}: {len(failures)} of {len(jobs)} items could not be built (listed above); the "
                        f"manifest holds the other {len(rows)}, and a rerun builds the corpus again")
    return rows


def write_corpus_manifest(out_dir: Path, rows: list[dict], params: dict, *, key: str) -> Path:
    """Sorted manifest.jsonl, then corpus.json (written last: its presence marks a finished build)."""
    rows = sorted(rows, key=lambda row: row[key])
    manifest = write_text_atomic(out_dir / "manifest.jsonl",
                                 "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(out_dir / "corpus.json", json.dumps(params, sort_keys=True, indent=2) + "\n")
    return manifest


def remove_stale_files(folder: Path, pattern: str, *, keep: set[Path]) -> None:
    """Deletes files matching ``pattern`` in ``folder`` left by an earlier, larger build."""
    for path in folder.glob(pattern):
        if path not in keep:
            path.unlink()


# ----------------------------------------------------------------------------- data module


class ManifestDataModule(L.LightningDataModule, ABC):
    """Train/valid/test loaders from a manifest, a folder holding one, or a plain folder of media.

    Subclasses set the class facts (``key``: the manifest key naming the media file, ``suffixes``
    of plain-folder files, ``media``/``corpus``: names in messages, ``collate``: the batch
    function, a staticmethod) and supply :meth:`make_dataset` and :meth:`build_corpus`; they may
    override :meth:`list_folder`.
    With ``build_embedded`` and no manifest in ``path``, :meth:`prepare_data` calls
    :meth:`build_corpus`. :meth:`setup` reads the source once for all stages; the valid set is
    capped at ``max_valid_items``. :attr:`num_skipped` counts skipped manifest lines and files.
    """

    key: str
    suffixes: tuple[str, ...]
    media: str  # "audio files", "images", ...: what a plain folder holds
    corpus: str  # the embedded corpus, e.g. "speech corpus"
    collate: Callable[[list[dict | None]], dict | None]

    def __init__(
        self,
        *,
        path: str,
        batch_size: int,
        valid_batch_size: int,
        num_workers: int,
        skip_bad_files: bool,
        build_embedded: bool,
        seed: int,
        max_valid_items: int | None,
    ) -> None:
        super().__init__()
        if not build_embedded and not Path(path).exists():
            raise FileNotFoundError(
                f"{self._owner}: path {path!r} does not exist; expected a folder holding manifest.jsonl, "
                f"a manifest file, or a folder of {self.media} (or set build_embedded=True to build the embedded "
                f"{self.corpus} there)"
            )
        self.path = Path(path)
        self.batch_size = batch_size
        self.valid_batch_size = valid_batch_size
        self.num_workers = num_workers
        self.skip_bad_files = skip_bad_files
        self.build_embedded = build_embedded
        self.seed = seed
        self.max_valid_items = max_valid_items
        self.num_skipped_lines = 0
        self.datasets: dict[str, Dataset] = {}
        self._decoders: dict[str, ManifestDataset] = {}

    @property
    def _owner(self) -> str:
        return type(self).__name__

    def list_folder(self, folder: Path) -> list[dict]:
        """Entries of a plain folder: files with :attr:`suffixes`, captions from sidecar .txt files."""
        return folder_entries(folder, key=self.key, suffixes=self.suffixes)

    @abstractmethod
    def make_dataset(self, split: str, entries: list[dict]) -> Dataset:
        """The dataset of ``split`` over ``entries`` (dicts with an absolute :attr:`key` path)."""

    @abstractmethod
    def build_corpus(self) -> None:
        """Builds the embedded corpus in ``path``."""

    def prepare_data(self) -> None:
        """Builds the embedded corpus in ``path`` when asked to and no manifest is there."""
        manifest = self.path if self.path.is_file() else self.path / "manifest.jsonl"
        if self.build_embedded and not manifest.is_file():
            self.build_corpus()

    def setup(self, stage: str | None = None) -> None:
        """Reads the source and makes the train/valid/test datasets (all stages at once): from shards
        (:mod:`mmtok.data.shards`), a streamed train split and the valid/test items in order."""
        if self.datasets:
            return
        if is_shards(self.path):
            self._setup_shards()
            return
        hint = ("call prepare_data() first" if self.build_embedded
                else f"set build_embedded=True to build the embedded {self.corpus} there")
        entries, self.num_skipped_lines = load_entries(
            self.path, key=self.key, suffixes=self.suffixes, owner=self._owner, list_folder=self.list_folder,
            skip_bad_lines=self.skip_bad_files, hint=hint,
        )
        if self.num_skipped_lines:
            logging.getLogger(type(self).__module__).warning(
                "%s: skipped %d bad manifest line(s) in %s", self._owner, self.num_skipped_lines, self.path)
        self.datasets = split_datasets(entries, path=self.path, max_valid_items=self.max_valid_items,
                                       owner=self._owner, make=self.make_dataset)

    def _setup_shards(self) -> None:
        """Shard items are made by each split's dataset (with no entries of its own: the decoder)."""
        self._decoders = {split: self.make_dataset(split, []) for split in SPLITS}
        self.datasets = {"train": streaming_dataset(self.path, "train", key=self.key, train=True, seed=self.seed,
                                                    make_item=self._decoders["train"].item_from)}
        for split in ("valid", "test"):
            self.datasets[split] = read_split(self.path, split, key=self.key, make_item=self._decoders[split].item_from,
                                              limit=self.max_valid_items if split == "valid" else None)

    @property
    def num_skipped(self) -> int:
        """Bad manifest lines plus bad files skipped so far (train/valid/test together)."""
        datasets = self._decoders or self.datasets
        return self.num_skipped_lines + sum(dataset.num_skipped for dataset in datasets.values())

    def batch_measures(self, batch: dict) -> dict[str, float]:
        """What a training batch holds, for the throughput a run reports (``train/<name>_per_s``)."""
        return {"samples": len(batch["path"])}

    def _dataset(self, split: str) -> Dataset:
        if not self.datasets:
            raise RuntimeError(f"{self._owner}: call setup() before asking for a dataloader")
        return self.datasets[split]

    def _options(self) -> dict:
        return dict(num_workers=self.num_workers, collate_fn=self.collate, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, resumable mid-epoch and sharded over processes (:mod:`mmtok.data.loading`); from
        shards, litdata's StreamingDataLoader (which is all of that too)."""
        dataset = self._dataset("train")
        if is_shards(self.path):
            return streaming_loader(dataset, batch_size=self.batch_size, collate_fn=self.collate,
                                    num_workers=self.num_workers)
        return training_loader(self, dataset, batch_size=self.batch_size, seed=self.seed, **self._options())

    def _evaluation_loader(self, split: str) -> DataLoader:
        return DataLoader(self._dataset(split), batch_size=self.valid_batch_size,
                          generator=torch.Generator().manual_seed(self.seed), **self._options())

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")
