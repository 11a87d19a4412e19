"""The embedded speech corpus: sentences from a small grammar, spoken by espeak-ng.

mmtok needs real speech with phoneme labels on a machine with no downloads. espeak-ng (Debian
package, ~500x real time) speaks sentences drawn from a hand-written grammar in a dozen English
voices and, in the same call, prints the IPA phonemes it spoke. The result is a folder::

    out_dir/corpus.json        build parameters (a cache key)
    out_dir/manifest.jsonl     one JSON object per utterance, sorted by id
    out_dir/wavs/<id>.wav      16-bit PCM, mono, ``sample_rate``

Manifest keys: ``audio`` (path relative to ``out_dir``), ``text``, ``phonemes`` (IPA phonemes
separated by single spaces, stress marks removed: the CTC targets), ``speaker`` (an id in
:data:`SPEAKERS`), ``duration`` (seconds), ``sample_rate`` and ``split`` (train/valid/test).
espeak-ng is deterministic, so one seed always gives a byte-identical manifest and identical wavs.

With ``flite=True`` a second engine joins: Debian's ``flite`` (16 kHz voices kal16, slt, awb,
rms; :data:`FLITE_SPEAKERS`) speaks as extra speakers, so speaker variety is not one engine's.
flite prints the phones it spoke (``-ps``, CMU ARPAbet), which are mapped to the IPA symbols
espeak-ng's ``en-us`` voice uses (:data:`ARPABET_TO_IPA`). flite is deterministic too; without
it (the default) the manifest and wavs are exactly those of the espeak-ng-only corpus.
"""

from __future__ import annotations

import logging
import random
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf
import torch
import torchaudio

from mmtok.data.manifest import (assign_splits, build_items, corpus_is_cached, remove_stale_files,
                                 write_corpus_manifest)
from mmtok.data.tools import debian_tool
from mmtok.errors import UsageError
from mmtok.media import write_wav

log = logging.getLogger(__name__)

ESPEAK_RATE = 22050
FLITE_RATE = 16000
FORMAT_VERSION = 1
_STRESS_MARKS = str.maketrans("", "", "ˈˌ")

# ----------------------------------------------------------------------------- grammar

NAMES = (
    "Anna Ben Clara David Emma Frank Grace Henry Irene Jack Kate Leo Maria Nick Olivia Paul Rosa Sam "
    "Tina Victor Wendy Oscar Lucy Peter Helen Tom Nora Mark Julia Simon"
).split()
NOUNS = (
    "apple bag ball bank bed bell bird boat book bottle box bread bridge brother bus cake camera car "
    "card cat chair child city clock cloud coat computer cup desk doctor dog door dream egg engine "
    "farmer field flower friend garden gate girl glass hat horse house island jacket key king lamp "
    "letter lion map market mirror monkey moon mountain neighbor newspaper note orange painter pencil "
    "phone piano picture plane plate pocket queen radio river road rock sailor school ship shirt "
    "shoe singer sister song star stone story street student table teacher ticket tower town train "
    "tree truck village wall watch window winter wolf"
).split()
_IRREGULAR_PLURALS = {"child": "children", "wolf": "wolves", "city": "cities", "story": "stories"}
# (base, third person, past)
VERBS = [
    tuple(triple.split("/"))
    for triple in (
        "bring/brings/brought buy/buys/bought carry/carries/carried catch/catches/caught "
        "clean/cleans/cleaned close/closes/closed cook/cooks/cooked draw/draws/drew drop/drops/dropped "
        "find/finds/found "
        "fix/fixes/fixed follow/follows/followed forget/forgets/forgot hide/hides/hid hold/holds/held "
        "keep/keeps/kept lift/lifts/lifted like/likes/liked lose/loses/lost make/makes/made "
        "move/moves/moved need/needs/needed open/opens/opened paint/paints/painted pick/picks/picked "
        "push/pushes/pushed read/reads/read remember/remembers/remembered sell/sells/sold "
        "send/sends/sent show/shows/showed take/takes/took throw/throws/threw touch/touches/touched "
        "visit/visits/visited want/wants/wanted wash/washes/washed watch/watches/watched "
        "write/writes/wrote borrow/borrows/borrowed build/builds/built count/counts/counted "
        "describe/describes/described explain/explains/explained help/helps/helped"
    ).split()
]
INTRANSITIVE_VERBS = [
    tuple(triple.split("/"))
    for triple in (
        "arrive/arrives/arrived dance/dances/danced fall/falls/fell jump/jumps/jumped laugh/laughs/laughed "
        "listen/listens/listened rest/rests/rested run/runs/ran shout/shouts/shouted sing/sings/sang "
        "sit/sits/sat sleep/sleeps/slept smile/smiles/smiled stand/stands/stood stay/stays/stayed "
        "swim/swims/swam talk/talks/talked wait/waits/waited walk/walks/walked work/works/worked"
    ).split()
]
ADJECTIVES = (
    "big small old young new happy sad quiet loud bright dark warm cold hot soft hard heavy light "
    "fast slow tall short long green red blue yellow white black brown golden silver clean dirty "
    "empty full strange famous friendly angry tired busy lucky careful brave clever gentle hungry "
    "rich poor simple beautiful ugly wooden plastic broken tiny huge wet dry sweet bitter sharp "
    "round square"
).split()
ADVERBS = (
    "quickly slowly quietly loudly carefully happily sadly gently suddenly finally always never "
    "often rarely easily nearly really almost calmly badly proudly softly politely bravely "
    "eagerly openly warmly clearly simply"
).split()
NUMBERS = (
    "two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty"
).split()
PLACES = [
    f"{preposition} the {place}"
    for preposition, places in (
        ("in", "kitchen garden park library office station forest market classroom hospital"),
        ("at", "airport beach corner museum party theater zoo"),
        ("near", "river bridge church lake harbor castle"),
        ("under", "table bed tree stairs"),
    )
    for place in places.split()
]
TIMES = [
    "yesterday", "today", "tomorrow", "this morning", "last night", "every day", "on Monday",
    "on Tuesday", "on Friday", "on Sunday", "in the evening", "at noon", "after dinner",
    "before lunch", "last week", "next year", "in the summer", "at midnight", "once again", "soon",
]


