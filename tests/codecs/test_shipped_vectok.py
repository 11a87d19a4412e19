"""The released Vec-Tok (`checkpoints/vectok-speech`): a self-contained folder that tokenizes real speech,
decodes it intelligibly in a prompt's voice, and whose inverse k-means takes the voice, not the words, from
the prompt."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from mmtok.data.audio import load_audio
from mmtok.data.manifest import read_manifest
from mmtok.hub import load_pretrained
from mmtok.media import pad_audio
from mmtok.metrics import error_rate
from mmtok.tasks.voice_conversion import prompt_changes

VECTOK = REPO / "checkpoints" / "vectok-speech"
PER_BOUND = 0.40  # bench/vectok.py: 23.3 % on the 100 test sentences (real speech: 1.9 %)


@pytest.fixture(scope="module")
def model():
    return load_pretrained(VECTOK).eval()


@pytest.fixture(scope="module")
def entries(tiny_corpus):
    return read_manifest(tiny_corpus / "manifest.jsonl", key="audio")


def test_the_release_is_self_contained_and_small():
    assert {p.name for p in VECTOK.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (VECTOK / "model.safetensors").stat().st_size <= 20 * 2**20
    config = json.loads((VECTOK / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.codecs.vectok.VecTok" and config["num_units"] == 300
    assert config["vectors"]["type"] == "ssl" and "path" not in config["vectors"]
    assert "## Tokens, resynthesis and voice conversion (bench/vectok.py)" in (VECTOK / "README.md").read_text()


def test_units_and_bpe_of_real_speech_round_trip_exactly(model, entries):
    audio, lengths = pad_audio([load_audio(e["audio"], sample_rate=16000) for e in entries[:8]])
    units = model.encode(audio, lengths)
    bpe = model.to_bpe(units)
    back = model.from_bpe(bpe)
    assert all(torch.equal(back[i].codes, units[i].codes) for i in range(8))
    assert int(bpe.lengths.sum()) < 0.8 * int(units.lengths.sum())


def test_resynthesis_in_its_own_voice_is_intelligible(model, entries):
    judge = load_pretrained(REPO / "checkpoints" / "phoneme-recognizer")
    chosen = entries[:12]
    audio, lengths = pad_audio([load_audio(e["audio"], sample_rate=16000) for e in chosen])
    speech = model.decode(model.encode(audio, lengths), prompt=audio, prompt_lengths=lengths)
    hypotheses = [h.split() for h in judge.transcribe(speech, lengths)]
    per = error_rate([e["phonemes"].split() for e in chosen], hypotheses)
    assert per < PER_BOUND, f"resynthesis PER {per:.3f}"


def test_the_prompt_gives_the_voice_not_the_words(model, entries):
    """The inverse k-means' output barely moves when the prompt's words change (another utterance of the
    same speaker) and moves much more when its voice changes: it reads the voice from the prompt."""
    indices = range(8)
    audio, lengths = pad_audio([load_audio(entries[i]["audio"], sample_rate=16000) for i in indices])
    changes = prompt_changes(model, entries, indices, model.encode(audio, lengths))
    assert changes["words"] < 0.5 * changes["voice"], changes


def test_conversion_speaks_in_the_target_voice(model, entries):
    """Converted speech is closer to the target prompt's voice than to the source's (bench: 0.43 against 0.18)."""
    from mmtok.metrics import speaker_similarity
    from mmtok.tasks.voice_conversion import _other_speaker

    encoder = load_pretrained(REPO / "checkpoints" / "speaker-encoder")
    sources = [load_audio(e["audio"], sample_rate=16000) for e in entries[:6]]
    targets = [load_audio(_other_speaker(entries, i)["audio"], sample_rate=16000)[:, :48000] for i in range(6)]
    converted = [model.convert(s[None], t[None])[0] for s, t in zip(sources, targets)]
    to_target = speaker_similarity(encoder, converted, targets, 16000).mean()
    to_source = speaker_similarity(encoder, converted, sources, 16000).mean()
    assert to_target > to_source + 0.1, (float(to_target), float(to_source))
