"""The linear CTC probe that measures how much phonetic information the first codebook carries."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mmtok.codecs.probe import first_codebook_embeddings, phoneme_probe, probe_error_rate, train_ctc_probe
from mmtok.codecs.rvq import RVQCodec


def _utterances(count: int, *, informative: bool, generator: torch.Generator):
    """Phoneme ids 1..5, each held for 3 frames; features are the one-hot ids (or pure noise)."""
    items = []
    for _ in range(count):
        ids = torch.randint(1, 6, (6,), generator=generator)
        ids = ids[torch.cat([torch.tensor([True]), ids[1:] != ids[:-1]])]  # no repeats: CTC needs no blank between
        frames = ids.repeat_interleave(3)
        features = F.one_hot(frames, 8).float() if informative else torch.randn(len(frames), 8, generator=generator)
        items.append((features + 0.05 * torch.randn(len(frames), 8, generator=generator), ids))
    return items


@pytest.mark.parametrize("informative", [True, False])
def test_probe_reads_phonemes_only_from_informative_features(informative):
    generator = torch.Generator().manual_seed(0)
    train = _utterances(200, informative=informative, generator=generator)
    test = _utterances(50, informative=informative, generator=generator)
    probe = train_ctc_probe(train, num_classes=6, epochs=20, lr=0.03)
    per = probe_error_rate(probe, test)
    assert (per < 0.05) if informative else (per > 0.5), per


def test_first_codebook_embeddings_are_the_one_codebook_dequantization():
    torch.manual_seed(0)
    codec = RVQCodec(encoder_channels=4, decoder_channels=32, latent_dim=16, num_quantizers=4, codebook_size=32,
                     kmeans_init=False).eval()
    audio = torch.randn(2, 1, 2000) * 0.1
    lengths = torch.tensor([2000, 1000])
    vectors, frames = first_codebook_embeddings(codec, audio, lengths)
    assert frames.tolist() == [7, 4]
    codes = codec.encode(audio, lengths).codes[:, :1]
    expected = codec.dequantize(codes).transpose(1, 2)
    torch.testing.assert_close(vectors[0], expected[0])
    torch.testing.assert_close(vectors[1, :4], expected[1, :4])  # past its length an item has no code


def test_phoneme_probe_runs_on_a_corpus(tiny_corpus):
    torch.manual_seed(0)
    codec = RVQCodec(encoder_channels=4, decoder_channels=32, latent_dim=16, num_quantizers=2, codebook_size=32,
                     kmeans_init=False)
    result = phoneme_probe(codec, tiny_corpus, train_items=8, epochs=2)
    test_items = sum(1 for line in (tiny_corpus / "manifest.jsonl").read_text().splitlines()
                     if json.loads(line)["split"] == "test")
    assert result["train_utterances"] == 8 and result["test_utterances"] == test_items
    assert math.isfinite(result["train_per"]) and math.isfinite(result["probe_per"])
