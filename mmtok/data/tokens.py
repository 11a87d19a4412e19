"""A corpus tokenized once and cached on disk, and the datasets generators train on.

``mmtok tokenize MODEL MANIFEST OUT`` runs a tokenizer over every item of a manifest and writes::

    OUT/tokens.safetensors   codes int32 [Q, total frames] (all items end to end) and offsets [N + 1]
    OUT/manifest.jsonl       the source manifest's entries (text, phonemes, speaker, split ...) in order
    OUT/info.json            tokenizer id, codebook sizes, frame and sample rate, source manifest, count

so a generator's training never re-runs the codec. Everything is read without pickle.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmtok.data.audio import load_audio, read_manifest

TOKENS_NAME, INFO_NAME, MANIFEST_NAME = "tokens.safetensors", "info.json", "manifest.jsonl"


def _manifest_path(source: str | Path) -> Path:
    path = Path(source)
    return path / MANIFEST_NAME if path.is_dir() else path


@torch.no_grad()
def tokenize_corpus(tokenizer: str, manifest: str | Path, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Encode every audio item of ``manifest`` (a file or a corpus folder) with the tokenizer Hub folder
    ``tokenizer``, one whole item at a time; returns ``out_dir``. A folder that already holds the same
    tokenizer's tokens of the same manifest is returned untouched."""
    from mmtok.hub import load_pretrained

    manifest, out_dir = _manifest_path(manifest), Path(out_dir)
    entries = read_manifest(manifest)
    info_path = out_dir / INFO_NAME
    key = {"tokenizer": str(tokenizer), "manifest": str(manifest.resolve()), "count": len(entries)}
    if info_path.is_file() and (out_dir / TOKENS_NAME).is_file():
        info = json.loads(info_path.read_text())
        if all(info.get(k) == v for k, v in key.items()):
            return out_dir
    model = load_pretrained(tokenizer).eval()
    pieces, offsets = [], [0]
    for entry in tqdm(entries, desc=f"tokenize {manifest.parent.name}", unit="item", disable=not progress):
        audio = load_audio(entry["audio"], sample_rate=model.sample_rate)[None]
        codes = model.encode(audio).codes[0]
        pieces.append(codes.to(torch.int32))
        offsets.append(offsets[-1] + codes.shape[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"codes": torch.cat(pieces, dim=1).contiguous(), "offsets": torch.tensor(offsets)},
              str(out_dir / TOKENS_NAME))
    (out_dir / MANIFEST_NAME).write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    info = {**key, "codebook_sizes": list(model.codebook_sizes), "frame_rate": model.frame_rate,
            "sample_rate": model.sample_rate}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


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
        self.entries = [json.loads(line) for line in (self.folder / MANIFEST_NAME).read_text().splitlines()
                        if line.strip()]
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
        self.prompt_frames = None if not prompt_seconds else round(prompt_seconds * corpus.info["frame_rate"])
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
        item = {"codes": codes, **{k: entry[k] for k in ("text", "phonemes", "speaker") if k in entry}}
        if self.prompt_frames:
            rng = random.Random() if self.train else random.Random(self.seed * 1_000_003 + index)
            item["prompt"] = self._prompt(index, rng)
        return item


def _pad(sequences: list[torch.Tensor]) -> dict:
    longest = max(s.shape[1] for s in sequences)
    codes = torch.zeros(len(sequences), sequences[0].shape[0], longest, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        codes[row, :, : sequence.shape[1]] = sequence
    return {"codes": codes, "lengths": torch.tensor([s.shape[1] for s in sequences])}


def collate_tokens(items: list[dict]) -> dict:
    """``codes`` [B, Q, T] zero-padded + ``lengths`` [B]; ``prompt`` likewise as a dict; text fields as lists."""
    batch = _pad([item["codes"] for item in items])
    if all("prompt" in item for item in items):
        batch["prompt"] = _pad([item["prompt"] for item in items])
    for key in ("text", "phonemes", "speaker"):
        if all(key in item for item in items):
            batch[key] = [item[key] for item in items]
    return batch


class TokenDataModule(L.LightningDataModule):
    """Batches of cached tokens with their conditions (phonemes, speaker, voice prompt).

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
