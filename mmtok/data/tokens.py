"""A corpus tokenized once and cached on disk, and the datasets generators train on.

``mmtok tokenize MODEL MANIFEST OUT`` runs a tokenizer over every item of a manifest (audio or
images, whichever the tokenizer reads) and writes::

    OUT/tokens.safetensors   codes int32 [Q, total steps] (all items end to end) and offsets [N + 1]
    OUT/manifest.jsonl       the source manifest's entries (conditions: text, phonemes, speaker, label,
                             split ...) in order
    OUT/info.json            tokenizer id, codebook sizes, modality, frame and sample rate or grid,
                             source manifest, count

so a generator's training never re-runs the tokenizer. Everything is read without pickle.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmtok.data.manifest import manifest_path, read_manifest
from mmtok.data.media_files import MEDIA_KEYS, read_media
from mmtok.errors import DataError

TOKENS_NAME, INFO_NAME, MANIFEST_NAME = "tokens.safetensors", "info.json", "manifest.jsonl"
CONDITION_FIELDS = ("text", "phonemes", "speaker", "label")  # carried from the manifest to the batches


@torch.no_grad()
def tokenize_corpus(tokenizer: str, manifest: str | Path, out_dir: str | Path, *, progress: bool = True,
                    batch_size: int = 64) -> Path:
    """Encode every item of ``manifest`` (a file or a corpus folder) with the tokenizer Hub folder
    ``tokenizer`` (audio one whole item at a time; images ``batch_size`` at a time); returns ``out_dir``.
    A folder that already holds the same tokenizer's tokens (the same weights) of the same manifest is
    returned untouched."""
    from mmtok.hub import load_pretrained

    manifest, out_dir = manifest_path(manifest), Path(out_dir)
    key = {"tokenizer": str(tokenizer), "tokenizer_weights": _weights_digest(tokenizer),
           "manifest": str(manifest.resolve())}
    info_path = out_dir / INFO_NAME
    if info_path.is_file() and (out_dir / TOKENS_NAME).is_file():
        info = json.loads(info_path.read_text())
        if all(info.get(k) == v for k, v in key.items()):
            entries = read_manifest(manifest, key=MEDIA_KEYS.get(info.get("modality", "audio")))
            if info.get("count") == len(entries):
                if info.get("written", len(entries)) != len(entries):
                    print(f"tokenize: the cache in {out_dir} holds {info['written']} of the {len(entries)} items "
                          "(the others could not be read)", file=sys.stderr)
                return out_dir
    model = load_pretrained(tokenizer).eval()
    if model.modality not in MEDIA_KEYS:
        raise DataError(f"{tokenizer}: reads {model.modality!r} media, which the token cache does not hold")
    media_key = MEDIA_KEYS[model.modality]
    entries = read_manifest(manifest, key=media_key)
    step = 1 if model.modality == "audio" else batch_size
    pieces, offsets, kept, failures = [], [0], [], []
    with tqdm(total=len(entries), desc=f"tokenize {manifest.parent.name}", unit="item", disable=not progress) as bar:
        for start in range(0, len(entries), step):
            chunk, media = [], []
            for entry in entries[start:start + step]:
                try:
                    media.append(read_media(entry[media_key], model))
                    chunk.append(entry)
                except (DataError, OSError, ValueError) as error:  # goes on past a bad file
                    failures.append((entry[media_key], " ".join(str(error).split())))
            if chunk:
                for codes in model.encode(torch.cat(media)).codes:  # [Q, T] per item
                    pieces.append(codes.to(torch.int32))
                    offsets.append(offsets[-1] + codes.shape[1])
                kept += chunk
            bar.update(step)
    if not kept:
        raise DataError(f"{manifest}: none of its {len(entries)} items could be read")
    _write_cache(out_dir, pieces, offsets, kept, {**key, "count": len(entries), "written": len(kept)}, model)
    if failures:
        for path, reason in failures:
            print(f"  failed: {reason if reason.startswith(str(path)) else f'{path}: {reason}'}", file=sys.stderr)
        raise DataError(f"{len(failures)} of {len(entries)} item(s) of {manifest} could not be read (listed above); "
                        f"the cache in {out_dir} holds the other {len(kept)}")
    return out_dir


def _weights_digest(tokenizer: str) -> str | None:
    """SHA-256 of a local tokenizer folder's weights: a cache made by other weights under the same
    name is stale. None for a Hub repo id (its revision names its weights)."""
    import hashlib

    weights = Path(tokenizer) / "model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None


def _write_cache(out_dir: Path, pieces: list[torch.Tensor], offsets: list[int], entries: list[dict], key: dict,
                 model) -> None:
    """The three files of a token cache, each written atomically, info.json (the cache key) last."""
    from mmtok.files import atomic_path, write_text_atomic

    with atomic_path(out_dir / TOKENS_NAME) as temporary:
        save_file({"codes": torch.cat(pieces, dim=1).contiguous(), "offsets": torch.tensor(offsets)}, str(temporary))
    write_text_atomic(out_dir / MANIFEST_NAME, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    info = {**key, "codebook_sizes": list(model.codebook_sizes), "modality": model.modality,
            "frame_rate": model.frame_rate, "sample_rate": model.sample_rate,
            "grid": None if model.grid is None else list(model.grid)}
    write_text_atomic(out_dir / INFO_NAME, json.dumps(info, indent=2) + "\n")


class TokenCorpus:
    """A folder written by :func:`tokenize_corpus`: ``len``, ``codes(i)`` [Q, T_i], ``entries``, ``info``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        for name in (TOKENS_NAME, INFO_NAME, MANIFEST_NAME):
            if not (self.folder / name).is_file():
                raise FileNotFoundError(f"{self.folder}: no {name}; build the token cache with "
                                        f"`mmtok tokenize MODEL MANIFEST {self.folder}`")
        self.info = json.loads((self.folder / INFO_NAME).read_text())
        tensors = load_file(str(self.folder / TOKENS_NAME))
        self._codes, self._offsets = tensors["codes"], tensors["offsets"]
        self.entries = read_manifest(self.folder / MANIFEST_NAME)
        if len(self.entries) + 1 != len(self._offsets):
            raise ValueError(f"{self.folder}: {len(self.entries)} manifest entries for {len(self._offsets) - 1} "
                             "token sequences")

    def __len__(self) -> int:
        return len(self.entries)

    def codes(self, index: int) -> torch.Tensor:
        return self._codes[:, self._offsets[index]: self._offsets[index + 1]].long()


