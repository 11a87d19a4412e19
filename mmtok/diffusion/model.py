"""The masked diffusion generator as one Hub model: a bidirectional backbone over a tokenizer's codes.

The codes [B, Q, T] are laid out in steps [B, Q, S] by a codebook pattern (:mod:`mmtok.patterns`;
``parallel`` by default: each step is a frame, whose Q codebook embeddings are summed, with Q
heads; ``flatten`` gives every code its own step). The sampler sees the Q × S slots as one sequence
of L positions; slots that hold no code (a pattern's empty slots, frames past an item's length)
are given tokens there, never sampled. Every codebook's absorbing mask is its special id,
``codebook_sizes[q]``, which the backbone also sees in empty slots, so all codebooks must have one
size. The length of each item is given before sampling (a task chooses it: from the phoneme count
for speech, the grid for images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mmtok.codebook_transformer import CodebookTransformer
from mmtok.conditioning import Prefix
from mmtok.diffusion.masked import mask_tokens, masked_diffusion_loss, masked_token_cross_entropy, sample_times
from mmtok.diffusion.samplers import SAMPLERS
from mmtok.diffusion.schedules import build_schedule
from mmtok.errors import UsageError
from mmtok.generators import TokenGenerator
from mmtok.patterns import EMPTY
from mmtok.tokens import Tokens

LOSS_WEIGHTINGS = ("nelbo", "maskgit")


class TimeEmbedding(nn.Module):
    """t ∈ [0, 1] -> one prefix vector: sinusoidal features then an MLP (for time-conditioned models)."""

    def __init__(self, dim: int, *, frequencies: int = 64):
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.linspace(0, math.log(1000), frequencies)),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None].float() * self.frequencies[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))[:, None]


class MaskedDiffusionGenerator(TokenGenerator):
    """Bidirectional transformer that predicts clean codes at masked positions, given conditions.

    Arguments: :class:`~mmtok.generators.TokenGenerator`'s (a step sits at the coordinate of its
    latest code's frame), plus ``schedule`` (``"log_linear"`` or ``"cosine"``) and
    ``time_conditioning`` (False: the time-agnostic model, which Zheng et al. show loses nothing) and
    ``loss_weighting``: ``"nelbo"`` (MDLM's bound) or ``"maskgit"`` (every masked token alike,
    :func:`~mmtok.diffusion.masked.masked_token_cross_entropy`; the NELBO is still logged as ``nelbo``),
    and ``primed_fraction``: the share of training items whose first slices are given unmasked (see
    :meth:`given_frames`), so that the model learns the conditional a ``primer`` asks of it at sampling.
    Samplers: :data:`mmtok.diffusion.samplers.SAMPLERS`.
    """

    samplers = tuple(SAMPLERS)

    def __init__(self, *, tokenizer: str, backbone: CodebookTransformer | dict, pattern: str | dict = "parallel",
                 conditions: Sequence[dict] = (), positions: str = "sequential", grid: Sequence[int] | None = None,
                 frame_rate: float | None = None, sample_rate: int | None = None, task: dict | None = None,
                 sampling: dict | None = None, schedule: str = "log_linear", time_conditioning: bool = False,
                 loss_weighting: str = "nelbo", primed_fraction: float = 0.0):
        super().__init__(tokenizer=tokenizer, backbone=backbone, pattern=pattern, conditions=conditions,
                         positions=positions, grid=grid, frame_rate=frame_rate, sample_rate=sample_rate, task=task,
                         sampling=sampling)
        if len(set(self.codebook_sizes)) != 1:
            raise ValueError(f"masked diffusion needs codebooks of one size (one mask id), got {self.codebook_sizes}")
        if self.backbone.end_token:
            raise ValueError("a masked diffusion backbone has no end token (the length is given first)")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting {loss_weighting!r}: expected one of {', '.join(LOSS_WEIGHTINGS)}")
        if not 0.0 <= primed_fraction <= 1.0:
            raise ValueError(f"primed_fraction {primed_fraction}: expected a share in [0, 1]")
        self.loss_weighting, self.primed_fraction = loss_weighting, primed_fraction
        self.schedule = build_schedule(schedule)
        self.time_embedding = TimeEmbedding(self.backbone.dim) if time_conditioning else None

    @property
    def stops_by_itself(self) -> bool:
        return False

    @property
    def mask_id(self) -> int:
        return self.codebook_sizes[0]

    # -- the denoiser ---------------------------------------------------------------------------
    def _prefix(self, conditions: dict, batch_size: int, t: torch.Tensor, *, null: bool = False) -> Prefix | None:
        prefix = self.prefix(conditions, batch_size=batch_size, null=null)
        if self.time_embedding is None:
            return prefix
        device = self.backbone.device
        time = Prefix(self.time_embedding(t.to(device)), torch.ones(batch_size, 1, dtype=torch.bool, device=device),
                      torch.full((batch_size, 1), -1.0, device=device))  # one more vector, just before step 0
        return time if prefix is None else prefix.then(time)

    def slots(self, lengths: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame of each step [S], the slots that hold a code of each item [B, Q, S]) for items of
        ``lengths`` frames padded to ``num_frames``. A step's frame is its latest code's (-1: none)."""
        layout = self.pattern.layout(self.num_codebooks, num_frames).to(lengths.device)
        real = (layout[None] != EMPTY) & (layout[None] < lengths[:, None, None])
        return layout.max(0).values, real

    @property
    def prime_unit(self) -> int:
        """Frames in one slice of the grid's first axis (a frame group of a video, a row of an image; one
        frame without a grid): the unit a primer comes in."""
        return math.prod(self.grid[1:]) if self.grid is not None and len(self.grid) > 1 else 1

    def given_frames(self, lengths: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames given unmasked at the start of each training item [B]: for a ``primed_fraction`` of the
        items a whole number of :attr:`prime_unit` slices, uniform from one to all but the last of the item's,
        0 elsewhere. MaskGIT's masks are independent per token, so they almost never leave a whole prefix
        known and the rest masked, the state a primed sampler starts from (a video continued from its last
        frame groups, Phenaki's Sec. 2.3); MAGVIT (Yu et al. 2023, Sec. 3.2) trains such conditions in."""
        slices = torch.div(lengths.cpu(), self.prime_unit, rounding_mode="floor")
        draws = torch.rand(lengths.shape[0], 2, generator=generator)
        primed = (draws[:, 0] < self.primed_fraction) & (slices >= 2)
        given = 1 + (draws[:, 1] * (slices - 1).clamp(min=1)).long()
        return (given * primed * self.prime_unit).to(lengths.device)

    def logits(self, steps: torch.Tensor, t: torch.Tensor, conditions: dict, *, lengths: torch.Tensor,
               num_frames: int, null: bool = False) -> torch.Tensor:
        """noisy steps [B, Q, S] (the mask id where masked or empty) -> logits [B, Q, S, V]."""
        return self.backbone.logits(self.hidden(steps, t, conditions, lengths=lengths, num_frames=num_frames,
                                                null=null))

    def hidden(self, steps: torch.Tensor, t: torch.Tensor, conditions: dict, *, lengths: torch.Tensor,
               num_frames: int, null: bool = False) -> torch.Tensor:
        """The backbone's hidden states of the steps, [B, S, D], for items of ``lengths`` frames."""
        lengths = lengths.to(steps.device)
        step_frames, real = self.slots(lengths, num_frames)
        on_frames = self.step_conditions(conditions, lengths=lengths, step_frames=step_frames, null=null)
        prefix = self._prefix(conditions, steps.shape[0], t, null=null)
        positions = self.full_positions(prefix, self.coordinates(step_frames), steps.shape[0])
        return self.backbone.hidden(steps, prefix=prefix, steps_valid=real.any(1), causal=False,
                                    positions=positions, step_embeddings=on_frames)

    def loss(self, batch: dict, *, rng: torch.Generator | None = None,
             t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The MDLM NELBO on ``batch["codes"]`` [B, Q', T] (first Q codebooks) with ``lengths``, at
        times drawn per item, or at the given ``t`` [B] (evaluation at one noise level), plus the
        conditions' auxiliary losses (:meth:`~mmtok.generators.TokenGenerator.add_auxiliary_losses`).
        In training, a ``primed_fraction`` of the items keep their first frames (:meth:`given_frames`):
        their loss is the NELBO of the rest given those."""
        codes = batch["codes"][:, : self.num_codebooks]
        num_frames = codes.shape[2]
        lengths = batch.get("lengths")
        lengths = torch.full((codes.shape[0],), num_frames) if lengths is None else lengths
        lengths = lengths.to(codes.device)
        clean, _ = self.pattern.build(codes, fill=self.mask_id)
        _, real = self.slots(lengths, num_frames)
        if t is None:
            t = sample_times(codes.shape[0], generator=rng, device=codes.device)
        scored = real  # the slots the loss is over: every code, but those given in a primed item
        if self.training and self.primed_fraction > 0:
            layout = self.pattern.layout(self.num_codebooks, num_frames).to(lengths.device)
            scored = real & (layout[None] >= self.given_frames(lengths, generator=rng)[:, None, None])
        noisy, masked = mask_tokens(clean, t, self.schedule, mask_id=self.mask_id, valid=scored, generator=rng)
        noisy = noisy.masked_fill(~real, self.mask_id)
        logits = self.logits(noisy, t, batch, lengths=lengths, num_frames=num_frames)
        targets = clean.masked_fill(~real, 0)
        loss = masked_diffusion_loss(logits, targets, masked, t, self.schedule, valid=scored)
        accuracy = (logits.argmax(-1) == clean)[masked].float().mean() if masked.any() else torch.tensor(0.0)
        logs = {"masked_accuracy": accuracy.detach(), "masked_fraction": masked.float().mean().detach()}
        if self.loss_weighting == "maskgit":
            logs["nelbo"] = loss.detach()
            loss = masked_token_cross_entropy(logits, targets, masked)
        return self.add_auxiliary_losses(loss, logs, batch)

    def denoisers(self, conditions: dict, lengths: torch.Tensor) -> tuple[Callable, Callable]:
        """(conditional, unconditional) denoisers over the flat slots [B, Q · S] for the samplers
        (position q · S + s is codebook q at step s); given ``positions`` they apply the heads there
        only. Slots without a code are shown to the backbone as empty whatever the sampler holds there."""
        num_frames = int(lengths.max())
        _, real = self.slots(lengths, num_frames)
        batch, steps = real.shape[0], real.shape[2]

        def make(null: bool):
            def denoiser(tokens: torch.Tensor, t: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
                noisy = tokens.reshape(real.shape).masked_fill(~real, self.mask_id)
                hidden = self.hidden(noisy, t, conditions, lengths=lengths, num_frames=num_frames, null=null)
                if positions is not None:
                    return self.backbone.logits_at(hidden, positions // steps, positions % steps)
                return self.backbone.logits(hidden).reshape(batch, self.num_codebooks * steps, -1)
            return denoiser

        return make(False), make(True)

    def _primed(self, primer: torch.Tensor, lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Steps [B, Q, S] holding ``primer``'s codes [B, Q, P] at the first P frames, the mask id elsewhere."""
        batch, frames = lengths.shape[0], primer.shape[-1]
        if primer.dim() != 3 or primer.shape[:2] != (batch, self.num_codebooks) or frames > int(lengths.min()):
            raise UsageError(f"primer: codes of shape {tuple(primer.shape)}, expected [{batch}, {self.num_codebooks}, "
                             f"P] with P ≤ every item's length ({int(lengths.min())})")
        if bool(((primer < 0) | (primer >= self.mask_id)).any()):
            raise UsageError(f"primer: codes outside 0..{self.mask_id - 1} (the codebooks of this generator)")
        known = primer.new_full((batch, self.num_codebooks, num_frames), self.mask_id)
        known[:, :, :frames] = primer
        return self.pattern.build(known, fill=self.mask_id)[0]

    @torch.no_grad()
    def generate(self, conditions: dict, *, lengths: torch.Tensor, rng: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, steps_per_token: float = 1.0,
                 cfg_scale: float = 1.0, choice_temperature: float | None = None, primer: torch.Tensor | None = None,
                 **sampling) -> Tokens:
        """Codes of ``lengths`` frames per item by ``sampler`` (default ``fhs``); ``steps`` for the
        ancestral sampler (default ``steps_per_token`` × L for the L = Q · T tokens of the longest
        item) and MaskGIT (default 16); ``choice_temperature`` for MaskGIT's reveal order (default 4.5,
        :func:`~mmtok.diffusion.samplers.maskgit_sample`). ``primer`` (codes [B, Q, P], P at most every item's length)
        gives the first P frames of each item: they are never masked and come back unchanged, and the
        rest is sampled around them (Phenaki's priming: a video continued from its last frames'
        tokens). The sampler's statistics are kept in :attr:`last_stats`: categorical draws, and
        denoiser calls counted as the network's forward passes, two per sampler call under guidance (a
        conditional and an unconditional pass), as ResGen counts them."""
        sampler = self.check_sampler(sampler)
        if steps is not None and steps < 1:
            raise UsageError(f"steps {steps}: must be ≥ 1")
        if choice_temperature is not None and sampler != "maskgit":
            raise UsageError(f"choice_temperature: the {sampler} sampler reveals tokens at random times, it has no "
                             "confidence order to randomize (only maskgit has)")
        device = self.backbone.device
        lengths = lengths.to(device)
        num_frames = int(lengths.max())
        _, real = self.slots(lengths, num_frames)
        initial = torch.where(real, self.mask_id, 0)  # slots without a code are given, never sampled
        if primer is not None:
            initial = torch.where(real, self._primed(primer.to(device), lengths, num_frames), 0)
        denoiser, unconditional = self.denoisers(conditions, lengths)
        flat = initial.flatten(1)
        options = dict(mask_id=self.mask_id, unconditional=unconditional if cfg_scale != 1.0 else None,
                       cfg_scale=cfg_scale, generator=rng, **sampling)
        if sampler == "ancestral":
            options.update(num_steps=steps or max(1, round(steps_per_token * flat.shape[1])),
                           time_agnostic=self.time_embedding is None)
        elif sampler == "maskgit":
            options.update(num_steps=steps or 16)
            if choice_temperature is not None:
                options.update(choice_temperature=choice_temperature)
        elif steps is not None:
            raise UsageError("steps: the first-hitting sampler takes one denoiser call per token, it has no steps")
        tokens, stats = SAMPLERS[sampler](denoiser, flat, schedule=self.schedule, **options)
        passes_per_call = 1 if options["unconditional"] is None else 2
        self.last_stats = {**stats, "denoiser_calls": stats["denoiser_calls"] * passes_per_call}
        codes = self.pattern.revert(tokens.reshape(initial.shape).masked_fill(~real, 0), num_frames)
        return self.tokens(codes, lengths)