def _plural(noun: str) -> str:
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def _phrase(rng: random.Random, *, plural: bool = False) -> str:
    """A noun phrase: an optional adjective (more often than not) and a noun."""
    noun = rng.choice(NOUNS)
    noun = _plural(noun) if plural else noun
    return f"{rng.choice(ADJECTIVES)} {noun}" if rng.random() < 0.6 else noun


def _templates(rng: random.Random) -> list[str]:
    """One filled-in candidate per template; the caller picks one."""
    name, other = rng.sample(NAMES, 2)
    verb, third, past = rng.choice(VERBS)
    _, i_third, i_past = rng.choice(INTRANSITIVE_VERBS)
    adj, adj2 = rng.sample(ADJECTIVES, 2)
    number, number2 = rng.sample(NUMBERS, 2)
    place, time, adverb = rng.choice(PLACES), rng.choice(TIMES), rng.choice(ADVERBS)
    return [
        f"{name} {past} the {_phrase(rng)} {time}.",
        f"The {_phrase(rng)} {i_third} {adverb} {place}.",
        f"Did {name} {verb} the {_phrase(rng)} {place}?",
        f"Where did the {_phrase(rng)} {verb} {number} {_phrase(rng, plural=True)}?",
        f"Why does {name} always {verb} {_phrase(rng, plural=True)}?",
        f"{number.capitalize()} {_phrase(rng, plural=True)} {i_past} {place} {time}.",
        f"{name} and {other} will {verb} the {_phrase(rng)} {adverb}.",
        f"Please {verb} the {_phrase(rng)} {time}.",
        f"I think the {rng.choice(NOUNS)} is {adj}, but {name} says it is {adj2}.",
        f"How many {_phrase(rng, plural=True)} did {name} {verb} {time}?",
        f"We {past} {number} {_phrase(rng, plural=True)} and {number2} {_phrase(rng, plural=True)} {place}.",
        f"Can you {verb} the {_phrase(rng)} {adverb}?",
        f"My {rng.choice(NOUNS)} {third} a {adj} {rng.choice(NOUNS)} {place}.",
        f"When {name} {i_past}, the {_phrase(rng)} {rng.choice(INTRANSITIVE_VERBS)[2]} {adverb}.",
        f"Is the {rng.choice(NOUNS)} really {adj} {time}?",
    ]


