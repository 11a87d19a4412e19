"""Text-to-speech with a generator over an audio tokenizer: text -> phonemes (espeak-ng, as the
corpus was labelled) -> codes -> waveform, and its intelligibility.

The length of an utterance: a generator with a duration predictor (its phoneme condition's, see
:class:`~mmtok.conditioning.PhonemeCondition`) gets each phoneme's predicted frames, which are also
given to it as the ``durations`` the phonemes are placed by (aligned TTS, as FastSpeech 2); a
generator that stops by itself (an AR model with an end token) gets ``max_seconds``; one that needs
the length first (masked diffusion) gets ``frames_per_phoneme`` × the phoneme count, measured on
the training data (as non-autoregressive TTS models such as E2 and F5-TTS do with the text length).
``pace`` (``mmtok generate --pace``) multiplies the predicted or measured length: 1.2 is 20 % longer,
slower speech, 0.8 faster.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio

from mmtok.conditioning import PhonemeCondition
from mmtok.conditioning.durations import round_durations
from mmtok.errors import DataError, UsageError
from mmtok.media import pad_audio
from mmtok.tasks.base import Task
from mmtok.tokens import Tokens


class TextToSpeech(Task):
    """Sentences in a corpus voice (``--speaker``) or a prompted one (``--prompt voice.wav``)."""

    def __init__(self, *, frames_per_phoneme: float = 5.0, max_seconds: float = 10.0):
        super().__init__(frames_per_phoneme=frames_per_phoneme, max_seconds=max_seconds)
        self.frames_per_phoneme, self.max_seconds = frames_per_phoneme, max_seconds

    def measure(self, corpus) -> None:
        """Frames per phoneme over the train split of a token cache: the length model of NAR TTS."""
        frames = phonemes = 0
        for index, entry in enumerate(corpus.entries):
            if entry.get("split", "train") == "train" and entry.get("phonemes"):
                frames += corpus.codes(index).shape[1]
                phonemes += len(entry["phonemes"].split())
        if not phonemes:
            raise ValueError(f"{corpus.folder}: no train utterances with phonemes to measure frames per phoneme")
        self.frames_per_phoneme = self.init_args["frames_per_phoneme"] = frames / phonemes

    def lengths(self, generator, phonemes: Sequence[str], *, frame_rate: float, max_seconds: float | None = None,
                pace: float = 1.0, durations: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Frames to generate per utterance (at most, for a generator that stops by itself): the sum
        of ``durations`` when given (:meth:`durations`), else the limit for a generator that stops by
        itself and is not given frame-placed conditions, else ``pace`` × frames per phoneme × the count."""
        limit = round((max_seconds or self.max_seconds) * frame_rate)
        if durations is not None:
            return torch.tensor([sum(d) for d in durations]).clamp(1, limit)
        if generator.stops_by_itself and not generator.frame_aligned:
            return torch.full((len(phonemes),), limit)
        counts = torch.tensor([len(p.split()) for p in phonemes], dtype=torch.float)
        return (counts * self.frames_per_phoneme * pace).round().long().clamp(1, limit)

    @staticmethod
    def duration_condition(generator) -> PhonemeCondition | None:
        """The generator's phoneme condition that has a duration predictor, or None."""
        return next((c for c in generator.conditioner.conditions
                     if isinstance(c, PhonemeCondition) and c.duration_predictor is not None), None)

    def durations(self, generator, phonemes: Sequence[str], *, speakers: Sequence[str] | None = None,
                  pace: float = 1.0) -> list[list[int]] | None:
        """Whole frames per phoneme predicted by the generator's duration predictor, × ``pace``
        (:func:`~mmtok.conditioning.durations.round_durations`); None without a predictor."""
        condition = self.duration_condition(generator)
        if condition is None:
            return None
        return [round_durations(frames, pace=pace) for frames in condition.predict_frames(phonemes, speakers)]

    @staticmethod
    def check_pace(generator, pace: float | None) -> float:
        """``--pace`` (1 when not given), or the error naming it."""
        if pace is None:
            return 1.0
        if not pace > 0:
            raise UsageError(f"--pace {pace}: must be > 0 (1: the predicted pace; 1.2: 20 % longer speech)")
        if generator.stops_by_itself and not generator.frame_aligned and pace != 1.0:
            raise UsageError(f"--pace {pace}: this generator ends its utterances itself (an end token) and is given "
                             "no length, so there is no length to scale")
        return float(pace)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--text", action="append", default=[], help="a sentence to speak (repeatable)")
        parser.add_argument("--text-file", help="a file with one sentence per line")
        parser.add_argument("--prompt", help="a wav of the voice to imitate (its first --prompt-seconds are used)")
        parser.add_argument("--prompt-seconds", type=float, default=3.0)
        parser.add_argument("--speaker", help="a corpus speaker id (the speaker condition), e.g. us-f3")
        parser.add_argument("--voice", help="espeak-ng voice used to phonemize the text (default: the speaker's, "
                                            "or en-us)")
        parser.add_argument("--max-seconds", type=float, default=None, help="the longest utterance")
        parser.add_argument("--pace", type=float, default=None,
                            help="multiplies the predicted (or measured) durations: 1.2 = 20 %% longer, slower "
                                 "speech; 0.8 = faster (default 1)")

    def run(self, generator, tokenizer, args, *, out, rng, sampling) -> list[Path]:
        from mmtok.media import write_spectrogram_png, write_wav

        texts, phonemes, prompt = self._request(generator, tokenizer, args)
        pace = self.check_pace(generator, args.pace)
        started = time.perf_counter()
        audio, tokens = synthesize(generator, tokenizer, phonemes, task=self,
                                   speakers=[args.speaker] * len(texts) if args.speaker else None,
                                   prompts=[prompt] * len(texts) if prompt is not None else None,
                                   prompt_seconds=args.prompt_seconds, max_seconds=args.max_seconds, pace=pace,
                                   rng=rng, **sampling)
        seconds = time.perf_counter() - started
        lines, files = [], []
        for i, (text, wave) in enumerate(zip(texts, audio)):
            path = out / f"{i:02d}_{_slug(text)}.wav"
            files += [write_wav(path, wave, sample_rate=tokenizer.sample_rate),
                      write_spectrogram_png(path.with_suffix(".png"), wave, sample_rate=tokenizer.sample_rate,
                                            title=text)]
            lines.append({"audio": path.name, "text": text, "phonemes": phonemes[i], "speaker": args.speaker,
                          "sampler": generator.check_sampler(sampling.get("sampler")), "prompt": args.prompt,
                          "pace": pace, "seconds": round(wave.shape[-1] / tokenizer.sample_rate, 3),
                          "frames": int(tokens.lengths[i]), "generation_s": round(seconds, 2)})
            print(f"{path}\t{lines[-1]['seconds']:.2f} s\t{text}")
        if prompt is not None:  # what the voice was taken from, to listen to next to the results
            files.append(write_wav(out / "prompt.wav", prompt[:, : round(args.prompt_seconds * tokenizer.sample_rate)],
                                   sample_rate=tokenizer.sample_rate))
        (out / "generated.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        print(f"generated {len(texts)} utterance(s) in {seconds:.1f} s (the batch together)")
        return files + [out / "generated.jsonl"]

    def evaluate(self, generator, tokenizer, judge, data, *, samples_per_request: int = 1, max_items: int | None = 100,
                 rng: torch.Generator | None = None, split: str = "test", **sampling) -> list[dict]:
        """:func:`evaluate_tts` in both modes (corpus voice, 3 s prompt) on ``split``; one
        utterance per sentence (``samples_per_request`` is not used)."""
        seed = int(torch.randint(0, 2**31, (1,), generator=rng)) if rng is not None else 0
        sampling = {k: v for k, v in sampling.items() if v is not None}
        return [evaluate_tts(generator, tokenizer, judge, data, mode=mode, split=split, max_items=max_items, seed=seed,
                             **sampling)
                for mode in MODES]

    @staticmethod
    def _request(generator, tokenizer, args) -> tuple[list[str], list[str], torch.Tensor | None]:
        """(sentences, their phonemes, the prompt waveform or None), or the error naming the flag at fault."""
        from mmtok.data.audio import load_audio
        from mmtok.data.speech import phonemize

        texts = list(args.text)
        if args.text_file:
            texts += [line.strip() for line in Path(args.text_file).read_text().splitlines() if line.strip()]
        if not texts:
            raise UsageError("--text: missing, expected a sentence (repeatable) or --text-file")
        empty = next((text for text in texts if not text.strip()), None)
        if empty is not None:
            raise UsageError(f"--text {empty!r}: empty, expected a sentence")
        conditions = {c.key: c for c in generator.conditioner.conditions}
        for flag, key, value in (("--speaker", "speaker", args.speaker), ("--prompt", "prompt", args.prompt)):
            if key == "prompt" and tokenizer.takes_voice_prompt:
                continue  # the tokenizer speaks in the prompt's voice
            if value is not None and key not in conditions:
                raise UsageError(f"{flag} {value}: this generator has no '{key}' condition (it has "
                                 f"{', '.join(conditions)})")
        if args.speaker is not None and args.speaker not in conditions["speaker"].classes:
            raise UsageError(f"--speaker {args.speaker}: not a speaker of this generator "
                             f"(known: {', '.join(conditions['speaker'].classes)})")
        voice = args.voice or args.speaker or "en-us"
        phonemes = [phonemize(text, voice=voice) for text in texts]
        silent = next((text for text, p in zip(texts, phonemes) if not p.strip()), None)
        if silent is not None:
            raise UsageError(f"--text {silent!r}: espeak-ng ({voice}) speaks no phonemes for it, expected words")
        prompt = None
        if args.prompt:
            prompt = load_audio(args.prompt, sample_rate=tokenizer.sample_rate)
            hop = round(tokenizer.sample_rate / tokenizer.frame_rate)
            if prompt.shape[-1] < hop:
                raise DataError(f"{args.prompt}: {prompt.shape[-1]} samples, shorter than one frame ({hop} samples "
                                f"at {tokenizer.sample_rate} Hz), expected a few seconds of the voice")
        return texts, phonemes, prompt


def _slug(text: str, width: int = 40) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())[:width].strip("_") or "utterance"


