"""A corpus tokenized once and cached on disk, and the datasets generators train on.

``mmtok tokenize MODEL MANIFEST OUT`` runs a tokenizer over every item of a manifest (audio, images
or video, whichever the tokenizer reads; a video is cut to the most frames the tokenizer encodes,
1 + k · pt for C-ViViT, and its entry's ``num_frames`` says how many) and writes::

    OUT/tokens.safetensors   codes int32 [Q, total steps] (all items end to end) and offsets [N + 1]
    OUT/manifest.jsonl       the source manifest's entries (conditions: text, phonemes, speaker, label,
                             split ...) in order
    OUT/info.json            tokenizer id, codebook sizes, modality, frame and sample rate or grid,
                             source manifest, count

so a generator's training never re-runs the tokenizer. Everything is read without pickle.

``mmtok tokenize ... --align RECOGNIZER`` also force-aligns every utterance's phonemes with a CTC
phoneme recognizer (:mod:`mmtok.alignment`): each entry gets ``durations``, its phonemes' frame
counts (summing to its frame count, checked when written and when read), and info.json an
``alignment`` section (aligned, exact, frames_per_phoneme, and the bad alignments left out, each
with its reason).
"""

from __future__ import annotations

import functools
import json
import random
import sys
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmtok.data.loading import random_states_kept, split_key, training_loader, unseeded_rng
from mmtok.data.manifest import manifest_path, read_manifest
from mmtok.data.media_files import MEDIA_KEYS, read_media
from mmtok.data.shards import is_shards, read_shards_info, read_split, streaming_dataset, streaming_loader
from mmtok.errors import DataError
from mmtok.tokens import layout_cells

TOKENS_NAME, INFO_NAME, MANIFEST_NAME = "tokens.safetensors", "info.json", "manifest.jsonl"
CONDITION_FIELDS = ("text", "phonemes", "durations", "speaker", "label")  # carried from the manifest to batches


@torch.no_grad()
def tokenize_corpus(tokenizer: str, manifest: str | Path, out_dir: str | Path, *, aligner: str | None = None,
                    progress: bool = True, batch_size: int = 64) -> Path:
    """Encode every item of ``manifest`` (a file or a corpus folder) with the tokenizer Hub folder
    ``tokenizer`` (audio one whole item at a time; images ``batch_size`` at a time); returns ``out_dir``.
    A folder that already holds the same tokenizer's tokens (the same weights) of the same manifest,
    aligned by the same aligner, is returned untouched.

    ``aligner`` (a phoneme recognizer Hub folder, :class:`mmtok.alignment.PhonemeAligner`) also gives
    every utterance ``durations``: its phonemes' frame counts, which sum to its frame count. A bad
    alignment (see :mod:`mmtok.alignment`) is left out of the cache, listed on stderr and in
    info.json's ``alignment`` section, and counted."""
    from mmtok.hub import load_pretrained, weights_digest

    manifest, out_dir = manifest_path(manifest), Path(out_dir)
    key = {"tokenizer": str(tokenizer), "tokenizer_weights": weights_digest(tokenizer),
           "manifest": str(manifest.resolve()), "aligner": None if aligner is None else str(aligner),
           "aligner_weights": None if aligner is None else weights_digest(aligner)}
    info_path = out_dir / INFO_NAME
    if info_path.is_file() and (out_dir / TOKENS_NAME).is_file():
        info = json.loads(info_path.read_text())
        if all(info.get(k) == v for k, v in key.items()):  # a cache from before "aligner" existed has none
            entries = read_manifest(manifest, key=MEDIA_KEYS.get(info.get("modality", "audio")))
            if info.get("count") == len(entries):
                unread = info.get("count") - info.get("written", len(entries)) - _bad_count(info)
                if unread:
                    print(f"tokenize: the cache in {out_dir} holds {info['written']} of the {len(entries)} items "
                          f"({unread} could not be read)", file=sys.stderr)
                if _bad_count(info):
                    print(f"tokenize: the cache in {out_dir} leaves out {_bad_count(info)} bad alignment(s) "
                          f"(listed in {info_path})", file=sys.stderr)
                return out_dir
    model = load_pretrained(tokenizer).eval()
    if model.modality not in MEDIA_KEYS:
        raise DataError(f"{tokenizer}: reads {model.modality!r} media, which the token cache does not hold")
    align = None
    if aligner is not None:
        from mmtok.alignment import PhonemeAligner

        if model.modality != "audio" or model.frame_rate is None:
            raise DataError(f"{tokenizer}: an aligner gives frames per phoneme of audio, this tokenizer reads "
                            f"{model.modality!r}")
        align = PhonemeAligner.from_pretrained(aligner)
    media_key = MEDIA_KEYS[model.modality]
    entries = read_manifest(manifest, key=media_key)
    fixed_shape = model.grid is not None and model.grid[0] is not None  # images: batched; audio, video: one by one
    step = batch_size if fixed_shape else 1
    items, failures, waves = [], [], []  # items: [entry, codes [Q, T]]; waves: audio awaiting alignment
    alignments = []
    with tqdm(total=len(entries), desc=f"tokenize {manifest.parent.name}", unit="item", disable=not progress) as bar:
        for start in range(0, len(entries), step):
            chunk, media = [], []
            for entry in entries[start:start + step]:
                try:
                    media.append(read_media(entry[media_key], model, crop_frames=True))
                    chunk.append({**entry, "num_frames": media[-1].shape[2]} if media_key == "video" else entry)
                except (DataError, OSError, ValueError) as error:  # goes on past a bad file
                    failures.append((entry[media_key], " ".join(str(error).split())))
            if chunk:
                for entry, codes in zip(chunk, model.encode(torch.cat(media)).codes):  # [Q, T] per item
                    items.append([entry, codes.to(torch.int32)])
                waves += media if align is not None else []
            if align is not None and (len(waves) >= align.batch_size or start + step >= len(entries)):
                alignments += _align(align, items[len(alignments):], waves, sample_rate=model.sample_rate)
                waves = []
            bar.update(step)
    if not items:
        raise DataError(f"{manifest}: none of its {len(entries)} items could be read")
    extra = {}
    if align is not None:
        items, extra["alignment"] = _keep_aligned(items, alignments, media_key, aligner=str(aligner))
        if not items:
            raise DataError(f"{manifest}: none of its utterances aligned with {aligner} (listed above): is it the "
                            "recognizer of this corpus' phonemes?")
    _write_cache(out_dir, items, {**key, "count": len(entries), "written": len(items), **extra}, model)
    if failures:
        for path, reason in failures:
            print(f"  failed: {reason if reason.startswith(str(path)) else f'{path}: {reason}'}", file=sys.stderr)
        raise DataError(f"{len(failures)} of {len(entries)} item(s) of {manifest} could not be read (listed above); "
                        f"the cache in {out_dir} holds the other {len(items)}")
    return out_dir