class TokenDataset(Dataset):
    """Items of one split of a :class:`TokenCorpus`: ``codes`` [Q, T] plus the entry's text fields.

    With ``prompt_seconds``, each item also gets ``prompt``: codes of up to that many seconds from
    *another* utterance of the same speaker (VALL-E's acoustic prompt). Training draws the utterance
    and the crop at random; evaluation fixes them per item, so validation is repeatable.
    """

    def __init__(self, corpus: TokenCorpus, indices: list[int], *, train: bool, prompt_seconds: float | None = None,
                 max_frames: int | None = None, seed: int = 0):
        self.corpus, self.indices, self.train = corpus, indices, train
        self.max_frames, self.seed = max_frames, seed
        if prompt_seconds and not corpus.info.get("frame_rate"):
            raise ValueError(f"{corpus.folder}: prompt_seconds needs tokens on a time axis (a frame rate)")
        self.prompt_frames = None if not prompt_seconds else round(prompt_seconds * corpus.info["frame_rate"])
        self._draws = 0
        self.by_speaker: dict[str, list[int]] = {}
        for index in indices:
            self.by_speaker.setdefault(str(corpus.entries[index].get("speaker")), []).append(index)

    def __len__(self) -> int:
        return len(self.indices)

    def _prompt(self, index: int, rng: random.Random) -> torch.Tensor:
        same = self.by_speaker[str(self.corpus.entries[index].get("speaker"))]
        others = [i for i in same if i != index] or same
        codes = self.corpus.codes(rng.choice(others))
        start = rng.randrange(max(1, codes.shape[1] - self.prompt_frames + 1))
        return codes[:, start: start + self.prompt_frames]

    def __getitem__(self, position: int) -> dict:
        index = self.indices[position]
        entry = self.corpus.entries[index]
        codes = self.corpus.codes(index)
        if self.max_frames is not None:
            codes = codes[:, : self.max_frames]
        item = {"codes": codes, **{k: entry[k] for k in CONDITION_FIELDS if k in entry}}
        if self.prompt_frames:
            item["prompt"] = self._prompt(index, self._prompt_rng(index))
        return item

    def _prompt_rng(self, index: int) -> random.Random:
        """Evaluation: one fixed draw per item. Training: a new draw each time, reproducible from the
        seed and torch's seed of this process (which Lightning's seed_everything and every DataLoader
        worker of every epoch set)."""
        if not self.train:
            return random.Random(self.seed * 1_000_003 + index)
        self._draws += 1
        return random.Random(hash((self.seed, torch.initial_seed(), index, self._draws)))


