"""The AR generator as one Hub model: backbone + conditioner + pattern, over a named tokenizer.

The tokenizer is referenced, not embedded (:class:`~mmtok.generators.TokenGenerator`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmtok.ar.sampling import generate
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.conditioning import Conditioner, build_condition, pad_left
from mmtok.generators import TokenGenerator
from mmtok.hub import HubMixin
from mmtok.patterns import EMPTY, Pattern, build_pattern, pattern_spec
from mmtok.tokens import Tokens


def teacher_forcing(model: CodebookTransformer, pattern: Pattern, codes: torch.Tensor,
                    lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, mask), each ``[B, Q, S]``, for codes ``[B, Q, T]`` with per-item ``lengths``.

    Slots of frames past an item's length are empty (the special id as input, no loss). With an end
    token, the first-codebook slot of frame ``length`` is one more step to predict: "end"."""
    batch, num_codebooks, num_frames = codes.shape
    lengths = torch.full((batch,), num_frames, device=codes.device) if lengths is None else lengths.to(codes.device)
    extra = int(model.end_token)
    layout = pattern.layout(num_codebooks, num_frames + extra).to(codes.device)
    frames = layout.expand(batch, -1, -1)
    real = (frames != EMPTY) & (frames < lengths[:, None, None])
    padded = F.pad(codes, (0, extra))
    steps = torch.gather(padded, 2, frames.clamp(min=0))
    special = torch.tensor(model.special_ids, device=codes.device)[None, :, None]
    steps = torch.where(real, steps, special)
    targets, mask = steps.clone(), real.clone()
    if model.end_token:
        first = torch.arange(num_codebooks, device=codes.device)[None, :, None] == 0
        end = first & (frames == lengths[:, None, None])
        targets[end], mask = model.end_id, mask | end
    return model.shift_right(steps), targets, mask


class ARGenerator(TokenGenerator, nn.Module, HubMixin):
    """Decoder-only transformer over a tokenizer's codes, laid out by a pattern, after a condition prefix.

    Args:
        tokenizer: Hub folder or repo id of the tokenizer whose codes are modelled.
        codebook_sizes: the backbone's vocabulary, one size per modelled codebook (the tokenizer's
            first ``len(codebook_sizes)`` codebooks).
        pattern: a pattern name or ``{"class_path", "init_args"}`` (see :func:`build_pattern`).
        conditions: condition specs (see :func:`mmtok.conditioning.build_condition`).
        end_token: predict where each sequence ends (needs a frame-stable pattern).
        max_frames: default generation limit.
        positions: ``"sequential"``: prefix and steps numbered 0, 1, 2, ... as one sequence;
            ``"aligned"``: steps at 0, 1, 2, ... and each condition at its own positions
            (:meth:`~mmtok.conditioning.Condition.positions`: phonemes spread over the frames' time
            axis, the other conditions just before step 0).
    """

    def __init__(self, *, tokenizer: str, codebook_sizes: Sequence[int], pattern: str | dict = "delay",
                 conditions: Sequence[dict] = (), dim: int = 256, num_layers: int = 6, num_heads: int = 4,
                 ff_mult: float = 8 / 3, dropout: float = 0.1, end_token: bool = True, max_frames: int = 500,
                 positions: str = "sequential"):
        super().__init__()
        if positions not in ("sequential", "aligned"):
            raise ValueError(f"positions must be 'sequential' or 'aligned', got {positions!r}")
        self.aligned = positions == "aligned"
        self.tokenizer_id = tokenizer
        self.pattern = build_pattern(pattern)
        self.backbone = CodebookTransformer(codebook_sizes=codebook_sizes, dim=dim, num_layers=num_layers,
                                            num_heads=num_heads, ff_mult=ff_mult, dropout=dropout,
                                            end_token=end_token)
        if end_token and not self.pattern.is_frame_stable(len(codebook_sizes)):
            raise ValueError(f"{type(self.pattern).__name__} cannot stop at an end token; use end_token=false "
                             "or a frame-stable pattern (parallel, delay, flatten)")
        self.conditioner = Conditioner([build_condition(spec, dim=dim) for spec in conditions])
        if self.conditioner.frame_aligned:
            raise ValueError("conditions placed on frames need the length before generation (masked diffusion); "
                             "the AR generator takes them as a prefix: use placement 'prefix'")
        self.max_frames = max_frames
        # The config keeps what was resolved (inventories, class names), so a Hub folder is self-contained.
        self._hub_mixin_config = {**(self._hub_mixin_config or {}), "conditions": self.conditioner.specs(),
                                  "pattern": pattern_spec(self.pattern)}

    # -- training -------------------------------------------------------------------------------
    def prefix(self, batch: dict, *, batch_size: int, null: bool = False):
        """(embeddings, valid, positions or None in the sequential scheme) of the condition prefix."""
        prefix, valid, positions = self.conditioner(batch, batch_size=batch_size, null=null,
                                                    device=self.backbone.heads[0].weight.device)
        return prefix, valid, positions if self.aligned else None

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy over every valid slot (codes and the end token), plus per-codebook losses and
        top-1 accuracy for logging. ``batch`` holds ``codes`` [B, Q', T] (Q' ≥ Q), ``lengths`` and the
        conditions' fields."""
        codes = batch["codes"][:, : self.num_codebooks]
        inputs, targets, mask = teacher_forcing(self.backbone, self.pattern, codes, batch.get("lengths"))
        prefix, valid, prefix_positions = self.prefix(batch, batch_size=codes.shape[0])
        positions = None
        if prefix_positions is not None:
            steps = torch.arange(inputs.shape[2], device=codes.device, dtype=torch.float)
            positions = torch.cat([prefix_positions, steps.expand(codes.shape[0], -1)], dim=1)
        logits = self.backbone(inputs, prefix=prefix, prefix_valid=valid, positions=positions)
        losses = F.cross_entropy(logits.permute(0, 3, 1, 2), targets.masked_fill(~mask, 0), reduction="none")
        loss = losses[mask].mean()
        logs = {f"loss_q{q}": losses[:, q][mask[:, q]].mean().detach() for q in range(self.num_codebooks)}
        logs["accuracy"] = (logits.argmax(-1) == targets)[mask].float().mean()
        return loss, logs

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, conditions: dict, *, batch_size: int = 1, max_frames: int | None = None,
                 cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> Tokens:
        """Codes for a batch of conditions (the same fields as training batches); ``cfg_scale`` ≠ 1
        guides against the null condition. Returns :class:`Tokens` with each item's length."""
        prefix, valid, positions = self.prefix(conditions, batch_size=batch_size)
        null = null_valid = null_positions = None
        if cfg_scale != 1.0 and prefix is not None:
            null, null_valid, null_positions = self.prefix({}, batch_size=batch_size, null=True)
            if null_positions is None:
                null_positions = torch.zeros_like(null_valid, dtype=torch.float)
            null, null_valid, null_positions = pad_left(null, null_valid, null_positions, prefix.shape[1])
        codes, lengths = generate(self.backbone, self.pattern, num_frames=max_frames or self.max_frames,
                                  batch_size=batch_size, prefix=prefix, prefix_valid=valid, null_prefix=null,
                                  null_prefix_valid=null_valid, cfg_scale=cfg_scale, temperature=temperature,
                                  top_k=top_k, top_p=top_p, generator=generator, prefix_positions=positions,
                                  null_prefix_positions=null_positions if positions is not None else None)
        width = int(lengths.max()) if len(lengths) else 0
        return Tokens(codes=codes[:, :, :width].contiguous(), lengths=lengths)
