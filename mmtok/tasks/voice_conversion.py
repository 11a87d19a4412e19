"""Zero-shot voice conversion: each source file's words and timing in the voice of one prompt.

What ``mmtok convert MODEL SOURCE --prompt TARGET.wav --out DIR`` runs. The model is any tokenizer
with ``convert(source, prompt, source_lengths=, prompt_lengths=)`` (Vec-Tok: the source's semantic
tokens, decoded by inverse k-means with the prompt's vectors, then vocoded).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchaudio

from mmtok.errors import UsageError
from mmtok.media import AUDIO_SUFFIXES, load_audio, write_wav


def conversion_pairs(source: Path, out: Path) -> list[tuple[Path, Path]]:
    """(source file, output wav) pairs: a file gives ``out/<stem>.wav``; a folder every audio file under
    it, the tree mirrored under ``out``."""
    from mmtok.errors import DataError, MissingFileError

    if not source.exists():
        raise MissingFileError(f"{source}: no such file or folder")
    if source.is_file():
        return [(source, out / f"{source.stem}.wav")]
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"{source}: no {'/'.join(AUDIO_SUFFIXES)} files in this folder")
    return [(p, out / p.relative_to(source).with_suffix(".wav")) for p in files]


def convert_files(model, pairs: list[tuple[Path, Path]], prompt: Path, *, overwrite: bool = False,
                  fail_fast: bool = False) -> int:
    """Convert every pair (past a file that fails, listed at the end); returns the files written."""
    from mmtok.files import process_files

    if not callable(getattr(model, "convert", None)):
        raise UsageError(f"{type(model).__name__} does not convert voices (a Vec-Tok model does)")
    prompt_audio = load_audio(prompt, sample_rate=model.sample_rate)[None]

    def convert(source: Path, target: Path) -> None:
        audio = load_audio(source, sample_rate=model.sample_rate)[None]
        write_wav(target, model.convert(audio, prompt_audio)[0], sample_rate=model.sample_rate)

    return process_files(pairs, convert, desc="convert", overwrite=overwrite, fail_fast=fail_fast)


def _other_speaker(entries: list[dict], index: int) -> dict:
    """The next utterance after ``entries[index]`` (cyclically) by a different speaker."""
    for step in range(1, len(entries)):
        other = entries[(index + step) % len(entries)]
        if other["speaker"] != entries[index]["speaker"]:
            return other
    raise ValueError("voice conversion needs utterances of at least two speakers")


def _same_speaker(entries: list[dict], index: int) -> dict:
    """The next utterance after ``entries[index]`` (cyclically) by the same speaker, or itself."""
    same = [e for e in entries if e["speaker"] == entries[index]["speaker"]]
    return same[(same.index(entries[index]) + 1) % len(same)]


@torch.no_grad()
def evaluate_vectok(model, judge, data: str | Path, *, split: str = "test", max_items: int | None = 100,
                    batch_size: int = 8, speaker_encoder=None) -> dict:
    """Vec-Tok on the held-out utterances of ``split`` (each with ``phonemes`` and ``speaker``):

    - ``tokens``: units and BPE ids per second of speech, and bits per second (log2 of the vocabulary
      per token);
    - PER by ``judge`` (a phoneme recognizer) of the real audio, of the vocoder on the true vectors,
      of resynthesis from the units with the utterance's own first seconds as the prompt, and of voice
      conversion: the units spoken with a prompt from the next utterance by another speaker;
    - with ``speaker_encoder``: cosine similarity of the resynthesis to its original; of the
      conversion to the target prompt and to the source; and of real same-speaker and
      different-speaker pairs (the reference points of both).
    """
    from mmtok.data.manifest import read_manifest
    from mmtok.media import pad_audio
    from mmtok.metrics import error_rate, speaker_similarity

    entries = [e for e in read_manifest(data, key="audio") if e.get("split") == split]
    entries = [e for e in entries if "phonemes" in e and "speaker" in e][:max_items]
    if not entries:
        raise ValueError(f"{data}: the {split} split has no utterances with 'phonemes' and 'speaker'")
    model, judge = model.eval(), judge.eval()
    rate, prompt_samples = model.sample_rate, round(model.prompt_frames * model.hop_length)

    def load(entry: dict) -> torch.Tensor:
        return load_audio(entry["audio"], sample_rate=rate)

    outputs = {"real": [], "vocoder": [], "resynthesis": [], "conversion": []}
    pairs = {"source": [], "target": [], "same": []}
    units = bpe_ids = samples = 0
    changes = {"words": 0.0, "voice": 0.0}
    for start in range(0, len(entries), batch_size):
        indices = range(start, min(start + batch_size, len(entries)))
        sources = [load(entries[i]) for i in indices]
        targets = [load(_other_speaker(entries, i)) for i in indices]
        audio, lengths = pad_audio(sources)
        tokens = model.encode(audio, lengths)
        units += int(tokens.lengths.sum())
        bpe_ids += int(model.to_bpe(tokens).lengths.sum())
        samples += int(lengths.sum())
        vectors, _ = model.speech_vectors(audio, lengths)
        target_audio, target_lengths = pad_audio(targets)
        produced = {"vocoder": model.vocode(vectors),
                    "resynthesis": model.decode(tokens, prompt=audio, prompt_lengths=lengths),
                    "conversion": model.decode(tokens, prompt=target_audio, prompt_lengths=target_lengths)}
        for key, change in prompt_changes(model, entries, indices, tokens).items():
            changes[key] += change
        outputs["real"] += sources
        for name, batch in produced.items():
            outputs[name] += [item[:, :n] for item, n in zip(batch, lengths.tolist())]
        pairs["source"] += sources
        pairs["target"] += [t[:, :prompt_samples] for t in targets]
        pairs["same"] += [load(_same_speaker(entries, i)) for i in indices]
    references = [e["phonemes"].split() for e in entries]
    seconds = samples / rate
    result = {"utterances": len(entries), "seconds": seconds,
              "units_per_s": units / seconds, "bpe_per_s": bpe_ids / seconds,
              "units_bps": units / seconds * math.log2(model.num_units),
              "bpe_bps": bpe_ids / seconds * math.log2(model.bpe.vocab_size),
              "prompt_words_change": changes["words"] / len(entries),
              "prompt_voice_change": changes["voice"] / len(entries)}
    for name, audios in outputs.items():
        batch, lengths = pad_audio(audios)
        hypotheses = [h.split() for h in judge.transcribe(_resample(batch, rate, judge.sample_rate),
                                                          lengths * judge.sample_rate // rate)]
        result[f"per_{name}"] = error_rate(references, hypotheses)
    if speaker_encoder is not None:
        def similarity(a, b) -> float:
            return float(speaker_similarity(speaker_encoder, a, b, rate).mean())

        result |= {"similarity_resynthesis_to_original": similarity(outputs["resynthesis"], pairs["source"]),
                   "similarity_conversion_to_target": similarity(outputs["conversion"], pairs["target"]),
                   "similarity_conversion_to_source": similarity(outputs["conversion"], pairs["source"]),
                   "similarity_real_same_speaker": similarity(pairs["same"], pairs["source"]),
                   "similarity_real_other_speaker": similarity(pairs["target"], pairs["source"])}
    return result


@torch.no_grad()
def prompt_changes(model, entries: list[dict], indices, tokens) -> dict[str, float]:
    """How much the inverse k-means output moves when the prompt's words change but not its voice, and
    when its voice changes: for each source, the target prompt T (another speaker), T' (another
    utterance of T's speaker) and C (a speaker other than T's); summed over the items, the RMS over
    frames and channels of inverse(units, T') − inverse(units, T) ("words") and of
    inverse(units, C) − inverse(units, T) ("voice"). Small words, large voice: the prompt gives the
    voice, not the content."""
    from mmtok.media import pad_audio

    position = {id(e): i for i, e in enumerate(entries)}
    target = [_other_speaker(entries, i) for i in indices]
    prompts = {"T": target, "words": [_same_speaker(entries, position[id(t)]) for t in target],
               "voice": [_other_speaker(entries, position[id(t)]) for t in target]}
    units = tokens.codes[:, 0]
    valid = torch.arange(units.shape[1])[None, :] < tokens.lengths[:, None]
    inverse = {}
    for name, chosen in prompts.items():
        audio, lengths = pad_audio([load_audio(e["audio"], sample_rate=model.sample_rate) for e in chosen])
        vectors, prompt_valid = model.prompt_vectors(audio, lengths)
        inverse[name] = model.inverse(units, valid, vectors, prompt_valid)
    mask = valid[:, None, :].float()

    def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (((a - b) ** 2 * mask).sum((1, 2)) / (mask.sum((1, 2)) * a.shape[1])).sqrt()

    return {key: float(rms(inverse[key], inverse["T"]).sum()) for key in ("words", "voice")}


def _resample(audio: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    return audio if rate == target else torchaudio.functional.resample(audio, rate, target)