def generate_sentences(num: int, *, seed: int, min_words: int = 4, max_words: int = 14) -> list[str]:
    """``num`` English sentences of ``min_words``..``max_words`` words from the built-in grammar.

    Deterministic: one seed always gives the same list, and the first k sentences of a longer
    list equal the k sentences of a shorter one. Statements and questions are mixed.
    """
    if num < 0:
        raise ValueError(f"mmtok/data/speech.py generate_sentences: num must be >= 0, got {num}")
    if not 1 <= min_words <= max_words:
        raise ValueError(
            f"mmtok/data/speech.py generate_sentences: need 1 <= min_words <= max_words, "
            f"got min_words={min_words}, max_words={max_words}"
        )
    rng = random.Random(f"mmtok-sentences-{seed}")
    sentences: list[str] = []
    while len(sentences) < num:
        sentence = rng.choice(_templates(rng))
        if min_words <= len(sentence.split()) <= max_words:
            sentences.append(sentence)
    return sentences


# ----------------------------------------------------------------------------- speakers


@dataclass(frozen=True)
class Speaker:
    """An espeak-ng speaker: ``voice`` (language voice, optionally ``+variant``), speed, pitch."""

    id: str
    voice: str
    words_per_minute: int
    pitch: int

    def espeak_args(self) -> list[str]:
        return ["-v", self.voice, "-s", str(self.words_per_minute), "-p", str(self.pitch)]


# Note: espeak-ng 1.51 ignores a variant after "en-gb" ("en-gb+f2" speaks as plain "en-gb"),
# so British variants use "en+..." (the same gmw/en voice). tests/data/test_speech.py checks
# that every speaker sounds different from every other.
SPEAKERS: tuple[Speaker, ...] = (
    Speaker(id="us-m1", voice="en-us", words_per_minute=165, pitch=45),
    Speaker(id="us-f3", voice="en-us+f3", words_per_minute=160, pitch=60),
    Speaker(id="us-f5", voice="en-us+f5", words_per_minute=172, pitch=70),
    Speaker(id="gb-m1", voice="en", words_per_minute=170, pitch=40),
    Speaker(id="gb-f2", voice="en+f2", words_per_minute=150, pitch=55),
    Speaker(id="scot-m3", voice="en-gb-scotland+m3", words_per_minute=155, pitch=40),
    Speaker(id="carib-f2", voice="en-029+f2", words_per_minute=160, pitch=65),
    Speaker(id="carib-m2", voice="en-029+m2", words_per_minute=140, pitch=30),
    Speaker(id="nyc-m1", voice="en-us-nyc", words_per_minute=175, pitch=50),
    Speaker(id="rp-m7", voice="en-gb-x-rp+m7", words_per_minute=150, pitch=35),
    Speaker(id="lanc-f4", voice="en-gb-x-gbclan+f4", words_per_minute=145, pitch=60),
    Speaker(id="wmid-m4", voice="en-gb-x-gbcwmd+m4", words_per_minute=165, pitch=45),
)
SPEAKER_IDS: tuple[str, ...] = tuple(s.id for s in SPEAKERS)


@dataclass(frozen=True)
class FliteSpeaker:
    """A flite speaker: ``voice`` (one of ``flite -lv``) and a speaking-rate factor (>1: slower)."""

    id: str
    voice: str
    duration_stretch: float = 1.0

    def flite_args(self) -> list[str]:
        return ["-voice", self.voice, "--setf", f"duration_stretch={self.duration_stretch}"]


FLITE_SPEAKERS: tuple[FliteSpeaker, ...] = (
    FliteSpeaker(id="flite-kal16", voice="kal16"),
    FliteSpeaker(id="flite-slt", voice="slt"),
    FliteSpeaker(id="flite-awb", voice="awb", duration_stretch=1.05),
    FliteSpeaker(id="flite-rms", voice="rms", duration_stretch=0.95),
)
# CMU ARPAbet (flite -ps) -> the IPA espeak-ng's en-us voice prints (unstressed "er" as espeak's ɚ)
ARPABET_TO_IPA = {
    "aa": "ɑː", "ae": "æ", "ah": "ʌ", "ao": "ɔː", "aw": "aʊ", "ax": "ə", "ay": "aɪ", "eh": "ɛ", "er": "ɚ",
    "ey": "eɪ", "ih": "ɪ", "iy": "iː", "ow": "oʊ", "oy": "ɔɪ", "uh": "ʊ", "uw": "uː", "b": "b", "ch": "tʃ",
    "d": "d", "dh": "ð", "f": "f", "g": "ɡ", "hh": "h", "jh": "dʒ", "k": "k", "l": "l", "m": "m", "n": "n",
    "ng": "ŋ", "p": "p", "r": "ɹ", "s": "s", "sh": "ʃ", "t": "t", "th": "θ", "v": "v", "w": "w", "y": "j",
    "z": "z", "zh": "ʒ",
}