@torch.no_grad()
def encode_prompts(model, tokenizer, audios: Sequence[torch.Tensor], *, seconds: float = 3.0) -> dict:
    """The voice-prompt field for a batch: each waveform's first ``seconds`` (``[1, N]`` at the
    tokenizer's rate) encoded, the first ``model.num_codebooks`` codebooks kept, padded."""
    samples = round(seconds * tokenizer.sample_rate)
    device = next(tokenizer.parameters()).device
    codes = [tokenizer.encode(audio[None, :, :samples].to(device)).codes[0, : model.num_codebooks] for audio in audios]
    lengths = torch.tensor([c.shape[1] for c in codes], device=device)
    padded = torch.zeros(len(codes), model.num_codebooks, int(lengths.max()), dtype=torch.long, device=device)
    for row, c in enumerate(codes):
        padded[row, :, : c.shape[1]] = c
    return {"codes": padded, "lengths": lengths}


def speech_conditions(model, tokenizer, phonemes: Sequence[str], *,
                      speakers: Sequence[str] | None = None, prompts: Sequence[torch.Tensor] | None = None,
                      prompt_seconds: float = 3.0) -> dict:
    """The batch of conditions for ``len(phonemes)`` utterances: phonemes, optionally one speaker
    label and one voice prompt (a waveform) per utterance. A field the generator has no condition
    for is an error, not silently ignored."""
    keys = model.conditioner.keys
    if prompts is not None and "prompt" not in keys and tokenizer.takes_voice_prompt:
        prompts = None  # the voice is the tokenizer's to give (synthesize hands it the prompt)
    for name, value in (("phonemes", phonemes), ("speaker", speakers), ("prompt", prompts)):
        if value is not None and name not in keys:
            raise UsageError(f"{name}: this generator has no '{name}' condition (it has {keys})")
        if value is not None and len(value) != len(phonemes):
            raise ValueError(f"{len(value)} {name} values for {len(phonemes)} utterances")
    conditions: dict = {"phonemes": list(phonemes)}
    if speakers is not None:
        conditions["speaker"] = list(speakers)
    if prompts is not None:
        conditions["prompt"] = encode_prompts(model, tokenizer, prompts, seconds=prompt_seconds)
    return conditions


