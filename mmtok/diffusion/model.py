"""The masked diffusion generator as one Hub model: a bidirectional backbone over a tokenizer's codes.

Frames are predicted jointly (the parallel pattern: each position embeds the sum of its Q codebook
embeddings and has Q heads); the sampler sees the Q × T codes as one sequence of L = Q · T positions.
Every codebook's absorbing mask is its special id, ``codebook_sizes[q]``, so all codebooks must have
one size. The length of an utterance is chosen before sampling: ``frames_per_phoneme``, measured on
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
    ``positions`` (as the AR generator's: ``"aligned"`` spreads phonemes over the frames' time axis).
    """

    def __init__(self, *, tokenizer: str, codebook_sizes: Sequence[int], conditions: Sequence[dict] = (),
                 schedule: str = "log_linear", time_conditioning: bool = False, dim: int = 256,
                 num_layers: int = 6, num_heads: int = 4, ff_mult: float = 8 / 3, dropout: float = 0.1,
                 frames_per_phoneme: float = 5.0, max_frames: int = 500, positions: str = "sequential"):
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
        self._hub_mixin_config = {**(self._hub_mixin_config or {}), "conditions": self.conditioner.specs()}

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

    def logits(self, noisy: torch.Tensor, t: torch.Tensor, conditions: dict, *, lengths: torch.Tensor | None = None,
               null: bool = False) -> torch.Tensor:
        """noisy codes [B, Q, T] (the mask id where masked) -> logits [B, Q, T, V]."""
        return self.backbone.logits(self.hidden(noisy, t, conditions, lengths=lengths, null=null))

    def hidden(self, noisy: torch.Tensor, t: torch.Tensor, conditions: dict, *, lengths: torch.Tensor | None = None,
               null: bool = False) -> torch.Tensor:
        """The backbone's hidden states of the frames, [B, T, D]."""
        steps_valid = None
        if lengths is not None:
            steps_valid = torch.arange(noisy.shape[2], device=noisy.device)[None] < lengths.to(noisy.device)[:, None]
        else:
            lengths = torch.full((noisy.shape[0],), noisy.shape[2], device=noisy.device)
        frames = self.conditioner.frames(conditions, lengths=lengths, num_frames=noisy.shape[2], device=noisy.device,
                                         null=null)
        prefix, valid, prefix_positions = self._prefix(conditions, noisy.shape[0], t, null=null)
        positions = None
        if self.aligned and prefix_positions is not None:
            steps = torch.arange(noisy.shape[2], device=noisy.device, dtype=torch.float)
            positions = torch.cat([prefix_positions, steps.expand(noisy.shape[0], -1)], dim=1)
        return self.backbone.hidden(noisy, prefix=prefix, prefix_valid=valid, steps_valid=steps_valid, causal=False,
                                    positions=positions, step_embeddings=frames)

    def loss(self, batch: dict, *, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The MDLM NELBO on ``batch["codes"]`` [B, Q', T] (first Q codebooks) with ``lengths``, at
        times drawn per item, or at the given ``t`` [B] (evaluation at one noise level)."""
        codes = batch["codes"][:, : self.num_codebooks]
        lengths = batch.get("lengths")
        valid = None
        if lengths is not None:
            frames = torch.arange(codes.shape[2], device=codes.device)
            valid = (frames[None] < lengths.to(codes.device)[:, None])[:, None].expand_as(codes)
        if t is None:
            t = sample_times(codes.shape[0], generator=generator, device=codes.device)
        noisy, masked = mask_tokens(codes, t, self.schedule, mask_id=self.mask_id, valid=valid, generator=generator)
        logits = self.logits(noisy, t, batch, lengths=lengths)
        loss = masked_diffusion_loss(logits, codes, masked, t, self.schedule, valid=valid)
        accuracy = (logits.argmax(-1) == codes)[masked].float().mean() if masked.any() else torch.tensor(0.0)
        return loss, {"masked_accuracy": accuracy.detach(), "masked_fraction": masked.float().mean().detach()}

    def denoisers(self, conditions: dict, lengths: torch.Tensor) -> tuple[Callable, Callable]:
        """(conditional, unconditional) denoisers over flat sequences [B, Q · T] for the samplers
        (position q · T + t is codebook q at frame t); given ``positions`` they apply the heads there only."""
        batch, frames = len(lengths), int(lengths.max())

        def make(null: bool):
            def denoiser(tokens: torch.Tensor, t: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
                noisy = tokens.reshape(batch, self.num_codebooks, frames)
                hidden = self.hidden(noisy, t, conditions, lengths=lengths, null=null)
                if positions is not None:
                    return self.backbone.logits_at(hidden, positions // frames, positions % frames)
                return self.backbone.logits(hidden).reshape(batch, self.num_codebooks * frames, -1)
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
        frames = int(lengths.max())
        initial = torch.full((len(lengths), self.num_codebooks, frames), self.mask_id, device=device)
        initial.masked_fill_(torch.arange(frames, device=device)[None, None] >= lengths[:, None, None], 0)
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
            tokens, stats = maskgit_sample(denoiser, flat, num_steps=num_steps or 16, **options)
        codes = tokens.reshape(initial.shape)
        return Tokens(codes=codes, lengths=lengths), stats
