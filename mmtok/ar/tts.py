"""Text-to-speech with a generator over an audio tokenizer: text -> phonemes (espeak-ng, as the
corpus was labelled) -> codes -> waveform, and its intelligibility. The generator is an
:class:`~mmtok.ar.model.ARGenerator` (stops at its end token) or a
:class:`~mmtok.diffusion.model.MaskedDiffusionGenerator` (length from the phoneme count, any sampler)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio

from mmtok.ar.model import ARGenerator
from mmtok.tokens import Tokens


def pad_audio(audios: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms [1, N_i] -> (zero-padded [B, 1, N], lengths [B])."""
    lengths = torch.tensor([a.shape[-1] for a in audios])
    batch = torch.zeros(len(audios), 1, int(lengths.max()))
    for row, audio in enumerate(audios):
        batch[row, :, : audio.shape[-1]] = audio
    return batch, lengths


@torch.no_grad()
def encode_prompts(model: ARGenerator, tokenizer, audios: Sequence[torch.Tensor], *, seconds: float = 3.0) -> dict:
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


def speech_conditions(model: ARGenerator, tokenizer, phonemes: Sequence[str], *,
                      speakers: Sequence[str] | None = None, prompts: Sequence[torch.Tensor] | None = None,
                      prompt_seconds: float = 3.0) -> dict:
    """The batch of conditions for ``len(phonemes)`` utterances: phonemes, optionally one speaker
    label and one voice prompt (a waveform) per utterance. A field the generator has no condition
    for is an error, not silently ignored."""
    keys = model.conditioner.keys
    for name, value in (("phonemes", phonemes), ("speaker", speakers), ("prompt", prompts)):
        if value is not None and name not in keys:
            raise ValueError(f"this generator has no '{name}' condition (it has {keys})")
        if value is not None and len(value) != len(phonemes):
            raise ValueError(f"{len(value)} {name} values for {len(phonemes)} utterances")
    conditions: dict = {"phonemes": list(phonemes)}
    if speakers is not None:
        conditions["speaker"] = list(speakers)
    if prompts is not None:
        conditions["prompt"] = encode_prompts(model, tokenizer, prompts, seconds=prompt_seconds)
    return conditions


@torch.no_grad()
def synthesize(model: ARGenerator, tokenizer, phonemes: Sequence[str], *, speakers: Sequence[str] | None = None,
               prompts: Sequence[torch.Tensor] | None = None, prompt_seconds: float = 3.0,
               max_seconds: float = 10.0, sampler: str | None = None, num_steps: int | None = None,
               **sampling) -> tuple[list[torch.Tensor], Tokens]:
    """Waveforms ``[1, N_i]`` and the generated tokens for a batch of phoneme strings. ``sampling``:
    temperature, top_k, top_p, cfg_scale, generator; ``sampler`` and ``num_steps`` choose how a
    masked diffusion generator samples (default: first-hitting)."""
    from mmtok.diffusion.model import MaskedDiffusionGenerator

    conditions = speech_conditions(model, tokenizer, phonemes, speakers=speakers, prompts=prompts,
                                   prompt_seconds=prompt_seconds)
    if isinstance(model, MaskedDiffusionGenerator):
        lengths = model.num_frames(phonemes).clamp(max=round(max_seconds * tokenizer.frame_rate))
        tokens, _ = model.generate(conditions, lengths=lengths, sampler=sampler or "fhs", num_steps=num_steps,
                                   **sampling)
    else:
        if sampler is not None:
            raise ValueError(f"sampler {sampler!r}: an autoregressive generator samples step by step")
        tokens = model.generate(conditions, batch_size=len(phonemes),
                                max_frames=round(max_seconds * tokenizer.frame_rate), **sampling)
    hop = round(tokenizer.sample_rate / tokenizer.frame_rate)
    audio = [tokenizer.decode(tokens[i])[0, :, : int(tokens.lengths[i]) * hop].cpu()
             for i in range(len(phonemes))]
    return audio, tokens


MODES = ("speaker", "prompt")


@torch.no_grad()
def evaluate_tts(model: ARGenerator, tokenizer, judge, data: str | Path, *, mode: str = "speaker",
                 split: str = "test", max_items: int | None = 100, batch_size: int = 16,
                 prompt_seconds: float = 3.0, max_seconds: float = 10.0, seed: int = 0,
                 **sampling) -> dict:
    """Speak the phonemes of a corpus split and score the speech with a phoneme recognizer.

    ``mode="speaker"``: each utterance in its corpus voice (the speaker label). ``"prompt"``: in the
    voice of a ``prompt_seconds`` prompt cut from *another* utterance of the same speaker in the split
    (no label). Returns PER against the corpus phonemes, the ratio of generated to real durations,
    the fraction of utterances that ended with the end token (None for a generator without one), and
    the generation time.
    """
    from mmtok.data.audio import load_audio, read_manifest
    from mmtok.metrics import error_rate

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    path = Path(data)
    entries = [e for e in read_manifest(path / "manifest.jsonl" if path.is_dir() else path)
               if e.get("split") == split][:max_items]
    if not entries or any("phonemes" not in e for e in entries):
        raise ValueError(f"{data}: the {split} split needs utterances with 'phonemes'")
    rng = torch.Generator().manual_seed(seed)
    references, hypotheses, ratios, ended, seconds = [], [], [], 0, 0.0
    for start in range(0, len(entries), batch_size):
        chunk = entries[start:start + batch_size]
        options = {"speakers": [e["speaker"] for e in chunk]} if mode == "speaker" else {
            "prompts": [load_audio(_other_utterance(entries, e)["audio"], sample_rate=tokenizer.sample_rate)
                        for e in chunk]}
        started = time.perf_counter()
        audio, tokens = synthesize(model, tokenizer, [e["phonemes"] for e in chunk], prompt_seconds=prompt_seconds,
                                   max_seconds=max_seconds, generator=rng, **options, **sampling)
        seconds += time.perf_counter() - started
        ended += int((tokens.lengths < round(max_seconds * tokenizer.frame_rate)).sum())
        batch, lengths = pad_audio(audio)
        if tokenizer.sample_rate != judge.sample_rate:
            batch = torchaudio.functional.resample(batch, tokenizer.sample_rate, judge.sample_rate)
            lengths = lengths * judge.sample_rate // tokenizer.sample_rate
        hypotheses += [h.split() for h in judge.eval().transcribe(batch, lengths)]
        references += [e["phonemes"].split() for e in chunk]
        ratios += [a.shape[-1] / tokenizer.sample_rate / e["duration"] for a, e in zip(audio, chunk)]
    return {"mode": mode, "per": error_rate(references, hypotheses), "duration_ratio": sum(ratios) / len(ratios),
            "ended": ended / len(entries) if model.backbone.end_token else None,  # a fixed length ends nothing
            "utterances": len(entries), "generation_s": seconds}


def _other_utterance(entries: list[dict], entry: dict) -> dict:
    """The next utterance after ``entry`` (cyclically) by the same speaker, or itself if it is alone."""
    same = [e for e in entries if e["speaker"] == entry["speaker"]]
    return same[(same.index(entry) + 1) % len(same)]
