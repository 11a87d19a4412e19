"""The masked diffusion generator as one Hub model: a bidirectional backbone over a tokenizer's codes.

The codes [B, Q, T] are laid out in steps [B, Q, S] by a codebook pattern (:mod:`mmtok.patterns`;
``parallel`` by default: each step is a frame, whose Q codebook embeddings are summed, with Q
heads; ``flatten`` gives every code its own step). The sampler sees the Q × S slots as one sequence
of L positions; slots that hold no code (a pattern's empty slots, frames past an item's length)
are given tokens there, never sampled. Every codebook's absorbing mask is its special id,
``codebook_sizes[q]``, which the backbone also sees in empty slots, so all codebooks must have one
size. The length of an utterance is chosen before sampling: ``frames_per_phoneme``, measured on
the training data, times the number of phonemes (as non-autoregressive TTS models such as E2 and
F5-TTS do with the text length).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mmtok.codebook_transformer import CodebookTransformer
from mmtok.conditioning import Conditioner, build_condition
from mmtok.diffusion.masked import mask_tokens, masked_diffusion_loss, sample_times
from mmtok.diffusion.samplers import ancestral_sample, first_hitting_sample, maskgit_sample
from mmtok.diffusion.schedules import build_schedule
from mmtok.generators import TokenGenerator
from mmtok.hub import WEIGHTS_NAME, HubMixin, resolve_file
from mmtok.patterns import EMPTY, build_pattern, pattern_spec
from mmtok.tokens import Tokens

SAMPLERS = ("fhs", "ancestral", "maskgit")


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


class MaskedDiffusionGenerator(TokenGenerator, nn.Module, HubMixin):
    """Bidirectional transformer that predicts clean codes at masked positions, given conditions.

    Args: as :class:`~mmtok.ar.model.ARGenerator` (tokenizer, codebook_sizes, conditions, width),
    plus ``schedule`` (``"log_linear"`` or ``"cosine"``), ``time_conditioning`` (False: the
    time-agnostic model, which Zheng et al. show loses nothing), ``frames_per_phoneme`` and
    ``positions`` (as the AR generator's: ``"aligned"`` gives each step its frame's index) and
    ``pattern`` (a name or ``{"class_path", "init_args"}``, :func:`~mmtok.patterns.build_pattern`).
    """

    def __init__(self, *, tokenizer: str, codebook_sizes: Sequence[int], conditions: Sequence[dict] = (),
                 schedule: str = "log_linear", time_conditioning: bool = False, dim: int = 256,
                 num_layers: int = 6, num_heads: int = 4, ff_mult: float = 8 / 3, dropout: float = 0.1,
                 frames_per_phoneme: float = 5.0, max_frames: int = 500, positions: str = "sequential",
                 pattern: str | dict = "parallel"):
        super().__init__()
        if positions not in ("sequential", "aligned"):
            raise ValueError(f"positions must be 'sequential' or 'aligned', got {positions!r}")
        self.aligned = positions == "aligned"
        if len(set(codebook_sizes)) != 1:
            raise ValueError(f"masked diffusion needs codebooks of one size (one mask id), got {list(codebook_sizes)}")
        self.tokenizer_id = tokenizer
        self.schedule = build_schedule(schedule)
        self.backbone = CodebookTransformer(codebook_sizes=codebook_sizes, dim=dim, num_layers=num_layers,
                                            num_heads=num_heads, ff_mult=ff_mult, dropout=dropout)
        self.conditioner = Conditioner([build_condition(spec, dim=dim) for spec in conditions])
        self.time_embedding = TimeEmbedding(dim) if time_conditioning else None
        self.frames_per_phoneme, self.max_frames = frames_per_phoneme, max_frames
        self.pattern = build_pattern(pattern)
        self._hub_mixin_config = {**(self._hub_mixin_config or {}), "conditions": self.conditioner.specs(),
                                  "pattern": pattern_spec(self.pattern)}

    def adapt_from_autoregressive(self, source: str) -> list[str]:
        """Start from an AR generator's weights (a Hub folder of :class:`~mmtok.ar.model.ARGenerator`
        over the same codebooks), as Gong et al. (2024, "Scaling Diffusion Language Models via
        Adaptation from Autoregressive Models") turn AR language models into masked diffusion models:
        the backbone is the same, run bidirectionally. Every tensor with the same name is copied (the
        first head drops the AR end-token row; "start" becomes "mask"). Returns the names of this
        model's tensors that the AR generator has no counterpart for (they keep their initialisation).

        On the speech corpus this is what makes a small model read its phonemes within a CPU run
        (docs/benchmarks.md, TTS): from scratch, 400 steps leave it at the codes' marginals."""
        import json

        from safetensors.torch import load_file

        from mmtok.hub import CONFIG_NAME

        config = json.loads(resolve_file(source, CONFIG_NAME).read_text())
        if config.get("mmtok_class", "").rsplit(".", 1)[-1] != "ARGenerator":
            raise ValueError(f"adapt_from {source}: an ARGenerator Hub folder is needed, found "
                             f"{config.get('mmtok_class')!r}")
        if list(config.get("codebook_sizes", []))[: self.num_codebooks] != self.codebook_sizes:
            raise ValueError(f"adapt_from {source}: its codebook sizes {config.get('codebook_sizes')} do not start "
                             f"with this generator's {self.codebook_sizes}")
        weights = load_file(str(resolve_file(source, WEIGHTS_NAME)))
        state, untouched = self.state_dict(), []
        for name, tensor in state.items():
            value = weights.get(name)
            if value is not None and name.startswith("backbone.heads.0.") and value.shape[0] == tensor.shape[0] + 1:
                value = value[:-1]  # the end-token row
            if value is not None and value.shape == tensor.shape:
                tensor.copy_(value.to(tensor.dtype))
            else:
                untouched.append(name)
        if len(untouched) == len(state):
            raise ValueError(f"adapt_from {source}: no tensor fits this generator (different width or depth?)")
        return untouched

    @property
    def mask_id(self) -> int:
        return self.codebook_sizes[0]

    def num_frames(self, phonemes: Sequence[str]) -> torch.Tensor:
        """Frames to generate per utterance: ``frames_per_phoneme`` × phoneme count, capped."""
        counts = torch.tensor([len(p.split()) for p in phonemes], dtype=torch.float)
        return (counts * self.frames_per_phoneme).round().long().clamp(1, self.max_frames)

    # -- the denoiser ---------------------------------------------------------------------------
    def _prefix(self, conditions: dict, batch_size: int, t: torch.Tensor, *, null: bool = False):
        device = self.backbone.heads[0].weight.device
        prefix, valid, positions = self.conditioner(conditions, batch_size=batch_size, device=device, null=null)
        if self.time_embedding is not None:  # one more prefix vector, just before step 0
            time = self.time_embedding(t.to(device))
            ones = torch.ones(batch_size, 1, dtype=torch.bool, device=device)
            before = torch.full((batch_size, 1), -1.0, device=device)
            prefix = time if prefix is None else torch.cat([prefix, time], dim=1)
            valid = ones if valid is None else torch.cat([valid, ones], dim=1)
            positions = before if positions is None else torch.cat([positions, before], dim=1)
        return prefix, valid, positions

    def slots(self, lengths: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame of each step [S], the slots that hold a code of each item [B, Q, S]) for items of
        ``lengths`` frames padded to ``num_frames``. A step's frame is its latest code's (-1: none)."""
        layout = self.pattern.layout(self.num_codebooks, num_frames).to(lengths.device)
        real = (layout[None] != EMPTY) & (layout[None] < lengths[:, None, None])
        return layout.max(0).values, real

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
        on_frames = self.conditioner.frames(conditions, lengths=lengths, num_frames=num_frames, device=steps.device,
                                            null=null)
        if on_frames is not None:  # each step takes its frame's embedding
            on_frames = on_frames[:, step_frames.clamp(min=0)] * (step_frames >= 0)[None, :, None]
        prefix, valid, prefix_positions = self._prefix(conditions, steps.shape[0], t, null=null)
        positions = None
        if self.aligned and prefix_positions is not None:
            positions = torch.cat([prefix_positions, step_frames.float().expand(steps.shape[0], -1)], dim=1)
        return self.backbone.hidden(steps, prefix=prefix, prefix_valid=valid, steps_valid=real.any(1), causal=False,
                                    positions=positions, step_embeddings=on_frames)

    def loss(self, batch: dict, *, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The MDLM NELBO on ``batch["codes"]`` [B, Q', T] (first Q codebooks) with ``lengths``, at
        times drawn per item, or at the given ``t`` [B] (evaluation at one noise level)."""
        codes = batch["codes"][:, : self.num_codebooks]
        num_frames = codes.shape[2]
        lengths = batch.get("lengths")
        lengths = torch.full((codes.shape[0],), num_frames) if lengths is None else lengths
        lengths = lengths.to(codes.device)
        clean, _ = self.pattern.build(codes, fill=self.mask_id)
        _, real = self.slots(lengths, num_frames)
        if t is None:
            t = sample_times(codes.shape[0], generator=generator, device=codes.device)
        noisy, masked = mask_tokens(clean, t, self.schedule, mask_id=self.mask_id, valid=real, generator=generator)
        noisy = noisy.masked_fill(~real, self.mask_id)
        logits = self.logits(noisy, t, batch, lengths=lengths, num_frames=num_frames)
        loss = masked_diffusion_loss(logits, clean.masked_fill(~real, 0), masked, t, self.schedule, valid=real)
        accuracy = (logits.argmax(-1) == clean)[masked].float().mean() if masked.any() else torch.tensor(0.0)
        return loss, {"masked_accuracy": accuracy.detach(), "masked_fraction": masked.float().mean().detach()}

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

    @torch.no_grad()
    def generate(self, conditions: dict, *, lengths: torch.Tensor, sampler: str = "fhs", num_steps: int | None = None,
                 steps_per_token: float = 1.0, cfg_scale: float = 1.0, generator: torch.Generator | None = None,
                 **sampling) -> tuple[Tokens, dict]:
        """Codes of ``lengths`` frames per item by ``sampler``: fhs; ancestral with ``num_steps``, by
        default ``steps_per_token`` × L for the L = Q · T tokens of the longest item; maskgit with
        ``num_steps`` (default 16). Returns (Tokens, sampler statistics)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        device = self.backbone.heads[0].weight.device
        lengths = lengths.to(device)
        num_frames = int(lengths.max())
        _, real = self.slots(lengths, num_frames)
        initial = torch.where(real, self.mask_id, 0)  # slots without a code are given, never sampled
        denoiser, unconditional = self.denoisers(conditions, lengths)
        options = dict(mask_id=self.mask_id, unconditional=unconditional if cfg_scale != 1.0 else None,
                       cfg_scale=cfg_scale, generator=generator, **sampling)
        flat = initial.flatten(1)
        if sampler == "fhs":
            tokens, stats = first_hitting_sample(denoiser, flat, schedule=self.schedule, **options)
        elif sampler == "ancestral":
            steps = num_steps or max(1, round(steps_per_token * flat.shape[1]))
            tokens, stats = ancestral_sample(denoiser, flat, num_steps=steps,
                                             schedule=self.schedule, time_agnostic=self.time_embedding is None,
                                             **options)
        else:
            tokens, stats = maskgit_sample(denoiser, flat, num_steps=num_steps or 16, schedule=self.schedule,
                                           **options)
        codes = self.pattern.revert(tokens.reshape(initial.shape).masked_fill(~real, 0), num_frames)
        return Tokens(codes=codes, lengths=lengths), stats
