import json
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import torch

from mmtok.cli import main
from mmtok.data import music
from mmtok.data.audio import AudioDataModule
from mmtok.data.music import (
    COMPOSERS,
    INSTRUMENTS,
    build_music_corpus,
    cut_midi,
    music21_corpus_dir,
    render_midi,
    select_works,
    set_program,
    work_title,
)

SECONDS = 2.0
ARGS = dict(num_works=3, programs_per_work=2, max_seconds=SECONDS, seed=0, num_workers=2, progress=False)


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 scores (Bach, Monteverdi, Palestrina) x 2 instruments, 2 s each, 16 kHz."""
    out = tmp_path_factory.mktemp("music")
    build_music_corpus(out, **ARGS)
    return out


def _spectrum(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    magnitude = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / sample_rate), magnitude


def _one_note(path: Path, *, pitch: int, program: int, seconds: float = 1.0) -> Path:
    midi = pretty_midi.PrettyMIDI()
    instrument = pretty_midi.Instrument(program=program)
    instrument.notes.append(pretty_midi.Note(velocity=100, pitch=pitch, start=0.0, end=seconds))
    midi.instruments.append(instrument)
    midi.write(str(path))
    return path


@pytest.mark.parametrize("sample_rate", [16000, 24000, 32000])
def test_render_midi_plays_the_written_pitch(tmp_path, sample_rate):
    midi = _one_note(tmp_path / "a4.mid", pitch=69, program=73)  # A4 = 440 Hz on a flute
    audio = render_midi(midi, sample_rate=sample_rate)
    assert audio.shape[0] == 1 and 0.9 * sample_rate < audio.shape[1] < 6 * sample_rate  # + release and reverb
    frequencies, magnitude = _spectrum(audio[0, : sample_rate].numpy(), sample_rate)
    assert abs(frequencies[magnitude.argmax()] - 440.0) < 5.0


def test_set_program_cuts_and_drops_notes_that_would_never_end(tmp_path):
    midi = pretty_midi.PrettyMIDI()
    part = pretty_midi.Instrument(program=0)
    part.notes += [pretty_midi.Note(velocity=90, pitch=60, start=0.0, end=1.0),
                   pretty_midi.Note(velocity=90, pitch=62, start=1.0, end=1.0),  # a zero-length grace note
                   pretty_midi.Note(velocity=90, pitch=64, start=1.5, end=3.0),
                   pretty_midi.Note(velocity=90, pitch=65, start=1.995, end=2.5),
                   pretty_midi.Note(velocity=90, pitch=67, start=2.5, end=3.0)]
    midi.instruments.append(part)
    midi.write(str(tmp_path / "in.mid"))
    set_program(tmp_path / "in.mid", tmp_path / "out.mid", program=40, max_seconds=2.0)
    result = pretty_midi.PrettyMIDI(str(tmp_path / "out.mid"))
    assert [i.program for i in result.instruments] == [40]
    notes = [(n.pitch, round(n.start, 3), round(n.end, 3)) for n in result.instruments[0].notes]
    assert notes == [(60, 0.0, 1.0), (64, 1.5, 2.0)]
    with pytest.raises(ValueError, match="program must be in 0..127"):
        set_program(tmp_path / "in.mid", tmp_path / "x.mid", program=128, max_seconds=2.0)


def test_cut_midi_follows_the_tempo_map_and_shortens_any_score(tmp_path):
    import mido

    midi = mido.MidiFile(type=1, ticks_per_beat=10080)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0),  # 120 bpm for 2 beats (1 s)
                                mido.MetaMessage("set_tempo", tempo=250000, time=2 * 10080)])  # then 240 bpm
    notes = mido.MidiTrack([mido.Message("note_on", note=60, velocity=80, time=0),
                            mido.Message("note_off", note=60, velocity=0, time=4 * 10080),  # 0 .. 1.5 s
                            mido.Message("note_on", note=62, velocity=80, time=0),
                            mido.Message("note_off", note=62, velocity=0, time=2000 * 10080)])  # past 10**7 ticks
    midi.tracks += [conductor, notes]
    midi.save(str(tmp_path / "long.mid"))
    with pytest.raises(ValueError, match="likely corrupt"):
        pretty_midi.PrettyMIDI(str(tmp_path / "long.mid"))
    cut_midi(tmp_path / "long.mid", tmp_path / "cut.mid", max_seconds=2.0)
    result = pretty_midi.PrettyMIDI(str(tmp_path / "cut.mid"))
    notes = [(n.pitch, round(n.start, 4), round(n.end, 4)) for n in result.instruments[0].notes]
    assert notes == [(60, 0.0, 1.5), (62, 1.5, 2.0)]  # the sounding note ends at the cut


def test_works_are_real_scores_taken_in_turn():
    works = select_works(8, seed=0)
    assert [w.path.split("/")[0] for w in works] == list(COMPOSERS) * 2
    assert all((music21_corpus_dir() / w.path).is_file() for w in works)
    assert works == select_works(8, seed=0) and works != select_works(8, seed=1)
    assert work_title("bach/bwv10.7.mxl") == work_title("bach/bwv10.7-lpz.mxl") == "chorale BWV 10.7"
    assert work_title("monteverdi/madrigal.3.1.mxl") == "madrigal 3.1"
    assert work_title("trecento/PMFC_01-Rex quem metrorum.xml") == "Rex quem metrorum"
    assert work_title("trecento/PMFC_24_5-Gloria Spiritus et alme.xml") == "Gloria Spiritus et alme"
    assert work_title("trecento/PMFC_06_Giovanni-01-Angnel_son_biancho.xml") == "Angnel son biancho"


def test_manifest_matches_midi_audio_and_source(corpus):
    rows = _rows(corpus / "manifest.jsonl")
    assert len(rows) == 6 and [r["audio"] for r in rows] == sorted(r["audio"] for r in rows)
    assert [r["work"].split("/")[0] for r in rows] == ["bach", "bach", "monteverdi", "monteverdi",
                                                       "palestrina", "palestrina"]
    for row in rows:
        folder = row["work"].split("/")[0]
        assert (music21_corpus_dir() / row["work"]).is_file()
        assert row["title"] == work_title(row["work"]) and row["composer"] == COMPOSERS[folder][0]
        assert row["instrument"] == INSTRUMENTS[row["program"]]
        assert row["text"] in row["captions"]
        assert all(row["title"] in c and row["composer"] in c and row["instrument"] in c for c in row["captions"])
        midi = pretty_midi.PrettyMIDI(str(corpus / row["midi"]))
        assert {i.program for i in midi.instruments} == {row["program"]}  # the instrument named is played
        assert max(n.end for i in midi.instruments for n in i.notes) <= SECONDS + 1e-6
        data, rate = sf.read(corpus / row["audio"], dtype="float32")
        info = sf.info(corpus / row["audio"])
        assert (rate, info.channels, info.subtype, row["sample_rate"]) == (16000, 1, "PCM_16", 16000)
        assert row["duration"] == round(len(data) / rate, 4) and 1.0 < row["duration"] <= SECONDS + 1.0
        assert abs(float(np.abs(data).max()) - music.PEAK) < 1e-3
    for first, second in zip(rows[::2], rows[1::2]):  # one score, two instruments: different timbres
        assert first["work"] == second["work"] and first["program"] != second["program"]
        spectra = [_spectrum(sf.read(corpus / r["audio"], dtype="float32")[0][:16000], 16000)[1]
                   for r in (first, second)]
        assert np.corrcoef(*spectra)[0, 1] < 0.95


def test_splits_are_by_work_and_disjoint(corpus):
    rows = _rows(corpus / "manifest.jsonl")
    split_of = {}
    for row in rows:
        assert split_of.setdefault(row["work"], row["split"]) == row["split"]  # a score never crosses splits
    assert sorted(split_of.values()) == ["test", "train", "valid"]


def test_same_seed_gives_identical_bytes_and_cache(corpus, tmp_path, monkeypatch):
    again = build_music_corpus(tmp_path / "again", **ARGS)
    assert again.read_bytes() == (corpus / "manifest.jsonl").read_bytes()
    for row in _rows(again):
        for key in ("audio", "midi"):
            assert (tmp_path / "again" / row[key]).read_bytes() == (corpus / row[key]).read_bytes()

    def fail(*args, **kwargs):
        raise AssertionError("fluidsynth was called although the corpus is cached")

    monkeypatch.setattr(music, "render_midi", fail)
    assert build_music_corpus(corpus, **ARGS) == corpus / "manifest.jsonl"
    with pytest.raises(ValueError, match="programs must be keys of INSTRUMENTS"):
        build_music_corpus(tmp_path / "bad", **{**ARGS, "programs": (0, 1)})


def test_cli_at_24_khz_and_audio_data_module(tmp_path, capsys):
    out = tmp_path / "cli"
    main(["data", "music", "--out", str(out), "--num-works", "3", "--programs-per-work", "1",
          "--max-seconds", "1", "--sample-rate", "24000"])
    captured = capsys.readouterr()
    assert f"music corpus: {out / 'manifest.jsonl'}" in captured.out
    assert "music21 -> MIDI" in captured.err and "fluidsynth" in captured.err  # progress bars
    rows = _rows(out / "manifest.jsonl")
    assert len(rows) == 3 and all(sf.info(out / r["audio"]).samplerate == 24000 for r in rows)
    module = AudioDataModule(path=str(out), sample_rate=24000, crop_seconds=0.5, batch_size=1)
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert batch["audio"].shape == (1, 1, 12000) and batch["text"][0] in {r["text"] for r in rows}
    assert float(batch["audio"].abs().max()) > 0.01 and torch.isfinite(batch["audio"]).all()
