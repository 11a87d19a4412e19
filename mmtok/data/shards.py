"""Corpora and token caches as litdata shards: data that does not fit one disk or one process.

``mmtok shard CORPUS OUT`` writes, with litdata's ``optimize``::

    OUT/train/, OUT/valid/, OUT/test/   litdata chunks + index.json, one split each, in manifest order
    OUT/shards.json                     what the shards hold (written last: a finished write)

A media corpus (a manifest folder or file, or a folder of audio, image or video files) becomes items
``{"name": the file's path in the corpus, "media": its bytes, "entry": its manifest entry as JSON}``, decoded at read
time by the same dataset code as the manifest path (:class:`mmtok.media.MediaBytes`), so sample rate,
image size and crops stay data-module options. A token cache becomes ``{"codes": int32 [Q, T],
"entry": JSON}``.

Every data module takes a shard folder (local, or ``s3://``/``gs://``/... which litdata streams and
caches) wherever it takes a manifest: training streams the train split with litdata's
``StreamingDataset`` / ``StreamingDataLoader`` (chunk-wise shuffle, equal batches on every rank,
``state_dict`` for mid-epoch resume, which Lightning checkpoints); validation and test read their
split's items in order, so their batches are those of the manifest path. An item's random draws
come from ``(seed, epoch, item)``, as on the manifest path. A shard whose index names a pickle
serializer is refused: nothing is unpickled from a file.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mmtok.data.media_files import MEDIA_KEYS, MEDIA_SUFFIXES
from mmtok.errors import DataError
from mmtok.files import write_text_atomic

SHARDS_INFO = "shards.json"
SAFE_FORMATS = {"str", "bytes", "int", "float", "bool", "numpy", "no_header_numpy"}  # never "pickle"


def is_shards(path: str | Path) -> bool:
    """A shard folder: a local folder holding shards.json, or a remote URL (``s3://...``)."""
    return "://" in str(path) or (Path(path) / SHARDS_INFO).is_file()


# ----------------------------------------------------------------------------- writing


def _media_item(entry: dict, *, key: str, root: Path) -> dict:
    path = Path(entry[key])
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    rest = {field: value for field, value in entry.items() if field != key}
    return {"name": name, "media": path.read_bytes(), "entry": json.dumps(rest, sort_keys=True)}


def _token_item(index: int, *, folder: str) -> dict:
    corpus = _token_corpus(folder)
    return {"codes": corpus.codes(index).numpy().astype(np.int32),
            "entry": json.dumps(corpus.entries[index], sort_keys=True)}


@functools.lru_cache(maxsize=1)
def _token_corpus(folder: str):
    from mmtok.data.tokens import TokenCorpus

    return TokenCorpus(folder)


def _corpus_kind(source: Path) -> tuple[str, str | None]:
    """("tokens", None) for a token cache; ("media", key) for a media corpus."""
    from mmtok.data.tokens import INFO_NAME, TOKENS_NAME

    if (source / TOKENS_NAME).is_file() and (source / INFO_NAME).is_file():
        return "tokens", None
    manifest = source if source.is_file() else source / "manifest.jsonl"
    if manifest.is_file():
        first = json.loads(next(line for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()))
        keys = [key for key in MEDIA_KEYS.values() if key in first]
        if keys:
            return "media", keys[0]
    if source.is_dir():
        for modality, suffixes in MEDIA_SUFFIXES.items():
            if any(p.suffix.lower() in suffixes for p in source.rglob("*") if p.is_file()):
                return "media", MEDIA_KEYS[modality]
    raise DataError(f"{source}: expected a token cache (tokens.safetensors + info.json), a corpus folder or "
                    f"manifest naming audio, image or video files, or a folder of such files")


def write_shards(source: str | Path, out: str | Path, *, chunk_bytes: str = "64MB", num_workers: int = 1) -> Path:
    """Shards of a media corpus or a token cache, one litdata folder per split (see the module
    docstring); returns ``out``. A split is written to a temporary folder and renamed, and
    shards.json last, so an interrupted run leaves nothing a reader would take as finished."""
    from litdata import optimize

    from mmtok.data.manifest import SPLITS, load_entries

    source, out = Path(source), Path(out)
    kind, key = _corpus_kind(source)
    if kind == "tokens":
        corpus = _token_corpus(str(source.resolve()))
        splits = {split: [i for i, e in enumerate(corpus.entries) if e.get("split", "train") == split]
                  for split in SPLITS}
        make, info = functools.partial(_token_item, folder=str(source.resolve())), corpus.info
    else:
        suffixes = next(suffixes for modality, suffixes in MEDIA_SUFFIXES.items() if MEDIA_KEYS[modality] == key)
        entries, _ = load_entries(source, key=key, suffixes=suffixes, skip_bad_lines=False, owner="mmtok shard")
        splits = {split: [e for e in entries if e["split"] == split] for split in SPLITS}
        root = (source.parent if source.is_file() else source).resolve()
        make, info = functools.partial(_media_item, key=key, root=root), None
    if not splits["train"]:
        raise DataError(f"{source}: no train items to shard")
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARDS_INFO).unlink(missing_ok=True)
    for split, items in splits.items():
        if not items:
            shutil.rmtree(out / split, ignore_errors=True)  # a split an earlier write left there
            continue
        partial = out / f".{split}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        optimize(fn=make, inputs=items, output_dir=str(partial), chunk_bytes=chunk_bytes, num_workers=num_workers,
                 reorder_files=False, keep_data_ordered=True, verbose=False, start_method="fork")
        shutil.rmtree(out / split, ignore_errors=True)
        partial.rename(out / split)
    description = {"kind": kind, "key": key, "source": str(source.resolve()),
                   "counts": {split: len(items) for split, items in splits.items()}, "info": info}
    write_text_atomic(out / SHARDS_INFO, json.dumps(description, indent=2, sort_keys=True) + "\n")
    return out