def _bad_count(info: dict) -> int:
    return len(info.get("alignment", {}).get("bad", []))


def _align(align, items: list, waves: list[torch.Tensor], *, sample_rate: int) -> list:
    """Alignments of the newest ``items`` (their waveforms ``[1, 1, N]`` at ``sample_rate``)."""
    import torchaudio

    audio = [torchaudio.functional.resample(w[0], sample_rate, align.sample_rate) if sample_rate != align.sample_rate
             else w[0] for w in waves]
    return align.align(audio, [entry.get("phonemes", "") for entry, _ in items], [c.shape[1] for _, c in items])


def _keep_aligned(items: list, alignments: list, media_key: str, *, aligner: str) -> tuple[list, dict]:
    """(the items that aligned, each entry with its ``durations``; the alignment report of info.json),
    with the bad alignments listed on stderr."""
    kept, bad = [], []
    for (entry, codes), alignment in zip(items, alignments, strict=True):
        if alignment.ok:
            kept.append([{**entry, "durations": alignment.durations}, codes])
        else:
            bad.append({media_key: entry[media_key], "reason": alignment.reason})
            print(f"  bad alignment: {entry[media_key]}: {alignment.reason}", file=sys.stderr)
    good = [a for a in alignments if a.ok]
    phonemes = sum(len(a.durations) for a in good)
    report = {"aligner": aligner, "aligned": len(good), "exact": sum(a.shift == 0 for a in good),
              "frames_per_phoneme": sum(sum(a.durations) for a in good) / phonemes if phonemes else None,
              "bad": bad}
    shift = max((abs(a.shift) for a in good), default=0)
    others = f", the others reconciled within {shift} frame(s)" if report["exact"] < len(good) else ""
    print(f"tokenize: aligned {len(good)} of {len(alignments)} utterances ({report['exact']} with the recognizer's "
          f"frame count{others}), {len(bad)} bad alignment(s) left out", file=sys.stderr)
    return kept, report


