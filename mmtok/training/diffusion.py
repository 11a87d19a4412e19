"""Training a :class:`~mmtok.diffusion.model.MaskedDiffusionGenerator` on a tokenizer's codes."""

from __future__ import annotations

import torch

from mmtok.diffusion.model import SAMPLERS, MaskedDiffusionGenerator
from mmtok.tokens import Tokens
from mmtok.training.generators import GeneratorModule


def frames_per_phoneme(corpus) -> float:
    """Frames per phoneme over the train split of a token cache: the length model of NAR TTS."""
    frames = phonemes = 0
    for index, entry in enumerate(corpus.entries):
        if entry.get("split", "train") == "train" and entry.get("phonemes"):
            frames += corpus.codes(index).shape[1]
            phonemes += len(entry["phonemes"].split())
    if not phonemes:
        raise ValueError(f"{corpus.folder}: no train utterances with phonemes to measure frames per phoneme")
    return frames / phonemes


class MaskedDiffusionModule(GeneratorModule):
    """The MDLM NELBO (:meth:`MaskedDiffusionGenerator.loss`). At the start of training the
    generator's ``frames_per_phoneme`` is measured on the token cache's train split (it is part of
    the exported config). Examples at validation are sampled with ``sampler`` at the real lengths.
    Options: :class:`~mmtok.training.generators.GeneratorModule`."""

    def __init__(self, *, generator: MaskedDiffusionGenerator, init_from: str | None = None, lr: float = 5e-4,
                 weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 300,
                 num_generated_examples: int = 2, temperature: float = 1.0, top_k: int | None = None,
                 sampler: str = "fhs"):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        super().__init__(generator=generator, init_from=init_from, lr=lr, weight_decay=weight_decay, betas=betas,
                         warmup_steps=warmup_steps, num_generated_examples=num_generated_examples,
                         temperature=temperature, top_k=top_k)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        corpus = getattr(self.trainer.datamodule, "corpus", None) if self.trainer.datamodule else None
        if stage == "fit" and corpus is not None:
            ratio = frames_per_phoneme(corpus)
            self.generator.frames_per_phoneme = ratio
            self.generator._hub_mixin_config["frames_per_phoneme"] = ratio

    @torch.no_grad()
    def generate_examples(self, batch: dict) -> Tokens:
        tokens, _ = self.generator.generate(batch, lengths=batch["lengths"], sampler=self.hparams.sampler,
                                            temperature=self.hparams.temperature, top_k=self.hparams.top_k)
        return tokens
