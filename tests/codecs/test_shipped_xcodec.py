"""The released X-Codec and phoneme recognizer: self-contained Hub folders that work on real speech."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from mmtok.codecs.xcodec import XCodec
from mmtok.data.audio import load_audio
from mmtok.data.manifest import read_manifest
from mmtok.hub import load_pretrained
from mmtok.metrics import error_rate

XCODEC = REPO / "checkpoints" / "xcodec-speech-16k"
RECOGNIZER = REPO / "checkpoints" / "phoneme-recognizer"


@pytest.fixture(scope="module")
def utterances(tiny_corpus):
    entries = read_manifest(tiny_corpus / "manifest.jsonl", key="audio")[:12]
    return [(load_audio(e["audio"], sample_rate=16000)[None], e["phonemes"].split()) for e in entries]


def test_the_xcodec_release_is_self_contained_and_small():
    assert {p.name for p in XCODEC.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (XCODEC / "model.safetensors").stat().st_size <= 20 * 2**20
    config = json.loads((XCODEC / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.codecs.xcodec.XCodec"
    assert config["teacher"]["type"] == "recognizer" and "path" not in config["teacher"]
    stored = load_file(str(XCODEC / "model.safetensors"))
    assert any(name.startswith("teacher.") for name in stored), "the teacher's weights travel with the codec"
    card = (XCODEC / "README.md").read_text()
    assert "## Comparison (bench/codec_quality.py)" in card and "| xcodec | 8 | 4 |" in card


def test_the_recognizer_transcribes_corpus_speech(utterances):
    recognizer = load_pretrained(RECOGNIZER)
    hypotheses = [recognizer.transcribe(audio)[0].split() for audio, _ in utterances]
    assert error_rate([ref for _, ref in utterances], hypotheses) < 0.1


def test_xcodec_tokens_stay_intelligible_and_improve_with_quantizers(utterances):
    codec, judge = load_pretrained(XCODEC), load_pretrained(RECOGNIZER)
    assert isinstance(codec, XCodec) and codec.codebook_sizes == [1024] * 8
    references, decoded = [ref for _, ref in utterances], {1: [], 8: []}
    for audio, _ in utterances:
        tokens = codec.encode(audio)
        for n in decoded:
            reconstruction = codec.decode(tokens, num_quantizers=n)
            assert reconstruction.shape == audio.shape and torch.isfinite(reconstruction).all()
            decoded[n].append(judge.transcribe(reconstruction)[0].split())
    per = {n: error_rate(references, hypotheses) for n, hypotheses in decoded.items()}
    assert per[8] < per[1] and per[8] < 0.2, per
