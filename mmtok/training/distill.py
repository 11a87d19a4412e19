"""Training a Distilled Decoding student (:class:`~mmtok.distill.model.DistilledGenerator`) on an AR
teacher's pairs (:class:`~mmtok.data.pairs.PairDataModule`)."""

from __future__ import annotations

from mmtok.distill.model import DistilledGenerator
from mmtok.errors import DataError
from mmtok.training.generators import GeneratorModule


class DistillModule(GeneratorModule):
    """Builds the student from ``teacher`` (a Hub folder: its backbone, conditions and weights; see
    :meth:`DistilledGenerator.from_teacher`) and trains it with cross-entropy to the pairs' tokens.
    ``inputs="condition"`` trains the naive one-step baseline instead. Examples at validation are the
    student's one-step samples next to the teacher's pairs. Other options:
    :class:`~mmtok.training.generators.GeneratorModule`."""

    def __init__(self, *, teacher: str, inputs: str = "noise", vector_dim: int = 8, intermediate: float = 0.5,
                 init_from: str | None = None, lr: float = 1e-3, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 200, num_generated_examples: int = 10):
        generator = DistilledGenerator.from_teacher(teacher, vector_dim=vector_dim, inputs=inputs,
                                                    intermediate=intermediate)
        super().__init__(generator=generator, init_from=init_from, lr=lr, weight_decay=weight_decay, betas=betas,
                         warmup_steps=warmup_steps, num_generated_examples=num_generated_examples)

    def setup(self, stage: str) -> None:
        """Check that the pairs were drawn from this student's teacher (its weights, where both record
        them) with its noise size."""
        data = self.trainer.datamodule
        info = getattr(data, "info", None)
        if info is None:
            return
        found = {"teacher": info.get("teacher"), "vector_dim": info.get("vector_dim")}
        expected = {"teacher": self.generator.teacher, "vector_dim": self.generator.vector_dim}
        if info.get("teacher_weights") and self.generator.teacher_weights:
            found["teacher_weights"] = info["teacher_weights"]
            expected["teacher_weights"] = self.generator.teacher_weights
        differing = [key for key in expected if found[key] != expected[key]]
        if differing:
            raise DataError(f"{data.hparams.pairs}: pairs drawn with { {k: found[k] for k in differing} }, "
                            f"but the student distils { {k: expected[k] for k in differing} }")

    def generate_examples(self, batch: dict):
        return self.generator.generate(batch, lengths=batch["lengths"], sampler=self.sampler)
