"""Text-to-speech with an :class:`~mmtok.ar.model.ARGenerator` over an audio tokenizer: text ->
phonemes (espeak-ng, as the corpus was labelled) -> codes -> waveform."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmtok.ar.model import ARGenerator
from mmtok.tokens import Tokens


def speech_conditions(model: ARGenerator, tokenizer, phonemes: Sequence[str], *, speaker: str | None = None,
                      prompt: torch.Tensor | None = None, prompt_seconds: float = 3.0) -> dict:
    """The batch of conditions for ``len(phonemes)`` utterances: the phonemes, optionally a speaker
    label and a voice prompt (audio ``[1, N]`` at the tokenizer's rate, its first ``prompt_seconds``
    encoded). A field the generator has no condition for is an error, not silently ignored."""
    keys = model.conditioner.keys
    conditions: dict = {"phonemes": list(phonemes)}
    for name, value in (("phonemes", phonemes), ("speaker", speaker), ("prompt", prompt)):
        if value is not None and name not in keys:
            raise ValueError(f"this generator has no '{name}' condition (it has {keys})")
    if speaker is not None:
        conditions["speaker"] = [speaker] * len(phonemes)
    if prompt is not None:
        samples = round(prompt_seconds * tokenizer.sample_rate)
        device = next(tokenizer.parameters()).device
        codes = tokenizer.encode(prompt[None, :, :samples].to(device)).codes[:, : model.num_codebooks]
        conditions["prompt"] = {"codes": codes.expand(len(phonemes), -1, -1),
                                "lengths": torch.full((len(phonemes),), codes.shape[2], device=device)}
    return conditions


@torch.no_grad()
def synthesize(model: ARGenerator, tokenizer, phonemes: Sequence[str], *, speaker: str | None = None,
               prompt: torch.Tensor | None = None, prompt_seconds: float = 3.0, max_seconds: float = 10.0,
               **sampling) -> tuple[list[torch.Tensor], Tokens]:
    """Waveforms ``[1, N_i]`` (each cut at its end token) and the generated tokens, for a batch of
    phoneme strings. ``sampling``: temperature, top_k, top_p, cfg_scale, generator."""
    conditions = speech_conditions(model, tokenizer, phonemes, speaker=speaker, prompt=prompt,
                                   prompt_seconds=prompt_seconds)
    tokens = model.generate(conditions, batch_size=len(phonemes),
                            max_frames=round(max_seconds * tokenizer.frame_rate), **sampling)
    hop = round(tokenizer.sample_rate / tokenizer.frame_rate)
    audio = [tokenizer.decode(tokens[i])[0, :, : int(tokens.lengths[i]) * hop].cpu()
             for i in range(len(phonemes))]
    return audio, tokens