# ----------------------------------------------------------------------------- reading


def read_shards_info(folder: str | Path) -> dict:
    """shards.json of a shard folder; ``{}`` for a remote one (its splits are read by litdata alone)."""
    if "://" in str(folder):
        return {}
    path = Path(folder) / SHARDS_INFO
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read the shard description ({error}); write it with `mmtok shard`") from error


def _check_formats(split_folder: Path) -> None:
    index = split_folder / "index.json"
    try:
        formats = set(json.loads(index.read_text(encoding="utf-8"))["config"]["data_format"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{index}: not a litdata index ({error})") from error
    unsafe = formats - SAFE_FORMATS
    if unsafe:
        raise DataError(f"{index}: items stored as {sorted(unsafe)}; mmtok reads only {sorted(SAFE_FORMATS)} "
                        f"(it never unpickles data)")


def split_folder(folder: str | Path, split: str) -> str:
    """The litdata folder of one split (checked for unsafe formats when local)."""
    if "://" in str(folder):
        return f"{str(folder).rstrip('/')}/{split}"
    path = Path(folder) / split
    if not path.is_dir():
        raise DataError(f"{folder}: no {split!r} shards")
    _check_formats(path)
    return str(path)


def decode_item(raw: dict, key: str | None) -> tuple[dict, object]:
    """(entry, codes) of a token shard's item (``key`` None), (entry, media in memory) of a media one."""
    from mmtok.media import MediaBytes

    entry = json.loads(raw["entry"])
    if key is None:
        return entry, torch.from_numpy(np.asarray(raw["codes"])).long()
    entry[key] = raw["name"]
    return entry, MediaBytes(raw["name"], bytes(raw["media"]))


def streaming_dataset(folder: str | Path, split: str, *, key: str | None, make_item: Callable, train: bool,
                      seed: int):
    """litdata's StreamingDataset over one split of media shards (their manifest ``key``) or token
    shards (``key`` None), whose items ``make_item(entry, media_or_codes, rng)`` builds (rng: the item's
    own generator, drawn from ``(seed, epoch, item)``, in training; None otherwise); shuffled in training."""
    from mmtok.data.streaming import ShardItems

    return ShardItems(split_folder(folder, split), key=key, make_item=make_item, train=train, seed=seed)


def read_split(folder: str | Path, split: str, *, key: str | None, make_item: Callable,
               limit: int | None = None) -> list:
    """The items of one split in order (validation, test), at most ``limit``; none when a local shard
    folder has no such split."""
    if "://" not in str(folder) and not (Path(folder) / split).is_dir():
        return []
    dataset = streaming_dataset(folder, split, key=key, make_item=make_item, train=False, seed=0)
    return [dataset[index] for index in range(len(dataset) if limit is None else min(limit, len(dataset)))]


def streaming_loader(dataset, *, batch_size: int, collate_fn=None, num_workers: int = 0):
    """litdata's StreamingDataLoader (equal batches on every rank, checkpointed by Lightning), going on
    with an epoch that Lightning left early (:class:`mmtok.data.streaming.ContinuingLoader`)."""
    from mmtok.data.streaming import ContinuingLoader

    return ContinuingLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers)