def _pad(sequences: list[torch.Tensor]) -> dict:
    longest = max(s.shape[1] for s in sequences)
    codes = torch.zeros(len(sequences), sequences[0].shape[0], longest, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        codes[row, :, : sequence.shape[1]] = sequence
    return {"codes": codes, "lengths": torch.tensor([s.shape[1] for s in sequences])}


def collate_tokens(items: list[dict]) -> dict:
    """``codes`` [B, Q, T] zero-padded + ``lengths`` [B]; ``prompt`` likewise as a dict; the condition
    fields (text, phonemes, speaker, label) as lists."""
    batch = _pad([item["codes"] for item in items])
    if all("prompt" in item for item in items):
        batch["prompt"] = _pad([item["prompt"] for item in items])
    for key in CONDITION_FIELDS:
        if all(key in item for item in items):
            batch[key] = [item[key] for item in items]
    return batch


class TokenDataModule(L.LightningDataModule):
    """Batches of cached tokens with their conditions (phonemes, speaker, voice prompt, caption, label).

    ``tokens`` is the cache folder. With ``tokenizer`` and ``data`` (a corpus folder or manifest) the
    cache is built there first when missing or stale (``prepare_data``), as ``mmtok tokenize`` would.
    """

    def __init__(self, *, tokens: str, tokenizer: str | None = None, data: str | None = None,
                 batch_size: int = 16, valid_batch_size: int = 16, num_workers: int = 0,
                 prompt_seconds: float | None = None, max_frames: int | None = None,
                 max_valid_items: int | None = None, seed: int = 0):
        super().__init__()
        if (tokenizer is None) != (data is None):
            raise ValueError("TokenDataModule: give both `tokenizer` and `data` to build the cache, or neither")
        self.save_hyperparameters()
        self.corpus: TokenCorpus | None = None

    def prepare_data(self) -> None:
        if self.hparams.tokenizer is not None:
            tokenize_corpus(self.hparams.tokenizer, self.hparams.data, self.hparams.tokens)

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        hp = self.hparams
        self.corpus = TokenCorpus(hp.tokens)
        splits: dict[str, list[int]] = {}
        for index, entry in enumerate(self.corpus.entries):
            splits.setdefault(entry.get("split", "train"), []).append(index)
        if not splits.get("train"):
            raise ValueError(f"{hp.tokens}: no 'train' items in the token cache's manifest")
        options = dict(prompt_seconds=hp.prompt_seconds, max_frames=hp.max_frames, seed=hp.seed)
        self.datasets = {"train": TokenDataset(self.corpus, splits["train"], train=True, **options)}
        for split in ("valid", "test"):
            indices = splits.get(split, [])[: hp.max_valid_items]
            self.datasets[split] = TokenDataset(self.corpus, indices, train=False, **options)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=shuffle, collate_fn=collate_tokens,
                          num_workers=self.hparams.num_workers, drop_last=shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.hparams.valid_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.valid_batch_size, False)