@torch.no_grad()
def synthesize(model, tokenizer, phonemes: Sequence[str], *, task: TextToSpeech | None = None,
               speakers: Sequence[str] | None = None, prompts: Sequence[torch.Tensor] | None = None,
               prompt_seconds: float = 3.0, max_seconds: float | None = None, pace: float = 1.0,
               rng: torch.Generator | None = None, **sampling) -> tuple[list[torch.Tensor], Tokens]:
    """Waveforms ``[1, N_i]`` and the generated tokens for a batch of phoneme strings. ``task``: the
    generator's own (its frames per phoneme) by default; ``pace`` scales the predicted (or measured)
    durations (> 1: longer); ``sampling``: sampler, steps, temperature, top_k, top_p, cfg_scale."""
    from mmtok.tasks import build_task

    task = task or build_task(model.task)
    conditions = speech_conditions(model, tokenizer, phonemes, speakers=speakers, prompts=prompts,
                                   prompt_seconds=prompt_seconds)
    durations = task.durations(model, phonemes, speakers=speakers, pace=pace)
    if durations is not None:  # the phonemes are placed by them
        conditions[task.duration_condition(model).durations] = durations
    lengths = task.lengths(model, phonemes, frame_rate=tokenizer.frame_rate, max_seconds=max_seconds, pace=pace,
                           durations=durations)
    tokens = model.generate(conditions, lengths=lengths, rng=rng, **sampling)
    if prompts is not None and tokenizer.takes_voice_prompt:  # the voice comes (also) from the tokenizer
        samples = round(prompt_seconds * tokenizer.sample_rate)
        audio = [tokenizer.decode(tokens[i], prompt=prompts[i][None, :, :samples])[0].cpu()
                 for i in range(len(phonemes))]
    else:
        audio = [tokenizer.decode(tokens[i])[0].cpu() for i in range(len(phonemes))]
    return audio, tokens


