"""The released X-Codec TTS: a small Hub folder that names its tokenizer and speaks until its end token."""

from __future__ import annotations

import torch

from conftest import REPO, released_generator_config
from mmtok.ar.model import ARGenerator
from mmtok.data.manifest import read_manifest
from mmtok.hub import load_pretrained
from mmtok.tasks.tts import synthesize

TTS = REPO / "checkpoints" / "tts-ar-xcodec"


def test_the_tts_release_is_small_and_names_its_tokenizer():
    assert released_generator_config(TTS)["positions"] == "aligned"


def test_the_tts_release_speaks_corpus_sentences_and_stops_by_itself(tiny_corpus):
    model = load_pretrained(TTS)
    assert isinstance(model, ARGenerator)
    tokenizer = model.load_tokenizer(near=TTS)
    entries = read_manifest(tiny_corpus / "manifest.jsonl", key="audio")[:3]
    audio, tokens = synthesize(model, tokenizer, [e["phonemes"] for e in entries],
                               speakers=[e["speaker"] for e in entries], max_seconds=12.0, top_k=50,
                               rng=torch.Generator().manual_seed(0))
    assert (tokens.lengths < 600).all(), "every utterance ended with the end token before the limit"
    for wave, entry in zip(audio, entries):
        ratio = wave.shape[-1] / 16000 / entry["duration"]
        assert 0.5 < ratio < 2.0, f"generated {wave.shape[-1] / 16000:.2f} s for a {entry['duration']:.2f} s sentence"
        assert wave.abs().max() > 0.05, "not silence"