def _write_cache(out_dir: Path, items: list, key: dict, model) -> None:
    """The three files of a token cache from ``items`` ([entry, codes [Q, T]] each), each written
    atomically, info.json (the cache key) last."""
    from mmtok.files import atomic_path, write_text_atomic

    offsets = [0]
    for entry, codes in items:
        offsets.append(offsets[-1] + codes.shape[1])
        _check_durations(entry, codes.shape[1], source="tokenize")
    with atomic_path(out_dir / TOKENS_NAME) as temporary:
        save_file({"codes": torch.cat([codes for _, codes in items], dim=1).contiguous(),
                   "offsets": torch.tensor(offsets)}, str(temporary))
    write_text_atomic(out_dir / MANIFEST_NAME, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e, _ in items))
    info = {**key, "codebook_sizes": list(model.codebook_sizes), "modality": model.modality,
            "frame_rate": model.frame_rate, "sample_rate": model.sample_rate,
            "grid": None if model.grid is None else list(model.grid)}
    write_text_atomic(out_dir / INFO_NAME, json.dumps(info, indent=2, ensure_ascii=False) + "\n")


def _check_durations(entry: dict, frames: int, *, source: str) -> None:
    """An entry's ``durations`` (if any): one per phoneme, at least one frame each, summing to ``frames``."""
    durations = entry.get("durations")
    if durations is None:
        return
    phonemes = len(entry.get("phonemes", "").split())
    if len(durations) != phonemes or sum(durations) != frames or min(durations, default=0) < 1:
        raise DataError(f"{source}: {entry.get('audio', entry)}: durations {durations} must be {phonemes} counts of "
                        f"at least one frame (one per phoneme) summing to its {frames} frames")


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
        for index, entry in enumerate(self.entries):
            _check_durations(entry, int(self._offsets[index + 1] - self._offsets[index]),
                             source=str(self.folder / MANIFEST_NAME))

    def __len__(self) -> int:
        return len(self.entries)

    def codes(self, index: int) -> torch.Tensor:
        return self._codes[:, self._offsets[index]: self._offsets[index + 1]].long()


class TokenDataset(Dataset):
    """Items of one split of a :class:`TokenCorpus`: ``codes`` [Q, T] plus the entry's text fields.
    In training, an entry with several ``captions`` (the moving-digits phrasings) gives one of them
    at random as its ``text``; evaluation keeps the entry's own ``text``. ``max_frames`` crops the
    steps (on an open grid, (None, h, w), a multiple of h · w: whole frame groups).

    With ``prompt_seconds``, each item also gets ``prompt``: codes of up to that many seconds from
    *another* utterance of the same speaker (VALL-E's acoustic prompt). Training draws the utterance
    and the crop at random; evaluation fixes them per item, so validation is repeatable.

    With ``crops_per_item`` (training only), each item also gets ``crops``: that many items drawn at
    random from the split, each cut to its first ``crop_frames`` steps, with its own condition fields.
    On video tokens with ``crop_frames`` one frame group, the crops are first frames, images with their
    captions: Phenaki's joint training on images and videos (Villegas et al. 2022, sec. 3.2), in every
    batch rather than in phases, and at a fraction of a video's cost.
    """

    def __init__(self, corpus: TokenCorpus, indices: list[int], *, train: bool, prompt_seconds: float | None = None,
                 max_frames: int | None = None, crops_per_item: int = 0, crop_frames: int | None = None,
                 seed: int = 0):
        self.corpus, self.indices, self.train = corpus, indices, train
        self.max_frames, self.seed = max_frames, seed
        self.crops_per_item, self.crop_frames = (crops_per_item, crop_frames) if train else (0, None)
        if prompt_seconds and not corpus.info.get("frame_rate"):
            raise ValueError(f"{corpus.folder}: prompt_seconds needs tokens on a time axis (a frame rate)")
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

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        position, rng = split_key(key)
        index = self.indices[position]
        rng = random.Random(self.seed * 1_000_003 + index) if not self.train else rng or unseeded_rng()
        item = token_item(self.corpus.entries[index], self.corpus.codes(index), max_frames=self.max_frames,
                          train=self.train, rng=rng)
        if self.prompt_frames:
            item["prompt"] = self._prompt(index, rng)
        if self.crops_per_item:
            item["crops"] = [token_item(self.corpus.entries[i], self.corpus.codes(i), max_frames=self.crop_frames,
                                        train=True, rng=rng)
                             for i in (rng.choice(self.indices) for _ in range(self.crops_per_item))]
        return item


