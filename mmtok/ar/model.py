"""The AR generator as one Hub model: backbone + conditioner + pattern, over a named tokenizer.

The tokenizer is referenced, not embedded (:class:`~mmtok.generators.TokenGenerator`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mmtok.ar.sampling import generate, last_step_before
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.errors import UsageError
from mmtok.generators import TokenGenerator
from mmtok.patterns import EMPTY, Pattern
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


class ARGenerator(TokenGenerator):
    """Decoder-only transformer over a tokenizer's codes, laid out by a pattern, after a condition
    prefix; samples one step at a time with a KV cache. Arguments: :class:`TokenGenerator`'s. With an
    end token (``backbone.end_token``) each item stops by itself, which needs a frame-stable pattern.
    Step s sits at coordinate s (on a grid: the cell of frame s in raster order).

    Conditions placed on the frames (``placement="frames"``: phonemes spread by their durations, an
    aligned TTS) are added to the inputs: the input that predicts step s gets the embedding of step
    s's latest frame, in training and at each cached generation step alike. They need the length
    before generation, which the caller gives (``lengths``); past it they are zeros."""

    samplers = ("autoregressive",)

    def __init__(self, *, tokenizer: str, backbone: CodebookTransformer | dict, pattern: str | dict = "delay",
                 conditions: Sequence[dict] = (), positions: str = "sequential", grid: Sequence[int] | None = None,
                 frame_rate: float | None = None, sample_rate: int | None = None, task: dict | None = None,
                 sampling: dict | None = None):
        super().__init__(tokenizer=tokenizer, backbone=backbone, pattern=pattern, conditions=conditions,
                         positions=positions, grid=grid, frame_rate=frame_rate, sample_rate=sample_rate, task=task,
                         sampling=sampling)
        if self.backbone.end_token and not self.pattern.is_frame_stable(self.num_codebooks):
            raise ValueError(f"{type(self.pattern).__name__} cannot stop at an end token; use a backbone without "
                             "end_token or a frame-stable pattern (parallel, delay, flatten)")

    @property
    def stops_by_itself(self) -> bool:
        return self.backbone.end_token

    # -- training -------------------------------------------------------------------------------
    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy over every valid slot (codes and the end token), plus the conditions' auxiliary
        losses; per-codebook losses and top-1 accuracy for logging."""
        codes = batch["codes"][:, : self.num_codebooks]
        inputs, targets, mask = teacher_forcing(self.backbone, self.pattern, codes, batch.get("lengths"))
        prefix = self.prefix(batch, batch_size=codes.shape[0])
        steps = torch.arange(inputs.shape[2], device=codes.device)
        positions = self.full_positions(prefix, self.coordinates(steps), codes.shape[0])
        lengths = batch.get("lengths")
        lengths = torch.full((codes.shape[0],), codes.shape[2]) if lengths is None else lengths
        step_frames = self._step_frames(codes.shape[2] + self.backbone.end_token)  # the end token's frame too
        on_frames = self.step_conditions(batch, lengths=lengths, step_frames=step_frames)
        logits = self.backbone(inputs, prefix=prefix, positions=positions, step_embeddings=on_frames)
        losses = F.cross_entropy(logits.permute(0, 3, 1, 2), targets.masked_fill(~mask, 0), reduction="none")
        loss = losses[mask].mean()
        logs = {f"loss_q{q}": losses[:, q][mask[:, q]].mean().detach() for q in range(self.num_codebooks)}
        logs["accuracy"] = (logits.argmax(-1) == targets)[mask].float().mean()
        return self.add_auxiliary_losses(loss, logs, batch)

    def _step_frames(self, num_frames: int) -> torch.Tensor:
        """The latest frame of each step of ``num_frames`` frames laid out by the pattern, [S] (-1: none)."""
        return self.pattern.layout(self.num_codebooks, num_frames).max(0).values

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, conditions: dict, *, lengths: torch.Tensor, rng: torch.Generator | None = None,
                 sampler: str | None = None, steps: int | None = None, cfg_scale: float = 1.0,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 choice_temperature: float | None = None,
                 draw: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> Tokens:
        """Codes for a batch of conditions, at most ``lengths`` frames per item (each item stops at its
        end token when the backbone has one); ``cfg_scale`` ≠ 1 guides against the null condition;
        ``draw`` replaces the categorical draw of each step (:func:`mmtok.ar.sampling.generate`). The
        network calls (one KV-cached step each, on a batch doubled by guidance) are kept in
        :attr:`last_stats`, as the other families keep theirs."""
        self.check_sampler(sampler)
        if steps is not None:
            raise UsageError("steps: an autoregressive generator takes one step per code position, it has no steps")
        if choice_temperature is not None:
            raise UsageError("choice_temperature: an autoregressive generator draws the codes in a fixed order, "
                             "it has no reveal order to randomize")
        batch_size = len(lengths)
        prefix = self.prefix(conditions, batch_size=batch_size)
        num_frames = int(lengths.max()) if batch_size else 0
        step_frames = self._step_frames(num_frames)
        on_frames = self.step_conditions(conditions, lengths=lengths, step_frames=step_frames)
        null = null_frames = None
        if cfg_scale != 1.0 and prefix is not None:
            null = self.prefix({}, batch_size=batch_size, null=True).padded_left(prefix.length)
        if cfg_scale != 1.0 and on_frames is not None:
            null_frames = self.step_conditions({}, lengths=lengths, step_frames=step_frames, null=True)
        step_coordinates = None
        if self.aligned:
            step_coordinates = self.coordinates(torch.arange(len(step_frames)))
        codes, generated = generate(self.backbone, self.pattern, num_frames=num_frames, batch_size=batch_size,
                                    prefix=prefix, null_prefix=null, cfg_scale=cfg_scale, temperature=temperature,
                                    top_k=top_k, top_p=top_p, rng=rng, step_coordinates=step_coordinates,
                                    step_embeddings=on_frames, null_step_embeddings=null_frames, draw=draw)
        layout = self.pattern.layout(self.num_codebooks, num_frames)
        calls = int(last_step_before(layout)[generated.cpu()].max()) + 1 if batch_size else 0
        self.last_stats = {"denoiser_calls": min(calls, layout.shape[1])}  # one cached step per call
        generated = torch.minimum(generated, lengths.to(generated.device))
        width = int(generated.max()) if batch_size else 0
        codes = codes[:, :, :width] * (torch.arange(width, device=codes.device) < generated[:, None, None])
        return self.tokens(codes.contiguous(), generated)
