"""Training the masked generators on a tokenizer's codes: masked diffusion
(:class:`~mmtok.diffusion.model.MaskedDiffusionGenerator`) and ResGen
(:class:`~mmtok.diffusion.resgen.ResGenGenerator`)."""

from __future__ import annotations

import logging

from mmtok.diffusion.model import MaskedDiffusionGenerator
from mmtok.diffusion.resgen import ResGenGenerator
from mmtok.training.generators import GeneratorModule

log = logging.getLogger(__name__)


def adapt(generator, *, init_from: str | None, adapt_from: str | None) -> None:
    """Start ``generator`` from an AR generator's weights (``adapt_from``,
    :meth:`~mmtok.generators.TokenGenerator.adapt_from_autoregressive`), unless it fine-tunes its own
    family's release (``init_from``): not both."""
    if adapt_from is not None and init_from is not None:
        raise ValueError("give init_from (a generator of this family to fine-tune) or adapt_from (an AR "
                         "generator to start from), not both")
    if adapt_from is not None:
        untouched = generator.adapt_from_autoregressive(adapt_from)
        if untouched:
            log.info("adapted from %s; kept the initialisation of %s", adapt_from, ", ".join(untouched))


class MaskedDiffusionModule(GeneratorModule):
    """The MDLM NELBO (:meth:`MaskedDiffusionGenerator.loss`). Examples at validation are sampled
    with ``sampler`` (:data:`mmtok.diffusion.samplers.SAMPLERS`) at the real lengths. ``adapt_from``
    (an AR generator's Hub folder) starts the generator from its weights (:func:`adapt`). Other
    options: :class:`~mmtok.training.generators.GeneratorModule`."""

    def __init__(self, *, generator: MaskedDiffusionGenerator, init_from: str | None = None,
                 adapt_from: str | None = None, lr: float = 5e-4,
                 weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 300,
                 num_generated_examples: int = 2, temperature: float = 1.0, top_k: int | None = None,
                 sampler: str = "fhs"):
        adapt(generator, init_from=init_from, adapt_from=adapt_from)
        super().__init__(generator=generator, init_from=init_from, lr=lr, weight_decay=weight_decay, betas=betas,
                         warmup_steps=warmup_steps, num_generated_examples=num_generated_examples,
                         temperature=temperature, top_k=top_k, sampler=sampler)


class ResGenModule(GeneratorModule):
    """ResGen's mixture NLL of the cumulative masked embeddings (:meth:`ResGenGenerator.loss`);
    examples at validation are sampled with its own sampler. ``adapt_from``: as
    :class:`MaskedDiffusionModule`'s. Other options: :class:`~mmtok.training.generators.GeneratorModule`."""

    def __init__(self, *, generator: ResGenGenerator, init_from: str | None = None, adapt_from: str | None = None,
                 lr: float = 5e-4, weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95),
                 warmup_steps: int = 300, num_generated_examples: int = 2, temperature: float = 1.0,
                 top_k: int | None = None):
        adapt(generator, init_from=init_from, adapt_from=adapt_from)
        super().__init__(generator=generator, init_from=init_from, lr=lr, weight_decay=weight_decay, betas=betas,
                         warmup_steps=warmup_steps, num_generated_examples=num_generated_examples,
                         temperature=temperature, top_k=top_k, sampler="resgen")