def token_item(entry: dict, codes: torch.Tensor, *, max_frames: int | None, train: bool, rng: random.Random) -> dict:
    """A token item: ``codes`` [Q, T] (the first ``max_frames`` steps) and the entry's condition fields; in
    training, an entry with several ``captions`` gives one of them, drawn from ``rng``, as its ``text``
    (evaluation keeps the entry's own). The same for a cache and for its shards."""
    if max_frames is not None:
        codes = codes[:, : max_frames]
    item = {"codes": codes, **{k: entry[k] for k in CONDITION_FIELDS if k in entry}}
    if train and len(entry.get("captions", ())) > 1:  # every phrasing of the clip's caption in turn
        item["text"] = rng.choice(entry["captions"])
    if "durations" in item and codes.shape[1] < sum(item["durations"]):  # cropped: so are its phonemes
        item["phonemes"], item["durations"] = crop_durations(item["phonemes"], item["durations"], codes.shape[1])
    return item


def _shard_item(entry: dict, codes: torch.Tensor, rng: random.Random | None, *, max_frames: int | None,
                train: bool) -> dict:
    rng = rng or (unseeded_rng() if train else random.Random(0))  # evaluation draws nothing
    return token_item(entry, codes, max_frames=max_frames, train=train, rng=rng)


def crop_durations(phonemes: str, durations: list[int], frames: int) -> tuple[str, list[int]]:
    """The phonemes spoken in the first ``frames`` frames and their durations there (the last one cut)."""
    kept, total = [], 0
    for duration in durations:
        if total >= frames:
            break
        kept.append(min(duration, frames - total))
        total += kept[-1]
    return " ".join(phonemes.split()[: len(kept)]), kept


