"""Training an :class:`~mmtok.ar.model.ARGenerator` on a tokenizer's codes."""

from __future__ import annotations

from mmtok.ar.model import ARGenerator
from mmtok.training.generators import GeneratorModule


class ARModule(GeneratorModule):
    """Next-step cross-entropy over the pattern's valid slots (and the end token), per codebook
    logged (:meth:`ARGenerator.loss`). Examples at validation run until their end token, or twice
    the real item's length. Options: :class:`~mmtok.training.generators.GeneratorModule`."""

    def __init__(self, *, generator: ARGenerator, init_from: str | None = None, grow_depth: bool = False,
                 adapt_from: str | None = None, lr: float = 5e-4, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 300,
                 num_generated_examples: int = 2, temperature: float = 1.0, top_k: int | None = None):
        super().__init__(generator=generator, init_from=init_from, grow_depth=grow_depth, adapt_from=adapt_from,
                         lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
                         num_generated_examples=num_generated_examples,
                         temperature=temperature, top_k=top_k)
