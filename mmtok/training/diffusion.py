"""Training the masked generators on a tokenizer's codes: masked diffusion
(:class:`~mmtok.diffusion.model.MaskedDiffusionGenerator`) and ResGen
(:class:`~mmtok.diffusion.resgen.ResGenGenerator`)."""

from __future__ import annotations

from mmtok.diffusion.model import MaskedDiffusionGenerator
from mmtok.diffusion.resgen import ResGenGenerator
from mmtok.training.generators import GeneratorModule


class MaskedDiffusionModule(GeneratorModule):
    """The MDLM NELBO (:meth:`MaskedDiffusionGenerator.loss`). Examples at validation are sampled
    with ``sampler`` (:data:`mmtok.diffusion.samplers.SAMPLERS`) at the real lengths. ``adapt_from``
    (an AR generator's Hub folder) starts the generator from its weights. Other options:
    :class:`~mmtok.training.generators.GeneratorModule`."""

    def __init__(self, *, generator: MaskedDiffusionGenerator, init_from: str | None = None,
                 grow_depth: bool = False, adapt_from: str | None = None, lr: float = 5e-4,
                 weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 300,
                 num_generated_examples: int = 2, temperature: float = 1.0, top_k: int | None = None,
                 sampler: str = "fhs"):
        super().__init__(generator=generator, init_from=init_from, grow_depth=grow_depth, adapt_from=adapt_from,
                         lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
                         num_generated_examples=num_generated_examples,
                         temperature=temperature, top_k=top_k, sampler=sampler)


class ResGenModule(GeneratorModule):
    """ResGen's mixture NLL of the cumulative masked embeddings (:meth:`ResGenGenerator.loss`);
    examples at validation are sampled with its own sampler. Options:
    :class:`~mmtok.training.generators.GeneratorModule`."""

    def __init__(self, *, generator: ResGenGenerator, init_from: str | None = None, grow_depth: bool = False,
                 adapt_from: str | None = None, lr: float = 5e-4, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 300,
                 num_generated_examples: int = 2, temperature: float = 1.0, top_k: int | None = None):
        super().__init__(generator=generator, init_from=init_from, grow_depth=grow_depth, adapt_from=adapt_from,
                         lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
                         num_generated_examples=num_generated_examples,
                         temperature=temperature, top_k=top_k, sampler="resgen")
