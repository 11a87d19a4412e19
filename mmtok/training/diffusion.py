"""Training a :class:`~mmtok.diffusion.model.MaskedDiffusionGenerator` on a tokenizer's codes."""

from __future__ import annotations

import logging

import torch

from mmtok.diffusion.model import SAMPLERS, MaskedDiffusionGenerator
from mmtok.tokens import Tokens
from mmtok.training.generators import GeneratorModule

log = logging.getLogger(__name__)


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
    ``adapt_from`` (an AR generator's Hub folder) starts the generator from its weights
    (:meth:`MaskedDiffusionGenerator.adapt_from_autoregressive`). Other options:
    :class:`~mmtok.training.generators.GeneratorModule`."""

    def __init__(self, *, generator: MaskedDiffusionGenerator, init_from: str | None = None,
                 adapt_from: str | None = None, lr: float = 5e-4,
                 weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 300,
                 num_generated_examples: int = 2, temperature: float = 1.0, top_k: int | None = None,
                 sampler: str = "fhs"):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if adapt_from is not None and init_from is not None:
            raise ValueError("give init_from (a masked diffusion generator to fine-tune) or adapt_from (an AR "
                             "generator to start from), not both")
        if adapt_from is not None:
            untouched = generator.adapt_from_autoregressive(adapt_from)
            if untouched:
                log.info("adapted from %s; kept the initialisation of %s", adapt_from, ", ".join(untouched))
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
