"""flite as a second speech engine in the embedded speech corpus (opt-in: ``flite=True``)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from mmtok.cli import main
from mmtok.data.speech import (
    ARPABET_TO_IPA,
    FLITE_SPEAKERS,
    SPEAKERS,
    arpabet_to_ipa,
    build_speech_corpus,
    synthesize_flite,
)

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="Debian's flite is not installed")
NUM = 16  # one round of the 12 espeak-ng + 4 flite speakers


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speech_flite")
    build_speech_corpus(out, num_utterances=NUM, seed=0, num_workers=2, progress=False, flite=True)
    return out


def test_arpabet_maps_to_espeak_ipa():
    assert arpabet_to_ipa("pau d ih d ae n ax b r ih ng dh ax r eh d b uh k pau \n") == \
        "d ɪ d æ n ə b ɹ ɪ ŋ ð ə ɹ ɛ d b ʊ k"
    assert len(ARPABET_TO_IPA) == 40  # the 39 CMU phones and flite's schwa "ax"
    with pytest.raises(ValueError, match="unknown phone 'qq'"):
        arpabet_to_ipa("pau qq pau")


def test_flite_voices_sound_different_and_print_phones(tmp_path):
    digests = set()
    for speaker in FLITE_SPEAKERS:
        audio, phonemes = synthesize_flite("Seven old books.", speaker=speaker, wav_path=tmp_path / f"{speaker.id}.wav")
        assert audio.shape[0] == 1 and audio.shape[1] > 0.4 * 16000 and float(audio.abs().max()) > 0.05
        assert phonemes.split()[:2] == ["s", "ɛ"]
        digests.add(hashlib.md5(audio.numpy().tobytes()).hexdigest())
    assert len(digests) == len(FLITE_SPEAKERS)


def test_flite_speakers_join_the_corpus_deterministically(mixed, tmp_path):
    rows = _rows(mixed / "manifest.jsonl")
    assert {r["speaker"] for r in rows} == {s.id for s in SPEAKERS + FLITE_SPEAKERS}  # each speaker once
    for row in rows:
        info = sf.info(mixed / row["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.5 < row["duration"] < 8.0 and len(row["phonemes"].split()) >= len(row["text"].split())
    params = json.loads((mixed / "corpus.json").read_text())
    assert params["flite"].startswith("version: flite") and len(params["flite_speakers"]) == len(FLITE_SPEAKERS)
    again = build_speech_corpus(tmp_path / "again", num_utterances=NUM, seed=0, progress=False, flite=True)
    assert again.read_bytes() == (mixed / "manifest.jsonl").read_bytes()
    for row in rows:
        assert (tmp_path / "again" / row["audio"]).read_bytes() == (mixed / row["audio"]).read_bytes()


def test_espeak_only_corpus_is_unchanged_by_flite_on_path(mixed, tmp_path, capsys):
    plain = _rows(build_speech_corpus(tmp_path / "plain", num_utterances=NUM, seed=0, progress=False))
    assert {r["speaker"] for r in plain} <= {s.id for s in SPEAKERS}
    assert "flite" not in json.loads((tmp_path / "plain" / "corpus.json").read_text())
    main(["data", "speech", "--out", str(tmp_path / "cli"), "--num-utterances", "4", "--flite"])
    assert "speech corpus:" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "corpus.json").read_text())["flite_speakers"]