MODES = ("speaker", "prompt")


@torch.no_grad()
def evaluate_tts(model, tokenizer, judge, data: str | Path, *, mode: str = "speaker",
                 split: str = "test", max_items: int | None = 100, batch_size: int = 16,
                 prompt_seconds: float = 3.0, max_seconds: float | None = None, seed: int = 0,
                 speaker_encoder=None, **sampling) -> dict:
    """Speak the phonemes of a corpus split and score the speech with a phoneme recognizer.

    ``mode="speaker"``: each utterance in its corpus voice (the speaker label). ``"prompt"``: in the
    voice of a ``prompt_seconds`` prompt cut from *another* utterance of the same speaker in the split
    (no label). Returns PER against the corpus phonemes (and the per-sentence ``references`` and
    ``hypotheses`` for intervals), the mean ratio of generated to real durations and the mean
    relative duration error |generated / real - 1|, the fraction of utterances that ended before the
    length limit (None for a generator that does not stop by itself), and the generation time.

    With a ``speaker_encoder`` (:class:`mmtok.judges.speakers.SpeakerEncoder`) it also returns the mean
    cosine similarity of the generated speech to that prompt (``speaker_similarity``, in both modes)
    and, as its reference, of the real utterance to the same prompt (``real_similarity``: two real
    utterances of the speaker).
    """
    from mmtok.data.audio import load_audio
    from mmtok.data.manifest import read_manifest
    from mmtok.metrics import error_rate, speaker_similarity
    from mmtok.tasks import build_task

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    task = build_task(model.task)
    limit = round((max_seconds or task.max_seconds) * tokenizer.frame_rate)
    entries = [e for e in read_manifest(data, key="audio") if e.get("split") == split][:max_items]
    if not entries or any("phonemes" not in e for e in entries):
        raise ValueError(f"{data}: the {split} split needs utterances with 'phonemes'")
    rng = torch.Generator().manual_seed(seed)
    references, hypotheses, ratios, ended, seconds = [], [], [], 0, 0.0
    similarities, real_similarities = [], []
    prompt_samples = round(prompt_seconds * tokenizer.sample_rate)
    for start in range(0, len(entries), batch_size):
        chunk = entries[start:start + batch_size]
        prompts = [load_audio(_other_utterance(entries, e)["audio"], sample_rate=tokenizer.sample_rate)
                   for e in chunk]
        options = {"speakers": [e["speaker"] for e in chunk]} if mode == "speaker" else {"prompts": prompts}
        started = time.perf_counter()
        audio, tokens = synthesize(model, tokenizer, [e["phonemes"] for e in chunk], task=task,
                                   prompt_seconds=prompt_seconds, max_seconds=max_seconds, rng=rng, **options,
                                   **sampling)
        seconds += time.perf_counter() - started
        ended += int((tokens.lengths < limit).sum())
        batch, lengths = pad_audio(audio)
        if tokenizer.sample_rate != judge.sample_rate:
            batch = torchaudio.functional.resample(batch, tokenizer.sample_rate, judge.sample_rate)
            lengths = lengths * judge.sample_rate // tokenizer.sample_rate
        hypotheses += [h.split() for h in judge.eval().transcribe(batch, lengths)]
        references += [e["phonemes"].split() for e in chunk]
        ratios += [a.shape[-1] / tokenizer.sample_rate / e["duration"] for a, e in zip(audio, chunk)]
        if speaker_encoder is not None:
            cut = [p[..., :prompt_samples] for p in prompts]
            real = [load_audio(e["audio"], sample_rate=tokenizer.sample_rate) for e in chunk]
            similarities += speaker_similarity(speaker_encoder, audio, cut, tokenizer.sample_rate).tolist()
            real_similarities += speaker_similarity(speaker_encoder, real, cut, tokenizer.sample_rate).tolist()
    result = {"mode": mode, "per": error_rate(references, hypotheses), "references": references,
              "hypotheses": hypotheses, "duration_ratio": sum(ratios) / len(ratios),
              "duration_error": sum(abs(r - 1) for r in ratios) / len(ratios),
              "ended": ended / len(entries) if model.stops_by_itself else None,  # a fixed length ends nothing
              "utterances": len(entries), "generation_s": seconds}
    if speaker_encoder is not None:
        result["speaker_similarity"] = sum(similarities) / len(similarities)
        result["real_similarity"] = sum(real_similarities) / len(real_similarities)
    return result


def _other_utterance(entries: list[dict], entry: dict) -> dict:
    """The next utterance after ``entry`` (cyclically) by the same speaker, or itself if it is alone."""
    same = [e for e in entries if e["speaker"] == entry["speaker"]]
    return same[(same.index(entry) + 1) % len(same)]