def espeak_executable() -> str:
    """Path of the espeak-ng binary; RuntimeError with the install command when it is missing."""
    return debian_tool("espeak-ng", needed_for="the embedded speech corpus")


def espeak_version() -> str:
    """espeak-ng's version line, e.g. ``eSpeak NG text-to-speech: 1.51``."""
    done = subprocess.run([espeak_executable(), "--version"], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[0].split("  Data at")[0]


def flite_executable() -> str:
    """Path of the flite binary; RuntimeError with the install command when it is missing."""
    return debian_tool("flite", needed_for="the flite speakers of the speech corpus")


def flite_version() -> str:
    """flite's version line, e.g. ``version: flite-2.2-current Sep 2018``."""
    done = subprocess.run([flite_executable(), "--version"], capture_output=True, text=True, check=False)
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if "version" in line]
    if not lines:  # flite --version exits 1 even when it prints its version
        raise RuntimeError(f"mmtok/data/speech.py: `flite --version` printed no version: {done.stdout!r}")
    return lines[0]


def arpabet_to_ipa(phones: str) -> str:
    """flite's ``-ps`` output (``"pau d ih d ae n ax pau"``) -> IPA phonemes separated by spaces.

    Pauses are dropped; a phone missing from :data:`ARPABET_TO_IPA` raises ValueError naming it.
    """
    symbols = []
    for phone in phones.split():
        if phone == "pau":
            continue
        if phone not in ARPABET_TO_IPA:
            raise ValueError(f"mmtok/data/speech.py: flite printed the unknown phone {phone!r} in {phones!r}")
        symbols.append(ARPABET_TO_IPA[phone])
    return " ".join(symbols)


def synthesize_flite(
    text: str, *, speaker: FliteSpeaker, wav_path: str | Path, executable: str | None = None
) -> tuple[torch.Tensor, str]:
    """Speaks ``text`` with flite into ``wav_path`` (16 kHz) and reads it back.

    One call gives both: ``-o wav_path`` writes the audio while ``-ps`` prints the phones spoken.
    Returns (audio FloatTensor [1, N] at :data:`FLITE_RATE`, phonemes from :func:`arpabet_to_ipa`).
    """
    command = [executable or flite_executable(), *speaker.flite_args(), "-ps", "-t", text, "-o", str(wav_path)]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"mmtok/data/speech.py: flite failed (exit {done.returncode}) for speaker {speaker.id!r}, "
            f"text {text!r}: {done.stderr.decode(errors='replace').strip()}"
        )
    data, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)  # [N, C]
    if rate != FLITE_RATE or data.shape[0] == 0:
        raise RuntimeError(
            f"mmtok/data/speech.py: flite wrote {data.shape[0]} samples at {rate} Hz "
            f"(expected > 0 at {FLITE_RATE} Hz) for {text!r}, speaker {speaker.id!r}"
        )
    audio = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)  # [1, N]
    return audio, arpabet_to_ipa(done.stdout.decode("utf-8"))


def clean_phonemes(ipa: str) -> str:
    """espeak's ``--ipa --sep=" "`` output -> phonemes separated by single spaces, no stress marks.

    ``"wˌɛɹ  dˈɪd"`` is printed as ``"w ˌɛɹ  d ˈɪ d"`` (phonemes split by one space, words by two);
    this returns ``"w ɛɹ d ɪ d"``. Length marks stay on their vowel (``iː`` is one phoneme); the
    ASCII colon some voices print (``a:``) becomes the IPA length mark.
    """
    return " ".join(ipa.translate(_STRESS_MARKS).replace(":", "ː").split())


