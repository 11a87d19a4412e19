"""The embedded music corpus: real scores from the music21 wheel, rendered by FluidSynth.

mmtok needs real music on a machine with no downloads. The ``music21`` wheel ships a corpus of
scores (Bach's chorales, Monteverdi's madrigals, Palestrina's masses, trecento pieces and more);
music21 writes a score to MIDI, mido cuts it to ``max_seconds``, pretty_midi sets every part to
one General MIDI instrument, and Debian's ``fluidsynth`` renders it with the GM soundfont shipped
in the ``pretty_midi`` wheel (TimGM6mb.sf2; Debian's ``timgm6mb-soundfont`` as a fallback). Each
score is played by ``programs_per_work`` instruments drawn by seed. The result is a folder::

    out_dir/corpus.json        build parameters (a cache key)
    out_dir/manifest.jsonl     one JSON object per clip, sorted by id
    out_dir/midi/<id>.mid      the MIDI that was rendered (one instrument, cut to max_seconds)
    out_dir/wavs/<id>.wav      16-bit PCM, mono, ``sample_rate``, peak-normalised to 0.9

Manifest keys: ``audio`` and ``midi`` (paths relative to ``out_dir``), ``text`` (a caption such as
"chorale BWV 10.7 by Johann Sebastian Bach, played on church organ", one phrasing drawn by seed),
``captions`` (every phrasing), ``work`` (the score's path inside music21's corpus), ``title``,
``composer``, ``instrument`` and ``program`` (GM program, 0-based), ``duration`` (seconds),
``sample_rate`` and ``split`` (train/valid/test by work, so a score never crosses splits).
FluidSynth renders deterministically, so one seed always gives a byte-identical manifest and
identical wavs and MIDI files.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import random
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from mmtok.data.manifest import (assign_splits, build_items, corpus_is_cached, remove_stale_files,
                                 write_corpus_manifest)
from mmtok.data.tools import debian_tool
from mmtok.data.speech import trim_silence
from mmtok.media import write_wav

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PEAK = 0.9
MIN_NOTE_SECONDS = 0.02
# music21 corpus folder -> (composer as written in captions, file suffix of its scores)
COMPOSERS: dict[str, tuple[str, str]] = {
    "bach": ("Johann Sebastian Bach", ".mxl"),
    "monteverdi": ("Claudio Monteverdi", ".mxl"),
    "palestrina": ("Giovanni Pierluigi da Palestrina", ".krn"),
    "trecento": ("a trecento composer", ".xml"),
}
# General MIDI program (0-based) -> instrument as written in captions
INSTRUMENTS: dict[int, str] = {
    0: "piano", 6: "harpsichord", 19: "church organ", 24: "nylon-string guitar", 40: "violin", 42: "cello",
    46: "harp", 48: "string ensemble", 52: "choir", 68: "oboe", 71: "clarinet", 73: "flute",
}


# ----------------------------------------------------------------------------- tools


def fluidsynth_executable() -> str:
    """Path of the fluidsynth binary; RuntimeError with the install command when it is missing."""
    return debian_tool("fluidsynth", needed_for="the embedded music corpus")


def fluidsynth_version() -> str:
    """FluidSynth's version line, e.g. ``FluidSynth runtime version 2.3.1``."""
    done = subprocess.run([fluidsynth_executable(), "--version"], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[0]


def soundfont_path() -> Path:
    """The GM soundfont: TimGM6mb.sf2 inside the pretty_midi wheel, else Debian's timgm6mb-soundfont."""
    import pretty_midi

    candidates = [Path(pretty_midi.__file__).parent / "TimGM6mb.sf2", Path("/usr/share/sounds/sf2/TimGM6mb.sf2")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RuntimeError(f"mmtok/data/music.py: no GM soundfont found at {[str(c) for c in candidates]}; reinstall "
                       "pretty_midi or `apt-get install -y --no-install-recommends timgm6mb-soundfont`")


def music21_corpus_dir() -> Path:
    """The folder of scores inside the installed music21 wheel."""
    import music21

    return Path(music21.__file__).parent / "corpus"


# ----------------------------------------------------------------------------- works


@dataclass(frozen=True)
class Work:
    """A score of the music21 corpus: ``path`` relative to :func:`music21_corpus_dir`."""

    path: str
    title: str
    composer: str


def work_title(path: str) -> str:
    """A readable title from a corpus path: ``bach/bwv10.7.mxl`` (or ``bwv10.7-lpz.mxl``) -> ``chorale BWV 10.7``,
    ``monteverdi/madrigal.3.1.mxl`` -> ``madrigal 3.1``, ``palestrina/Agnus_01.krn`` -> ``Agnus 01``,
    ``trecento/PMFC_06_Giovanni-01-Angnel_son_biancho.xml`` -> ``Angnel son biancho``."""
    folder, stem = Path(path).parts[0], Path(path).stem
    if folder == "bach":
        match = re.fullmatch(r"bwv(\d+(?:\.\d+)?)(?:-\w+)?", stem)  # "-lpz": an alternative source
        return f"chorale BWV {match.group(1)}" if match else stem
    if folder == "monteverdi":
        return stem.replace(".", " ", 1)
    stem = re.sub(r"^PMFC_[^-]*-", "", stem)  # "Polyphonic Music of the Fourteenth Century" volume
    stem = re.sub(r"^\d+[a-z]?[-_ ]", "", stem)  # the piece's number in that volume
    return " ".join(stem.replace("_", " ").replace("-", " ").split())


def list_works(composers: tuple[str, ...] = tuple(COMPOSERS)) -> dict[str, list[Work]]:
    """Every score of each composer's corpus folder (by :data:`COMPOSERS` suffix), sorted by path."""
    root = music21_corpus_dir()
    works = {}
    for name in composers:
        if name not in COMPOSERS:
            raise ValueError(f"mmtok/data/music.py: unknown composer {name!r}, expected one of {tuple(COMPOSERS)}")
        display, suffix = COMPOSERS[name]
        paths = sorted(p.relative_to(root).as_posix() for p in (root / name).rglob(f"*{suffix}")
                       if not p.stem.endswith("_bak"))  # trecento holds a backup copy of one score
        works[name] = [Work(path=p, title=work_title(p), composer=display) for p in paths]
    return works


def select_works(num_works: int, *, seed: int, composers: tuple[str, ...] = tuple(COMPOSERS)) -> list[Work]:
    """``num_works`` scores, taking composers in turn, each composer's scores in a seeded order."""
    pools = list_works(composers)
    rng = random.Random(f"mmtok-music-works-{seed}")
    orders = {name: rng.sample(pool, len(pool)) for name, pool in pools.items()}
    available = sum(len(pool) for pool in pools.values())
    if not 0 < num_works <= available:
        raise ValueError(f"mmtok/data/music.py: num_works must be in 1..{available}, got {num_works}")
    chosen: list[Work] = []
    turn = 0
    while len(chosen) < num_works:
        order = orders[composers[turn % len(composers)]]
        if order:
            chosen.append(order.pop(0))
        turn += 1
    return chosen


def music_captions(work: Work, instrument: str) -> list[str]:
    """Every caption phrasing of ``work`` played on ``instrument``."""
    article = "an" if instrument[0] in "aeiou" else "a"
    return [
        f"{work.title} by {work.composer}, played on {instrument}",
        f"{article} {instrument} playing {work.title} by {work.composer}",
        f"{work.composer}: {work.title} ({instrument})",
    ]


# ----------------------------------------------------------------------------- MIDI and rendering


def score_to_midi(work: Work, midi_path: str | Path) -> Path:
    """Parses the score with music21 (from source, no cache) and writes it as a MIDI file."""
    from music21 import converter, stream

    score = converter.parse(music21_corpus_dir() / work.path, forceSource=True)
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    midi_path = Path(midi_path)
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    score.write("midi", fp=str(midi_path))
    return midi_path


def _seconds_to_tick(seconds: float, tempos: list[tuple[int, int]], ticks_per_beat: int) -> int:
    """The first tick at or after ``seconds`` under a tempo map [(tick, microseconds per beat)]."""
    elapsed, start, tempo = 0.0, 0, 500000  # MIDI's default tempo: 120 beats per minute
    for tick, next_tempo in tempos:
        length = (tick - start) * tempo / 1e6 / ticks_per_beat
        if elapsed + length >= seconds:
            break
        elapsed, start, tempo = elapsed + length, tick, next_tempo
    return start + math.ceil((seconds - elapsed) * 1e6 * ticks_per_beat / tempo)


def cut_midi(midi_in: str | Path, midi_out: str | Path, *, max_seconds: float) -> Path:
    """Writes the first ``max_seconds`` of a MIDI file (type 0 or 1), read and written with mido.

    Events at or after the cut are dropped and notes still sounding there get a note-off at the cut,
    so any length of score becomes a short file (pretty_midi refuses files past 10**7 ticks).
    """
    import mido

    midi = mido.MidiFile(str(midi_in))
    if midi.type == 2:
        raise ValueError(f"mmtok/data/music.py cut_midi: {midi_in} is a type 2 MIDI file, expected type 0 or 1")
    timed = [list(zip(itertools.accumulate(message.time for message in track), track)) for track in midi.tracks]
    tempos = sorted((tick, message.tempo) for track in timed for tick, message in track if message.type == "set_tempo")
    cut = _seconds_to_tick(max_seconds, tempos, midi.ticks_per_beat)
    for index, track in enumerate(timed):
        kept, sounding = [], collections.Counter()
        for tick, message in track:
            if tick >= cut or message.type == "end_of_track":
                continue
            kept.append((tick, message))
            if message.type == "note_on" and message.velocity > 0:
                sounding[message.channel, message.note] += 1
            elif message.type in ("note_on", "note_off") and sounding[message.channel, message.note] > 0:
                sounding[message.channel, message.note] -= 1
        for (channel, note), count in sorted(sounding.items()):
            kept += [(cut, mido.Message("note_off", channel=channel, note=note, velocity=0))] * count
        kept.append((max([cut] + [tick for tick, _ in kept]), mido.MetaMessage("end_of_track")))
        previous, rebuilt = 0, mido.MidiTrack()
        for tick, message in kept:
            rebuilt.append(message.copy(time=tick - previous))
            previous = tick
        midi.tracks[index] = rebuilt
    midi_out = Path(midi_out)
    midi_out.parent.mkdir(parents=True, exist_ok=True)
    midi.save(str(midi_out))
    return midi_out


def set_program(midi_in: str | Path, midi_out: str | Path, *, program: int, max_seconds: float) -> Path:
    """Rewrites a MIDI file with every melodic part on GM ``program`` and nothing after ``max_seconds``.

    Notes are cut at ``max_seconds``; notes then shorter than :data:`MIN_NOTE_SECONDS` (grace notes,
    notes starting at the cut) are dropped: written as a note-off and a note-on at the same tick,
    such a note never ends, and fluidsynth's file renderer never finishes. Lyrics, text, key and
    time signature events after the cut are dropped too.
    """
    import pretty_midi

    if not 0 <= program <= 127:
        raise ValueError(f"mmtok/data/music.py set_program: program must be in 0..127, got {program}")
    midi = pretty_midi.PrettyMIDI(str(midi_in))
    for instrument in midi.instruments:
        if not instrument.is_drum:
            instrument.program = program
        for note in instrument.notes:
            note.end = min(note.end, max_seconds)
        instrument.notes = [note for note in instrument.notes if note.end - note.start >= MIN_NOTE_SECONDS]
        instrument.control_changes = [c for c in instrument.control_changes if c.time < max_seconds]
        instrument.pitch_bends = [b for b in instrument.pitch_bends if b.time < max_seconds]
    midi.lyrics = [event for event in midi.lyrics if event.time < max_seconds]
    midi.text_events = [event for event in midi.text_events if event.time < max_seconds]
    midi.key_signature_changes = [event for event in midi.key_signature_changes if event.time < max_seconds]
    midi.time_signature_changes = [event for event in midi.time_signature_changes if event.time < max_seconds]
    if not any(instrument.notes for instrument in midi.instruments):
        raise ValueError(f"mmtok/data/music.py: {midi_in} has no notes before {max_seconds} s")
    midi_out = Path(midi_out)
    midi_out.parent.mkdir(parents=True, exist_ok=True)
    midi.write(str(midi_out))
    return midi_out


def render_midi(
    midi_path: str | Path,
    *,
    sample_rate: int,
    soundfont: str | Path | None = None,
    executable: str | None = None,
    timeout_seconds: float = 300.0,
) -> torch.Tensor:
    """Renders a MIDI file with fluidsynth (``-ni -F out.wav -r sample_rate``) and the GM soundfont.

    Returns FloatTensor [1, N]: the mono mix (mean of fluidsynth's stereo output), unnormalised.
    Raises RuntimeError naming the file when fluidsynth fails or runs longer than ``timeout_seconds``
    (a note that is never released keeps its file renderer going).
    """
    with tempfile.TemporaryDirectory(prefix="mmtok-fluidsynth-") as tmp:
        wav = Path(tmp) / "out.wav"
        command = [executable or fluidsynth_executable(), "-ni", "-q", "-F", str(wav), "-T", "wav", "-O", "float",
                   "-r", str(sample_rate), str(soundfont or soundfont_path()), str(midi_path)]
        try:
            done = subprocess.run(command, capture_output=True, check=False, timeout=timeout_seconds)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"mmtok/data/music.py: fluidsynth ran longer than {timeout_seconds} s on {midi_path} "
                               "(a note without a note-off?)") from error
        if done.returncode != 0 or not wav.is_file():
            raise RuntimeError(
                f"mmtok/data/music.py: fluidsynth failed (exit {done.returncode}) on {midi_path}: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)  # [N, C]
    if rate != sample_rate or data.shape[0] == 0:
        raise RuntimeError(f"mmtok/data/music.py: fluidsynth wrote {data.shape[0]} samples at {rate} Hz "
                           f"(expected > 0 at {sample_rate} Hz) for {midi_path}")
    return torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)  # [1, N]


# ----------------------------------------------------------------------------- corpus


def _render_clip(job: dict, *, out_dir: Path, sample_rate: int, max_seconds: float, soundfont: Path,
                 executable: str) -> dict:
    audio = render_midi(out_dir / job["midi"], sample_rate=sample_rate, soundfont=soundfont, executable=executable)
    audio = trim_silence(audio[:, : int(round((max_seconds + 1.0) * sample_rate))], sample_rate=sample_rate,
                         threshold_db=-50.0)
    peak = float(audio.abs().max())
    if peak == 0.0:
        raise RuntimeError(f"mmtok/data/music.py: fluidsynth rendered silence for {job['midi']} ({job['work']})")
    write_wav(out_dir / job["audio"], audio * (PEAK / peak), sample_rate=sample_rate)
    return {**job, "duration": round(audio.shape[-1] / sample_rate, 4), "sample_rate": sample_rate}


def build_music_corpus(
    out_dir: str | Path,
    *,
    num_works: int = 60,
    programs_per_work: int = 2,
    programs: tuple[int, ...] = tuple(INSTRUMENTS),
    seed: int = 0,
    sample_rate: int = 16000,
    max_seconds: float = 20.0,
    composers: tuple[str, ...] = tuple(COMPOSERS),
    num_workers: int = 2,
    progress: bool = True,
) -> Path:
    """Builds (or finds already built) the music corpus in ``out_dir``; returns its manifest path.

    ``num_works`` scores (composers in turn) each rendered with ``programs_per_work`` distinct GM
    ``programs`` (keys of :data:`INSTRUMENTS`) drawn by seed, cut to ``max_seconds``, at
    ``sample_rate`` (16000, 24000, 32000, ...). Scores are parsed in this process; fluidsynth runs
    in a pool of ``num_workers`` threads. A folder that already holds a build with the same
    parameters (and music21/fluidsynth versions) and all of its files is returned untouched.
    """
    if num_workers < 1 or sample_rate < 8000 or max_seconds <= 0:
        raise ValueError(f"mmtok/data/music.py: need num_workers >= 1, sample_rate >= 8000 and max_seconds > 0, "
                         f"got {num_workers}, {sample_rate}, {max_seconds}")
    unknown = sorted(set(programs) - set(INSTRUMENTS))
    if unknown or not 1 <= programs_per_work <= len(programs):
        raise ValueError(f"mmtok/data/music.py: programs must be keys of INSTRUMENTS {tuple(INSTRUMENTS)} (unknown: "
                         f"{unknown}) and 1 <= programs_per_work <= {len(programs)}, got {programs_per_work}")
    import music21

    executable, soundfont = fluidsynth_executable(), soundfont_path()
    out_dir = Path(out_dir)
    params = {
        "format_version": FORMAT_VERSION, "num_works": num_works, "programs_per_work": programs_per_work,
        "programs": list(programs), "seed": seed, "sample_rate": sample_rate, "max_seconds": max_seconds,
        "composers": list(composers), "num_clips": num_works * programs_per_work, "music21": music21.__version__,
        "fluidsynth": fluidsynth_version(), "soundfont": f"{soundfont.name} ({soundfont.stat().st_size} bytes)",
    }
    if corpus_is_cached(out_dir, params, key="audio", count_key="num_clips"):
        log.info("music corpus in %s is up to date (%d clips)", out_dir, params["num_clips"])
        return out_dir / "manifest.jsonl"
    works = select_works(num_works, seed=seed, composers=composers)
    splits = assign_splits(num_works, seed=seed)
    rng = random.Random(f"mmtok-music-programs-{seed}")
    (out_dir / "corpus.json").unlink(missing_ok=True)  # an interrupted build must not look finished
    jobs = []
    with tempfile.TemporaryDirectory(prefix="mmtok-music21-") as tmp:
        for number, (work, split) in enumerate(tqdm(list(zip(works, splits)), desc="music21 -> MIDI", unit="score",
                                                    disable=not progress)):
            full = score_to_midi(work, Path(tmp) / f"{number}.mid")
            short = cut_midi(full, Path(tmp) / f"{number}_cut.mid", max_seconds=max_seconds)
            for k, program in enumerate(rng.sample(programs, programs_per_work)):
                clip = f"music{number * programs_per_work + k:05d}"
                set_program(short, out_dir / "midi" / f"{clip}.mid", program=program, max_seconds=max_seconds)
                captions = music_captions(work, INSTRUMENTS[program])
                jobs.append({
                    "audio": f"wavs/{clip}.wav", "midi": f"midi/{clip}.mid", "text": rng.choice(captions),
                    "captions": captions, "work": work.path, "title": work.title, "composer": work.composer,
                    "instrument": INSTRUMENTS[program], "program": program, "split": split,
                })
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(num_workers) as pool:
        rows = build_items(pool, lambda job: _render_clip(job, out_dir=out_dir, sample_rate=sample_rate,
                                                          max_seconds=max_seconds, soundfont=soundfont,
                                                          executable=executable),
                           jobs, out_dir=out_dir, key="audio", desc="fluidsynth", progress=progress, unit="clip")
    remove_stale_files(out_dir / "wavs", "music*.wav", keep={out_dir / row["audio"] for row in rows})
    remove_stale_files(out_dir / "midi", "music*.mid", keep={out_dir / row["midi"] for row in rows})
    return write_corpus_manifest(out_dir, rows, params, key="audio")