def _pad(sequences: list[torch.Tensor]) -> dict:
    longest = max(s.shape[1] for s in sequences)
    codes = torch.zeros(len(sequences), sequences[0].shape[0], longest, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        codes[row, :, : sequence.shape[1]] = sequence
    return {"codes": codes, "lengths": torch.tensor([s.shape[1] for s in sequences])}


def collate_tokens(items: list[dict]) -> dict:
    """``codes`` [B, Q, T] zero-padded + ``lengths`` [B]; ``prompt`` likewise as a dict; the condition
    fields (text, phonemes, durations, speaker, label) as lists (each only when every item has it);
    ``crops``, every item's crops in order, as a batch of their own."""
    batch = _pad([item["codes"] for item in items])
    if all("prompt" in item for item in items):
        batch["prompt"] = _pad([item["prompt"] for item in items])
    if items and all("crops" in item for item in items):
        batch["crops"] = collate_tokens([crop for item in items for crop in item["crops"]])
    for key in CONDITION_FIELDS:
        if all(key in item for item in items):
            batch[key] = [item[key] for item in items]
    return batch


class TokenDataModule(L.LightningDataModule):
    """Batches of cached tokens with their conditions (phonemes, speaker, voice prompt, caption, label).

    ``tokens`` is the cache folder, or its shards (``mmtok shard CACHE OUT``, :mod:`mmtok.data.shards`:
    the train split streamed, no voice prompts, which need other utterances at random). With
    ``tokenizer`` and ``data`` (a corpus folder or manifest) the cache is built there first when
    missing or stale (``prepare_data``), as ``mmtok tokenize`` would, aligned by ``aligner`` (a phoneme
    recognizer Hub folder) when it is given.

    ``crops_per_item`` adds to every training batch that many short items per item, cut to their first
    ``crop_frames`` steps, as ``batch["crops"]`` (:class:`TokenDataset`; on video tokens with one frame
    group's steps, Phenaki's joint image-video training). A generator's training module adds their loss.
    """

    def __init__(self, *, tokens: str, tokenizer: str | None = None, data: str | None = None,
                 aligner: str | None = None, batch_size: int = 16, valid_batch_size: int = 16, num_workers: int = 0,
                 prompt_seconds: float | None = None, max_frames: int | None = None, crops_per_item: int = 0,
                 crop_frames: int | None = None, max_valid_items: int | None = None, seed: int = 0):
        super().__init__()
        if (tokenizer is None) != (data is None):
            raise ValueError("TokenDataModule: give both `tokenizer` and `data` to build the cache, or neither")
        if aligner is not None and tokenizer is None:
            raise ValueError("TokenDataModule: `aligner` aligns the cache it builds: give `tokenizer` and `data` too")
        if is_shards(tokens) and (tokenizer is not None or prompt_seconds or crops_per_item):
            raise ValueError(f"TokenDataModule: {tokens} holds shards: they are written from a finished cache (no "
                             f"`tokenizer`/`data`) and give no voice prompts and no crops of other items (no "
                             f"`prompt_seconds`, no `crops_per_item`)")
        if crops_per_item < 0 or (crops_per_item > 0) != (crop_frames is not None):
            raise ValueError(f"TokenDataModule: crops_per_item {crops_per_item}, crop_frames {crop_frames}: give "
                             "both (a count of at least one and the steps of each crop) or neither")
        self.save_hyperparameters()
        self.corpus: TokenCorpus | None = None
        self.datasets: dict = {}

    def prepare_data(self) -> None:
        if self.hparams.tokenizer is not None:
            with random_states_kept():
                tokenize_corpus(self.hparams.tokenizer, self.hparams.data, self.hparams.tokens,
                                aligner=self.hparams.aligner)

    def _check_max_frames(self, info: dict) -> None:
        grid = info.get("grid")
        for name in ("max_frames", "crop_frames"):
            frames = self.hparams[name]
            if frames is not None and grid and grid[0] is None and frames % layout_cells(grid):
                raise ValueError(f"{name} {frames}: {self.hparams.tokens} holds frame groups of "
                                 f"{layout_cells(grid)} steps (grid {grid}), so {name} must be a multiple of "
                                 f"{layout_cells(grid)}")

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        if is_shards(hp.tokens):
            self._setup_shards()
            return
        self.corpus = TokenCorpus(hp.tokens)
        self._check_max_frames(self.corpus.info)
        splits: dict[str, list[int]] = {}
        for index, entry in enumerate(self.corpus.entries):
            splits.setdefault(entry.get("split", "train"), []).append(index)
        if not splits.get("train"):
            raise ValueError(f"{hp.tokens}: no 'train' items in the token cache's manifest")
        options = dict(prompt_seconds=hp.prompt_seconds, max_frames=hp.max_frames, seed=hp.seed)
        crops = dict(crops_per_item=hp.crops_per_item, crop_frames=hp.crop_frames)
        self.datasets = {"train": TokenDataset(self.corpus, splits["train"], train=True, **crops, **options)}
        for split in ("valid", "test"):
            indices = splits.get(split, [])[: hp.max_valid_items]
            self.datasets[split] = TokenDataset(self.corpus, indices, train=False, **options)

    def _setup_shards(self) -> None:
        hp = self.hparams
        self._check_max_frames(read_shards_info(hp.tokens).get("info") or {})
        self.datasets = {"train": streaming_dataset(hp.tokens, "train", key=None, train=True, seed=hp.seed,
                                                    make_item=functools.partial(_shard_item, max_frames=hp.max_frames,
                                                                                train=True))}
        for split in ("valid", "test"):
            self.datasets[split] = read_split(hp.tokens, split, key=None, limit=hp.max_valid_items,
                                              make_item=functools.partial(_shard_item, max_frames=hp.max_frames,
                                                                          train=False))

    def batch_measures(self, batch: dict) -> dict[str, float]:
        """Sequences and tokens (valid steps times codebooks, padding left out), crops included."""
        measures = {"samples": len(batch["lengths"]), "tokens": float(batch["lengths"].sum()) * batch["codes"].shape[1]}
        crops = self.batch_measures(batch["crops"]) if "crops" in batch else {}
        return {key: value + crops.get(key, 0) for key, value in measures.items()}

    def train_dataloader(self) -> DataLoader:
        """Shuffled, resumable mid-epoch and sharded over processes (:mod:`mmtok.data.loading`); from
        shards, litdata's StreamingDataLoader (:func:`mmtok.data.shards.streaming_loader`)."""
        if is_shards(self.hparams.tokens):
            return streaming_loader(self.datasets["train"], batch_size=self.hparams.batch_size,
                                    collate_fn=collate_tokens, num_workers=self.hparams.num_workers)
        return training_loader(self, self.datasets["train"], batch_size=self.hparams.batch_size,
                               seed=self.hparams.seed, drop_last=True, collate_fn=collate_tokens,
                               num_workers=self.hparams.num_workers)

    def _evaluation_loader(self, split: str) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.hparams.valid_batch_size, collate_fn=collate_tokens,
                          num_workers=self.hparams.num_workers,
                          generator=torch.Generator().manual_seed(self.hparams.seed))

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")