def synthesize(
    text: str, *, speaker: Speaker, wav_path: str | Path, executable: str | None = None
) -> tuple[torch.Tensor, str]:
    """Speaks ``text`` with espeak-ng into ``wav_path`` (22.05 kHz) and reads it back.

    One call gives both: ``-w wav_path`` writes the audio while ``--ipa --sep=" "`` prints the IPA
    phonemes spoken, one space between phonemes and two between words.

    Returns (audio FloatTensor [1, N] at :data:`ESPEAK_RATE`, phonemes from :func:`clean_phonemes`).
    """
    command = [executable or espeak_executable(), *speaker.espeak_args(), "-w", str(wav_path)]
    done = subprocess.run([*command, "--ipa", "--sep= ", text], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"mmtok/data/speech.py: espeak-ng failed (exit {done.returncode}) for speaker {speaker.id!r}, "
            f"text {text!r}: {done.stderr.decode(errors='replace').strip()}"
        )
    data, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)  # [N, C]
    if rate != ESPEAK_RATE or data.shape[0] == 0:
        raise RuntimeError(
            f"mmtok/data/speech.py: espeak-ng wrote {data.shape[0]} samples at {rate} Hz "
            f"(expected > 0 at {ESPEAK_RATE} Hz) for {text!r}, speaker {speaker.id!r}"
        )
    audio = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)  # [1, N]
    return audio, clean_phonemes(done.stdout.decode("utf-8"))


