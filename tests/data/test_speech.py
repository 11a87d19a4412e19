import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch

from mmtok.data import speech, tools
from mmtok.data.manifest import assign_splits
from mmtok.data.speech import (
    SPEAKERS,
    assign_speakers,
    build_speech_corpus,
    clean_phonemes,
    espeak_executable,
    generate_sentences,
    synthesize,
    trim_silence,
)

NUM = 12
KEYS = {"audio", "text", "phonemes", "speaker", "duration", "sample_rate", "split"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speech")
    build_speech_corpus(out, num_utterances=NUM, seed=0, num_workers=2, progress=False)
    return out


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_sentences_are_deterministic_and_well_formed():
    first = generate_sentences(200, seed=3)
    assert first == generate_sentences(200, seed=3)
    assert first != generate_sentences(200, seed=4)
    assert generate_sentences(20, seed=3) == first[:20]
    assert all(4 <= len(s.split()) <= 14 for s in first)
    assert all(s[0].isupper() and s[-1] in ".?" for s in first)
    assert sum(s.endswith("?") for s in first) > 20  # questions are common
    assert len(set(first)) > 190
    assert len({word for s in first for word in s.split()}) > 200


def test_clean_phonemes_drops_stress_and_word_gaps():
    assert clean_phonemes("w ˌɛɹ  d ˈɪ d  ð ə\nj ˈɛ s\n") == "w ɛɹ d ɪ d ð ə j ɛ s"
    assert clean_phonemes("ˈa: b") == "aː b"


def test_speakers_exist_and_sound_different(tmp_path):
    assert len(SPEAKERS) >= 10
    assert len({s.id for s in SPEAKERS}) == len(SPEAKERS)
    version = subprocess.run([espeak_executable(), "--version"], capture_output=True, text=True).stdout
    data_dir = Path(re.search(r"Data at: (\S+)", version).group(1))
    listed = subprocess.run([espeak_executable(), "--voices=en"], capture_output=True, text=True).stdout
    digests = set()
    for spk in SPEAKERS:
        language, _, variant = spk.voice.partition("+")
        assert re.search(rf"\s{re.escape(language)}\s", listed), f"voice {language} not in espeak-ng --voices"
        if variant:
            assert (data_dir / "voices" / "!v" / variant).is_file(), f"variant {variant} missing"
        audio, phonemes = synthesize("Seven old books.", speaker=spk, wav_path=tmp_path / f"{spk.id}.wav")
        assert audio.shape[0] == 1 and audio.shape[1] > 0.4 * speech.ESPEAK_RATE
        assert float(audio.abs().max()) > 0.05
        assert phonemes.split()[0] == "s"
        digests.add(hashlib.md5(audio.numpy().tobytes()).hexdigest())
    assert len(digests) == len(SPEAKERS), "two speakers produced the same audio (variant ignored?)"


def test_speaker_assignment_is_balanced():
    order = assign_speakers(40, seed=0)
    assert len({s.id for s in order}) == len(SPEAKERS)
    assert order == assign_speakers(40, seed=0) and order != assign_speakers(40, seed=1)
    counts = [sum(s is spk for s in order) for spk in SPEAKERS]
    assert max(counts) - min(counts) <= 1


def test_splits_are_about_90_5_5(tmp_path):
    splits = assign_splits(200, seed=0)
    assert [splits.count(name) for name in ("train", "valid", "test")] == [180, 10, 10]
    for num in (3, 4, 12):
        small = assign_splits(num, seed=5)
        assert set(small) == {"train", "valid", "test"} and small.count("train") >= num - 2
    with pytest.raises(ValueError, match="at least 3 utterances"):
        build_speech_corpus(tmp_path, num_utterances=2)


def test_manifest_contents(corpus):
    rows = _rows(corpus / "manifest.jsonl")
    assert len(rows) == NUM
    assert all(set(row) == KEYS for row in rows)
    assert [row["audio"] for row in rows] == sorted(row["audio"] for row in rows)
    assert [row["text"] for row in rows] == generate_sentences(NUM, seed=0)
    assert {row["speaker"] for row in rows} <= {s.id for s in SPEAKERS}
    assert len({row["speaker"] for row in rows}) == NUM  # one round of 12 uses each speaker once
    for row in rows:
        info = sf.info(corpus / row["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert row["sample_rate"] == 16000
        assert row["duration"] == round(info.frames / 16000, 4)
        assert 0.8 < row["duration"] < 8.0
        tokens = row["phonemes"].split()
        assert len(tokens) >= len(row["text"].split()) and not any(set("ˈˌ") & set(t) for t in tokens)
    corpus_json = json.loads((corpus / "corpus.json").read_text())
    assert (corpus_json["num_utterances"], corpus_json["seed"], corpus_json["sample_rate"]) == (NUM, 0, 16000)


def test_manifest_splits_are_disjoint_and_cover_all(corpus):
    rows = _rows(corpus / "manifest.jsonl")
    by_split = {name: {r["audio"] for r in rows if r["split"] == name} for name in ("train", "valid", "test")}
    assert sum(len(ids) for ids in by_split.values()) == NUM
    assert set().union(*by_split.values()) == {r["audio"] for r in rows}
    assert len(by_split["valid"]) >= 1 and len(by_split["test"]) >= 1 and len(by_split["train"]) == NUM - 2


def test_same_seed_gives_identical_bytes(corpus, tmp_path):
    manifest = build_speech_corpus(
        tmp_path / "again", num_utterances=NUM, seed=0, num_workers=1, progress=False
    )
    assert manifest.read_bytes() == (corpus / "manifest.jsonl").read_bytes()
    for row in _rows(manifest):
        assert (tmp_path / "again" / row["audio"]).read_bytes() == (corpus / row["audio"]).read_bytes()
    other = build_speech_corpus(tmp_path / "other", num_utterances=4, seed=1, progress=False)
    assert [r["text"] for r in _rows(other)] != [r["text"] for r in _rows(manifest)[:4]]


def test_cache_returns_without_rebuilding(corpus, monkeypatch):
    files = [corpus / "manifest.jsonl", corpus / "corpus.json", *sorted((corpus / "wavs").glob("*.wav"))]
    before = [f.stat().st_mtime_ns for f in files]

    def fail(*args, **kwargs):
        raise AssertionError("espeak-ng was called although the corpus is cached")

    monkeypatch.setattr(speech, "synthesize", fail)
    manifest = build_speech_corpus(corpus, num_utterances=NUM, seed=0, progress=False)
    assert manifest == corpus / "manifest.jsonl"
    assert [f.stat().st_mtime_ns for f in files] == before


def test_missing_wav_triggers_rebuild(tmp_path):
    out = tmp_path / "c"
    build_speech_corpus(out, num_utterances=3, seed=2, progress=False)
    wav = out / "wavs" / "utt00001.wav"
    original = wav.read_bytes()
    wav.unlink()
    build_speech_corpus(out, num_utterances=3, seed=2, progress=False)
    assert wav.read_bytes() == original


def test_missing_espeak_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(tools.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y espeak-ng"):
        build_speech_corpus(tmp_path, num_utterances=3, progress=False)


def test_trim_silence_keeps_the_sound_and_a_margin():
    sound = torch.full((1, 1000), 0.5)
    audio = torch.cat([torch.zeros(1, 3000), sound, torch.zeros(1, 4000)], dim=1)
    trimmed = trim_silence(audio, sample_rate=16000, margin_seconds=0.05)  # margin: 800 samples
    assert trimmed.shape == (1, 800 + 1000 + 800)
    assert torch.equal(trimmed[:, 800:1800], sound)
    assert torch.equal(trim_silence(torch.zeros(1, 50), sample_rate=16000), torch.zeros(1, 50))


def test_a_build_goes_on_past_an_utterance_its_tool_fails_and_is_not_taken_as_finished(
        tmp_path, monkeypatch, capsys):
    from mmtok.errors import DataError

    real = speech._make_utterance

    def flaky(job, **kwargs):
        if job[0] == "utt00004":
            raise RuntimeError("espeak-ng failed (exit 1) for speaker 'x'")
        return real(job, **kwargs)

    monkeypatch.setattr(speech, "_make_utterance", flaky)
    with pytest.raises(DataError, match="1 of 8 items could not be built"):
        build_speech_corpus(tmp_path, num_utterances=8, progress=False)
    assert "failed: espeak-ng failed (exit 1)" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and "utt00004" not in {Path(r["audio"]).stem for r in rows}
    assert not (tmp_path / "corpus.json").exists(), "a rerun builds it again"
    monkeypatch.setattr(speech, "_make_utterance", real)
    build_speech_corpus(tmp_path, num_utterances=8, progress=False)
    assert (tmp_path / "corpus.json").exists() and len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 8
