"""Distilled Decoding's student (Liu et al. 2024, sec. 3.3): one network pass from noise to every token
of an AR teacher's sample, or two.

The teacher's pairs (:mod:`mmtok.distill.pairs`) make each token x_s a deterministic function of the
noise ε_{≤s} and the condition, so a causal network whose slot s reads ε_s can predict x_s from what it
has seen. The student is the teacher's own backbone, started from its weights: the input of slot s is
the teacher's (the token of step s − 1 where it is known, the start/empty id where it is not) plus, at
slots not yet known, a projection of ε_s (one linear map per codebook) and a learned marker (zero at
the start). So with the teacher's weights and no training the student's logits equal the teacher's
wherever the inputs agree: every slot before the first unknown one. The projection starts at the
scale of a token embedding (each output coordinate of unit variance): started at zero, the noise
was a signal too small to use, and the student sat at the naive baseline's loss for 400 steps.

- 1 step: nothing known; one pass predicts every token (argmax: the map is deterministic).
- 2 steps: the first ``known = round(intermediate · S)`` tokens of the first pass are kept and fed as
  tokens, and a second pass predicts the rest from the same ε (the paper's intermediate starting point).

It is trained with cross-entropy to the pairs' tokens, half the items from nothing known, half from the
intermediate point with the true first tokens (:meth:`loss`). ``inputs="condition"`` is the naive
one-step baseline the paper shows failing: the same network sees no noise, predicts each token's
marginal given the condition alone, and samples every token independently.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmtok.codebook_transformer import CodebookTransformer
from mmtok.errors import UsageError
from mmtok.generators import TokenGenerator
from mmtok.sampling import process_logits, sample_categorical
from mmtok.tokens import Tokens

STUDENT_INPUTS = ("noise", "condition")


class DistilledGenerator(TokenGenerator):
    """A one- or two-step student of an AR teacher. Arguments: :class:`TokenGenerator`'s (the
    teacher's, as :meth:`from_teacher` copies them), and:

    Args:
        teacher: the teacher's Hub folder or repo id (recorded, never loaded to sample).
        teacher_weights: the SHA-256 of the teacher's weights when it was a local folder
            (:func:`mmtok.hub.weights_digest`), so that a student of a since-replaced teacher is known.
        teacher_sampling: the settings the teacher's pairs were drawn with (recorded: the student
            reproduces the teacher sampled that way, classifier-free guidance included).
        vector_dim: d, the size of each slot's noise vector (the pairs' ``vector_dim``).
        inputs: ``"noise"`` (Distilled Decoding) or ``"condition"`` (the naive one-step baseline).
        intermediate: where the second step starts, as a fraction of the steps.
    """

    samplers = ("distilled",)

    def __init__(self, *, tokenizer: str, backbone: CodebookTransformer | dict, pattern: str | dict = "parallel",
                 conditions: Sequence[dict] = (), positions: str = "sequential", grid: Sequence[int] | None = None,
                 frame_rate: float | None = None, sample_rate: int | None = None, task: dict | None = None,
                 sampling: dict | None = None, teacher: str | None = None, teacher_weights: str | None = None,
                 teacher_sampling: dict | None = None, vector_dim: int = 8, inputs: str = "noise",
                 intermediate: float = 0.5):
        super().__init__(tokenizer=tokenizer, backbone=backbone, pattern=pattern, conditions=conditions,
                         positions=positions, grid=grid, frame_rate=frame_rate, sample_rate=sample_rate, task=task,
                         sampling=sampling)
        if inputs not in STUDENT_INPUTS:
            raise ValueError(f"inputs must be one of {STUDENT_INPUTS}, got {inputs!r}")
        if not 0 < intermediate < 1:
            raise ValueError(f"intermediate must be in (0, 1), got {intermediate}")
        if self.frame_aligned:
            raise ValueError("conditions placed on the frames are not distilled (the student takes a prefix only)")
        self.teacher, self.teacher_weights = teacher, teacher_weights
        self.teacher_sampling = dict(teacher_sampling or {})
        self.inputs, self.vector_dim, self.intermediate = inputs, vector_dim, intermediate
        dim = self.backbone.dim
        self.noise_in = nn.ModuleList(nn.Linear(vector_dim, dim, bias=False) for _ in self.codebook_sizes)
        self.noise_marker = nn.Parameter(torch.zeros(dim))
        for projection in self.noise_in:
            nn.init.normal_(projection.weight, std=vector_dim ** -0.5)

    @classmethod
    def from_teacher(cls, teacher: str, *, vector_dim: int = 8, inputs: str = "noise", intermediate: float = 0.5,
                     teacher_sampling: dict | None = None) -> DistilledGenerator:
        """A student with the AR teacher's (a Hub folder's) backbone, conditions, pattern, token facts
        and task, its weights copied; condition dropout off (the student learns the guided sampler)."""
        from mmtok.ar.model import ARGenerator
        from mmtok.hub import load_pretrained, load_state_strict, weights_digest

        model = load_pretrained(teacher)
        if not isinstance(model, ARGenerator):
            raise UsageError(f"{teacher}: holds a {type(model).__name__}, expected an autoregressive generator")
        config = model.hub_config
        conditions = [{**spec, "dropout": 0.0} for spec in config.get("conditions", [])]
        sampling = teacher_sampling if teacher_sampling is not None else {
            k: v for k, v in model.sampling_with().items() if k not in ("sampler", "steps")}
        student = cls(tokenizer=config["tokenizer"], backbone=config["backbone"], pattern=config["pattern"],
                      conditions=conditions, positions=config.get("positions", "sequential"), grid=config.get("grid"),
                      frame_rate=config.get("frame_rate"), sample_rate=config.get("sample_rate"),
                      task=config.get("task"), sampling={"sampler": "distilled", "steps": 1}, teacher=str(teacher),
                      teacher_weights=weights_digest(teacher), teacher_sampling=sampling, vector_dim=vector_dim,
                      inputs=inputs, intermediate=intermediate)
        taught = {name: tensor for name, tensor in model.state_dict().items()}
        own = student.state_dict()
        load_state_strict(student, {**own, **taught}, source=f"{teacher}: the student does not fit the teacher")
        return student

    @property
    def stops_by_itself(self) -> bool:
        return False

    def known_steps(self, num_steps: int) -> int:
        """Where the second step starts: round(intermediate · S), within 1 .. S − 1."""
        return min(max(round(self.intermediate * num_steps), 1), max(num_steps - 1, 1))

    # -- the network ------------------------------------------------------------------------------
    def student_logits(self, steps: torch.Tensor, known: torch.Tensor, noise: torch.Tensor | None,
                       conditions: dict) -> torch.Tensor:
        """Logits [B, Q, S, V] of every step, given pattern ``steps`` [B, Q, S] of which the first
        ``known`` [B] are known (the rest may hold anything), the noise [B, S, Q, d] and the conditions."""
        batch, _, num_steps = steps.shape
        device = steps.device
        special = torch.tensor(self.backbone.special_ids, device=device)[None, :, None]
        slots = torch.arange(num_steps, device=device)
        inputs = self.backbone.shift_right(steps)
        inputs = torch.where(slots[None, None, :] > known[:, None, None], special, inputs)
        added = None
        if self.inputs == "noise":
            if noise is None or noise.shape != (batch, num_steps, self.num_codebooks, self.vector_dim):
                raise ValueError(f"noise must be [{batch}, {num_steps}, {self.num_codebooks}, {self.vector_dim}], got "
                                 f"{None if noise is None else tuple(noise.shape)}")
            noise = noise.to(device)
            projected = sum(projection(noise[:, :, q]) for q, projection in enumerate(self.noise_in))  # [B, S, D]
            unknown = (slots[None, :] >= known[:, None])[..., None]  # [B, S, 1]
            added = (projected + self.noise_marker) * unknown
        prefix = self.prefix(conditions, batch_size=batch)
        positions = self.full_positions(prefix, self.coordinates(slots), batch)
        return self.backbone(inputs, prefix=prefix, positions=positions, step_embeddings=added)

    def _slots(self, num_frames: int, device) -> torch.Tensor:
        """Which slots of the pattern hold a code, [Q, S]."""
        return (self.pattern.layout(self.num_codebooks, num_frames) >= 0).to(device)

    # -- training ---------------------------------------------------------------------------------
    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the unknown slots to the pairs' tokens (``codes`` [B, Q, T], ``noise``
        [B, S, Q, d]); half the items start from nothing known, half from the intermediate point."""
        codes = batch["codes"][:, : self.num_codebooks]
        device = codes.device
        steps, filled = self.pattern.build(codes, fill=self.backbone.special_ids)
        batch_size, num_steps = codes.shape[0], steps.shape[2]
        known = torch.zeros(batch_size, dtype=torch.long, device=device)
        if self.inputs == "noise":
            second = torch.rand(batch_size, device=device) < 0.5
            known = torch.where(second, self.known_steps(num_steps), 0)
        logits = self.student_logits(steps, known, batch.get("noise"), batch)
        predicted = (torch.arange(num_steps, device=device)[None, :] >= known[:, None])[:, None, :] & filled[None]
        losses = F.cross_entropy(logits.permute(0, 3, 1, 2), steps.masked_fill(~filled[None], 0), reduction="none")
        loss = losses[predicted].mean()
        correct = (logits.argmax(-1) == steps) | ~predicted
        logs = {f"loss_q{q}": losses[:, q][predicted[:, q]].mean().detach() for q in range(self.num_codebooks)}
        first = known == 0
        logs["token_accuracy"] = (logits.argmax(-1) == steps)[predicted].float().mean()
        if bool(first.any()):  # whole items right from nothing known: what one step must do
            logs["item_accuracy_1step"] = correct[first].flatten(1).all(1).float().mean()
        return self.add_auxiliary_losses(loss, logs, batch)

    # -- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, conditions: dict, *, lengths: torch.Tensor, rng: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, cfg_scale: float | None = None,
                 choice_temperature: float | None = None) -> Tokens:
        """Codes of ``lengths`` frames per item in ``steps`` (1 or 2) network passes from noise drawn
        with ``rng``. The naive baseline (``inputs="condition"``) draws every token independently, with
        ``temperature``, ``top_k`` and ``top_p``; a noise student takes none of them, nor ``cfg_scale``:
        it learned the teacher sampled with ``teacher_sampling``. The passes are in :attr:`last_stats`."""
        self.check_sampler(sampler)
        steps = 1 if steps is None else steps
        if steps not in (1, 2) or (self.inputs == "condition" and steps != 1):
            raise UsageError(f"steps {steps}: a distilled student samples in 1 or 2 steps"
                             + (" (the naive baseline in 1)" if self.inputs == "condition" else ""))
        if choice_temperature is not None:
            raise UsageError("choice_temperature: a distilled student reveals every token at once, it has no reveal "
                             "order to randomize")
        if cfg_scale not in (None, 1.0):
            raise UsageError(f"cfg_scale {cfg_scale}: the student learned the teacher's guided sampling "
                             f"({self.teacher_sampling}); it takes no guidance")
        if self.inputs == "noise" and (temperature not in (None, 1.0) or top_k is not None or top_p is not None):
            raise UsageError("temperature / top_k / top_p: a distilled student maps noise to tokens deterministically; "
                             "they apply to its teacher, whose settings it learned")
        device = self.backbone.device
        batch_size, num_frames = len(lengths), int(lengths.max())
        filled = self._slots(num_frames, device)
        num_steps = filled.shape[1]
        special = torch.tensor(self.backbone.special_ids, device=device)[None, :, None]
        current = special.expand(batch_size, -1, num_steps)
        noise = None
        if self.inputs == "noise":
            noise = torch.randn(batch_size, num_steps, self.num_codebooks, self.vector_dim, generator=rng).to(device)
        known = torch.zeros(batch_size, dtype=torch.long, device=device)
        logits = self.student_logits(current, known, noise, conditions)
        if self.inputs == "condition":
            drawn = sample_categorical(process_logits(logits, temperature=temperature or 1.0, top_k=top_k,
                                                      top_p=top_p), generator=rng)
        else:
            drawn = logits.argmax(-1)
        if steps == 2:
            known = known + self.known_steps(num_steps)
            later = torch.arange(num_steps, device=device)[None, None, :] >= known[:, None, None]
            drawn = torch.where(later, self.student_logits(drawn, known, noise, conditions).argmax(-1), drawn)
        self.last_stats = {"denoiser_calls": steps}
        codes = self.pattern.revert(torch.where(filled[None], drawn, special), num_frames)
        codes = codes * (torch.arange(num_frames, device=device) < lengths.to(device)[:, None, None])
        return self.tokens(codes, lengths.to(device))
