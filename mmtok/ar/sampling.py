"""Autoregressive generation: one step per model call with a KV cache, any codebook pattern."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmtok.codebook_transformer import CodebookTransformer
from mmtok.conditioning import Prefix
from mmtok.patterns import EMPTY, Pattern
from mmtok.sampling import classifier_free_guidance, process_logits, sample_categorical


def last_step_before(layout: torch.Tensor) -> torch.Tensor:
    """LongTensor [T + 1]: entry n is the last step holding a code of a frame < n (-1 for n = 0), the
    step after which a sequence of n frames is complete."""
    num_frames = int(layout.max()) + 1 if (layout != EMPTY).any() else 0
    steps = torch.arange(layout.shape[1]).expand_as(layout)
    last = torch.full((num_frames + 1,), -1)
    for n in range(1, num_frames + 1):
        last[n] = steps[(layout != EMPTY) & (layout < n)].max()
    return last


@torch.inference_mode()
def generate(model: CodebookTransformer, pattern: Pattern, *, num_frames: int, batch_size: int = 1,
             prefix: Prefix | None = None, null_prefix: Prefix | None = None, cfg_scale: float = 1.0,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             rng: torch.Generator | None = None, precision: str = "float64",
             step_coordinates: torch.Tensor | None = None, step_embeddings: torch.Tensor | None = None,
             null_step_embeddings: torch.Tensor | None = None,
             draw: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (codes ``[B, Q, num_frames]``, lengths ``[B]``). ``temperature=0`` decodes greedily.

    ``draw(logits [B, Q, V], s) -> tokens [B, Q]`` picks step s's tokens from its processed logits
    (guided, tempered, filtered); the default is the float64 categorical draw with ``rng``. Distilled
    Decoding's teacher pairs replace it by a deterministic flow from noise (:mod:`mmtok.distill`).

    Each step fills only the slots the pattern marks; the others get the codebook's special id, as in
    training. The condition ``prefix`` may be left-padded (``valid`` False on padding), so items with
    prompts of different lengths share a batch.

    With an end token (``model.end_token``) an item stops at the first frame whose first-codebook slot
    draws "end": its length is that frame, its later slots are empty, and the loop stops once every
    item is complete. Without one, or if none is drawn, items have ``num_frames`` frames.

    With ``null_prefix`` (the null condition, padded to the prefix's length) the batch is doubled: the
    conditional and unconditional logits of every step are combined by classifier-free guidance
    with ``cfg_scale`` before sampling, and both halves are fed the same sampled tokens.

    ``step_coordinates`` ([S] or [S, A], one per step) places the steps, and the prefix at its own
    positions, explicitly (the generator's ``positions="aligned"`` scheme); without it prefix and
    steps are numbered in sequence.

    ``step_embeddings`` ([B, S, D]) are added to the input that predicts each step (conditions placed
    on the frames), as in training; ``null_step_embeddings`` are the null condition's, for the
    unconditional half of classifier-free guidance (with or without a prefix)."""
    num_codebooks = len(model.codebook_sizes)
    layout = pattern.layout(num_codebooks, num_frames)
    if model.end_token and not pattern.is_frame_stable(num_codebooks):
        raise ValueError(f"{type(pattern).__name__} places codes at steps that depend on the sequence length; "
                         "an end token needs a frame-stable pattern (parallel, delay, flatten)")
    guided = null_prefix is not None or null_step_embeddings is not None
    if null_prefix is not None:
        if prefix is None or null_prefix.embeddings.shape != prefix.embeddings.shape:
            raise ValueError("null_prefix needs a prefix of the same shape "
                             f"({None if prefix is None else tuple(prefix.embeddings.shape)} vs "
                             f"{tuple(null_prefix.embeddings.shape)})")
        prefix = prefix.stacked(null_prefix)
    elif guided and prefix is not None:
        raise ValueError("classifier-free guidance with a prefix needs null_prefix")
    if (null_step_embeddings is not None) != (guided and step_embeddings is not None):
        raise ValueError("step_embeddings under classifier-free guidance need null_step_embeddings (and only then)")
    if step_embeddings is not None:
        if step_embeddings.shape[1] != layout.shape[1]:
            raise ValueError(f"step_embeddings for {step_embeddings.shape[1]} steps, the pattern has {layout.shape[1]}")
        batch_size = step_embeddings.shape[0]
        if guided:
            step_embeddings = torch.cat([step_embeddings, null_step_embeddings])
    if prefix is not None:
        batch_size = prefix.embeddings.shape[0] // (2 if guided else 1)
    rows = batch_size * (2 if guided else 1)
    device = next(model.parameters()).device
    layout = layout.to(device)
    special = torch.tensor(model.special_ids, device=device)
    steps = special[None, :, None].repeat(batch_size, 1, layout.shape[1])
    lengths = torch.full((batch_size,), num_frames, device=device)
    complete_after = last_step_before(layout.cpu()).to(device)
    cache = model.new_cache(rows, (0 if prefix is None else prefix.length) + layout.shape[1], device=device)
    inputs = special[None, :, None].expand(rows, -1, 1)
    for s in range(layout.shape[1]):
        positions = None
        if step_coordinates is not None:
            step = step_coordinates[s:s + 1].to(device).expand(rows, *step_coordinates[s:s + 1].shape)
            if s == 0 and prefix is not None:
                before = prefix.positions.to(device)
                before = before[..., None].expand(-1, -1, step.shape[-1]) if step.dim() == 3 else before
                positions = torch.cat([before, step], dim=1)
            else:
                positions = step
        added = None if step_embeddings is None else step_embeddings[:, s:s + 1].to(device)
        logits = model(inputs, prefix=prefix if s == 0 else None, cache=cache, positions=positions,
                       step_embeddings=added)[:, :, -1]
        if guided:
            logits = classifier_free_guidance(logits[:batch_size], logits[batch_size:], cfg_scale)
        if temperature == 0:
            tokens = logits.argmax(-1)
        else:
            logits = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
            tokens = (draw(logits, s) if draw is not None
                      else sample_categorical(logits, generator=rng, precision=precision))
        frames = layout[:, s].expand(batch_size, -1)  # [B, Q]
        if model.end_token:
            ends = (tokens[:, 0] == model.end_id) & (frames[:, 0] != EMPTY) & (frames[:, 0] < lengths)
            lengths = torch.where(ends, frames[:, 0], lengths)
        filled = (frames != EMPTY) & (frames < lengths[:, None])
        steps[:, :, s] = torch.where(filled, tokens, special)
        if bool((complete_after[lengths] <= s).all()):
            break
        inputs = steps[:, :, s:s + 1].repeat(2 if guided else 1, 1, 1)
    codes = pattern.revert(steps, num_frames)
    codes *= torch.arange(num_frames, device=device) < lengths[:, None, None]  # zeros past each end
    return codes, lengths
