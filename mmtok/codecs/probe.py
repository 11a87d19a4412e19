"""How much phonetic information a codec's first codebook carries: a linear CTC probe on its codes.

The X-Codec claim (Ye et al. 2024) is that fusing semantic features before the RVQ puts phonetic
content into the first quantizers, which is what a language model over the tokens needs. The probe
measures that directly: every frame's first-codebook code is replaced by its frozen codeword
(the embedding the decoder sums), a single linear layer maps it to phoneme logits (plus the CTC
blank), it is trained with CTC on the train split, and greedy CTC decoding gives a phoneme error
rate on the test split. Lower PER = more phonetic information in the first codebook alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmtok.asr import BLANK, phoneme_inventory
from mmtok.data.audio import AudioDataModule
from mmtok.metrics import error_rate


@torch.no_grad()
def first_codebook_embeddings(codec, audio: torch.Tensor, lengths: torch.Tensor | None = None):
    """(codewords of the first codebook [B, T, D], frame lengths [B]) for an RVQ-based codec; frames past
    an item's length (code -1) get codeword 0 and are meant to be cut off with the lengths."""
    tokens = codec.encode(audio, lengths, num_quantizers=1)
    codes = tokens.codes[:, 0]
    frames = tokens.lengths if tokens.lengths is not None else torch.full((codes.shape[0],), codes.shape[1])
    return codec.quantizer.codebooks[0][codes.clamp(min=0)], frames


@torch.no_grad()
def _collect(features_of, sample_rate: int, data: str | Path, split: str, max_items: int | None,
             index: dict[str, int], batch_size: int):
    """[(features [T, D], phoneme ids [L])] for whole utterances of ``split``."""
    module = AudioDataModule(path=str(data), sample_rate=sample_rate, crop_seconds=None,
                             batch_size=batch_size, valid_batch_size=batch_size, num_workers=0)
    module.setup("fit" if split == "train" else "test")
    loader = module.train_dataloader() if split == "train" else module.test_dataloader()
    items = []
    for batch in tqdm(loader, desc=f"probe features ({split})", unit="batch"):
        if batch is None:
            continue
        if "phonemes" not in batch:
            raise ValueError(f"{data}: the {split} split has no 'phonemes' for the probe")
        features, frames = features_of(batch["audio"], batch["lengths"])
        for vectors, length, phonemes in zip(features, frames, batch["phonemes"]):
            ids = torch.tensor([index[p] for p in phonemes.split()], dtype=torch.long)
            items.append((vectors[: int(length)].float(), ids))
        if max_items is not None and len(items) >= max_items:
            return items[:max_items]
    return items


def _pad(items: list[tuple[torch.Tensor, torch.Tensor]]):
    features = nn.utils.rnn.pad_sequence([f for f, _ in items], batch_first=True)
    frames = torch.tensor([len(f) for f, _ in items])
    return features, frames


def train_ctc_probe(items: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int, *, epochs: int = 40,
                    batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """A linear layer (on standardised features) trained with CTC; ``num_classes`` includes the blank."""
    generator = torch.Generator().manual_seed(seed)
    stacked = torch.cat([f for f, _ in items])
    mean, std = stacked.mean(0), stacked.std(0).clamp(min=1e-5)
    probe = nn.Sequential(_Standardise(mean, std), nn.Linear(stacked.shape[1], num_classes))
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(items), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            chunk = [items[i] for i in order[start:start + batch_size]]
            features, frames = _pad(chunk)
            targets = [ids for _, ids in chunk]
            log_probs = probe(features).log_softmax(-1).transpose(0, 1)
            loss = F.ctc_loss(log_probs, torch.cat(targets), frames, torch.tensor([len(t) for t in targets]),
                              blank=BLANK, zero_infinity=True)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe.eval()


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@torch.no_grad()
def probe_error_rate(probe: nn.Module, items: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """PER of greedy CTC decoding (repeats merged, blanks dropped) against the reference ids."""
    references, hypotheses = [], []
    for features, ids in items:
        best = torch.unique_consecutive(probe(features).argmax(-1))
        hypotheses.append([i for i in best.tolist() if i != BLANK])
        references.append(ids.tolist())
    return error_rate(references, hypotheses)


def phoneme_probe(codec, data: str | Path, *, train_items: int | None = 1000, test_items: int | None = None,
                  epochs: int = 40, seed: int = 0, batch_size: int = 16, features=None) -> dict:
    """Train the linear CTC probe on ``train_items`` utterances of the train split, score the test split.
    ``features(audio, lengths) -> ([B, T, D], frame lengths [B])`` replaces the codec's first-codebook
    codewords (:func:`first_codebook_embeddings`), e.g. to probe a layer of a speech model."""
    symbols = phoneme_inventory(data)
    index = {p: i + 1 for i, p in enumerate(symbols)}  # 0 is the CTC blank
    codec = codec.eval()
    if features is None:
        def features(audio, lengths):
            return first_codebook_embeddings(codec, audio, lengths)

    torch.manual_seed(seed)  # the order of the shuffled train split, so the same utterances are probed
    train = _collect(features, codec.sample_rate, data, "train", train_items, index, batch_size)
    test = _collect(features, codec.sample_rate, data, "test", test_items, index, batch_size)
    if not train or not test:
        raise ValueError(f"{data}: the probe needs utterances in both the train and the test split")
    probe = train_ctc_probe(train, len(symbols) + 1, epochs=epochs, seed=seed)
    return {"probe_per": probe_error_rate(probe, test), "train_per": probe_error_rate(probe, train),
            "train_utterances": len(train), "test_utterances": len(test)}