def phonemize(text: str, *, voice: str = "en-us", executable: str | None = None) -> str:
    """The phonemes espeak-ng speaks for ``text`` in ``voice`` (a voice name or a :data:`SPEAKERS` id),
    in the corpus' format (:func:`clean_phonemes`): what a TTS model trained on the corpus reads."""
    speaker = next((s for s in SPEAKERS if s.id == voice), None)
    arguments = speaker.espeak_args() if speaker else ["-v", voice]
    done = subprocess.run([executable or espeak_executable(), *arguments, "-q", "--ipa", "--sep= ", text],
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise UsageError(f"voice {voice!r}: espeak-ng cannot speak {text!r} with it "
                         f"({done.stderr.decode(errors='replace').strip()}), expected an espeak-ng voice "
                         f"(`espeak-ng --voices`) or a corpus speaker ({', '.join(s.id for s in SPEAKERS)})")
    return clean_phonemes(done.stdout.decode("utf-8"))


def trim_silence(
    audio: torch.Tensor, *, sample_rate: int, threshold_db: float = -40.0, margin_seconds: float = 0.05
) -> torch.Tensor:
    """Cuts leading/trailing samples quieter than ``threshold_db`` below the peak, keeping a margin.

    audio: FloatTensor [1, N] -> FloatTensor [1, M], M <= N (unchanged when all silent).
    """
    magnitude = audio.abs().amax(dim=0)  # [N]
    peak = float(magnitude.max()) if magnitude.numel() else 0.0
    loud = torch.nonzero(magnitude > peak * 10 ** (threshold_db / 20)).flatten()
    if peak == 0.0 or loud.numel() == 0:
        return audio
    margin = int(round(margin_seconds * sample_rate))
    start = max(int(loud[0]) - margin, 0)
    stop = min(int(loud[-1]) + 1 + margin, audio.shape[-1])
    return audio[:, start:stop]


# ----------------------------------------------------------------------------- corpus


def assign_speakers(
    num: int, *, seed: int, speakers: tuple[Speaker | FliteSpeaker, ...] = SPEAKERS
) -> list[Speaker | FliteSpeaker]:
    """Balanced and deterministic: each round of len(speakers) utterances uses every speaker once."""
    rng = random.Random(f"mmtok-speakers-{seed}")
    order: list[Speaker | FliteSpeaker] = []
    while len(order) < num:
        order.extend(rng.sample(speakers, len(speakers)))
    return order[:num]


def _corpus_params(*, num_utterances: int, seed: int, sample_rate: int, flite: bool = False) -> dict:
    params = {
        "format_version": FORMAT_VERSION,
        "num_utterances": num_utterances,
        "seed": seed,
        "sample_rate": sample_rate,
        "espeak": espeak_version(),
        "speakers": [asdict(s) for s in SPEAKERS],
    }
    if flite:  # absent otherwise, so espeak-only builds keep their cache key
        params.update({"flite": flite_version(), "flite_speakers": [asdict(s) for s in FLITE_SPEAKERS]})
    return params


def _make_utterance(
    job: tuple[str, str, Speaker | FliteSpeaker, str], *, out_dir: Path, tmp_dir: Path, sample_rate: int,
    executable: str, flite_path: str | None = None,
) -> dict:
    utt_id, text, speaker, split = job
    tmp_wav = tmp_dir / f"{utt_id}.wav"
    if isinstance(speaker, FliteSpeaker):
        audio, phonemes = synthesize_flite(text, speaker=speaker, wav_path=tmp_wav, executable=flite_path)
        rate = FLITE_RATE
    else:
        audio, phonemes = synthesize(text, speaker=speaker, wav_path=tmp_wav, executable=executable)
        rate = ESPEAK_RATE
    tmp_wav.unlink()
    audio = torchaudio.functional.resample(audio, rate, sample_rate)  # [1, N']
    audio = trim_silence(audio, sample_rate=sample_rate)
    relative = f"wavs/{utt_id}.wav"
    write_wav(out_dir / relative, audio, sample_rate=sample_rate)
    return {
        "audio": relative,
        "text": text,
        "phonemes": phonemes,
        "speaker": speaker.id,
        "duration": round(audio.shape[-1] / sample_rate, 4),
        "sample_rate": sample_rate,
        "split": split,
    }


def build_speech_corpus(
    out_dir: str | Path,
    *,
    num_utterances: int = 2000,
    seed: int = 0,
    sample_rate: int = 16000,
    num_workers: int = 2,
    progress: bool = True,
    flite: bool = False,
) -> Path:
    """Builds (or finds already built) the espeak-ng speech corpus in ``out_dir``.

    Returns the path of ``out_dir/manifest.jsonl``. A folder that already holds a build with the
    same ``num_utterances``, ``seed``, ``sample_rate``, espeak-ng version and speakers, with all of
    its wavs, is returned untouched. espeak-ng runs in a pool of ``num_workers`` threads. With
    ``flite`` the :data:`FLITE_SPEAKERS` join the espeak-ng ones (flite must be on PATH).
    """
    if num_workers < 1:
        raise ValueError(f"mmtok/data/speech.py: num_workers must be >= 1, got {num_workers}")
    if sample_rate <= 0:
        raise ValueError(f"mmtok/data/speech.py: sample_rate must be > 0, got {sample_rate}")
    executable = espeak_executable()
    flite_path = flite_executable() if flite else None
    out_dir = Path(out_dir)
    params = _corpus_params(num_utterances=num_utterances, seed=seed, sample_rate=sample_rate, flite=flite)
    if corpus_is_cached(out_dir, params, key="audio", count_key="num_utterances"):
        log.info("speech corpus in %s is up to date (%d utterances)", out_dir, num_utterances)
        return out_dir / "manifest.jsonl"
    if num_utterances < 3:
        raise ValueError(f"mmtok/data/speech.py: need at least 3 utterances (train/valid/test), got {num_utterances}")
    splits = assign_splits(num_utterances, seed=seed)
    width = max(5, len(str(num_utterances - 1)))
    texts = generate_sentences(num_utterances, seed=seed)
    speakers = assign_speakers(num_utterances, seed=seed, speakers=SPEAKERS + FLITE_SPEAKERS if flite else SPEAKERS)
    jobs = [(f"utt{i:0{width}d}", *job) for i, job in enumerate(zip(texts, speakers, splits))]
    (out_dir / "corpus.json").unlink(missing_ok=True)  # an interrupted build must not look finished
    (out_dir / "wavs").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmtok-espeak-") as tmp, ThreadPoolExecutor(num_workers) as pool:
        def make(job: tuple[str, str, Speaker | FliteSpeaker, str]) -> dict:
            return _make_utterance(
                job, out_dir=out_dir, tmp_dir=Path(tmp), sample_rate=sample_rate, executable=executable,
                flite_path=flite_path,
            )

        rows = build_items(pool, make, jobs, out_dir=out_dir, key="audio", desc="espeak-ng corpus", progress=progress)
    remove_stale_files(out_dir / "wavs", "utt*.wav", keep={out_dir / row["audio"] for row in rows})
    return write_corpus_manifest(out_dir, rows, params, key="audio")
