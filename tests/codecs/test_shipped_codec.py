"""The released checkpoint in checkpoints/rvq-speech-16k: a real Hub folder that really codes speech."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from mmtok.data.audio import load_audio
from mmtok.data.manifest import read_manifest
from mmtok.hub import load_pretrained
from mmtok.metrics import codec_metrics

CHECKPOINT = REPO / "checkpoints" / "rvq-speech-16k"


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained(CHECKPOINT)


def test_the_release_is_a_small_self_describing_hub_folder(shipped):
    assert {p.name for p in CHECKPOINT.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (CHECKPOINT / "model.safetensors").stat().st_size <= 20 * 2**20
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.codecs.rvq.RVQCodec"
    assert shipped.codebook_sizes == [1024] * 8 and shipped.frame_rate == 50 and shipped.sample_rate == 16000
    card = (CHECKPOINT / "README.md").read_text()
    for row in ("| 1 | 0.5 |", "| 2 | 1 |", "| 4 | 2 |", "| 8 | 4 |"):
        assert row in card, f"the card lists measured metrics at every bitrate ({row})"


def test_reconstruction_improves_with_every_added_quantizer(shipped, tiny_corpus):
    """Quantizer dropout trained one model for all bitrates: each doubling of codebooks lowers the error."""
    entries = read_manifest(tiny_corpus / "manifest.jsonl", key="audio")[:6]
    totals = {n: {"mel_distance": 0.0, "stft_distance": 0.0} for n in (1, 2, 4, 8)}
    for entry in entries:
        audio = load_audio(entry["audio"], sample_rate=16000)[None]
        tokens = shipped.encode(audio)
        for n, total in totals.items():
            metrics = codec_metrics(audio, shipped.decode(tokens, num_quantizers=n), sample_rate=16000)
            for key in total:
                total[key] += metrics[key] / len(entries)
    mel = [totals[n]["mel_distance"] for n in totals]
    stft = [totals[n]["stft_distance"] for n in totals]
    assert all(a > b for a, b in zip(mel, mel[1:])), f"mel distance at 1/2/4/8 quantizers: {mel}"
    assert all(a > b for a, b in zip(stft, stft[1:])), f"STFT distance at 1/2/4/8 quantizers: {stft}"
