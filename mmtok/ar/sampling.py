"""Autoregressive generation: one step per model call with a KV cache, any codebook pattern."""

from __future__ import annotations

import torch

from mmtok.codebook_transformer import CodebookTransformer
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
             prefix: torch.Tensor | None = None, prefix_valid: torch.Tensor | None = None,
             null_prefix: torch.Tensor | None = None, null_prefix_valid: torch.Tensor | None = None,
             cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None,
             precision: str = "float64", prefix_positions: torch.Tensor | None = None,
             null_prefix_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (codes ``[B, Q, num_frames]``, lengths ``[B]``). ``temperature=0`` decodes greedily.

    Each step fills only the slots the pattern marks; the others get the codebook's special id, as in
    training. A prefix of condition embeddings ``[B, P, D]`` may be left-padded (``prefix_valid``
    False on padding), so items with prompts of different lengths share a batch.

    With an end token (``model.end_token``) an item stops at the first frame whose first-codebook slot
    draws "end": its length is that frame, its later slots are empty, and the loop stops once every
    item is complete. Without one, or if none is drawn, items have ``num_frames`` frames.

    With ``null_prefix`` (the null condition, padded to the prefix's shape) the batch is doubled: the
    conditional and unconditional logits of every step are combined by classifier-free guidance
    with ``cfg_scale`` before sampling, and both halves are fed the same sampled tokens.

    ``prefix_positions`` ([B, P]) places the prefix at explicit rotary positions; steps are then at
    0, 1, 2, ... (the generator's ``positions="aligned"`` scheme)."""
    num_codebooks = len(model.codebook_sizes)
    layout = pattern.layout(num_codebooks, num_frames)
    if model.end_token and not pattern.is_frame_stable(num_codebooks):
        raise ValueError(f"{type(pattern).__name__} places codes at steps that depend on the sequence length; "
                         "an end token needs a frame-stable pattern (parallel, delay, flatten)")
    guided = null_prefix is not None
    if guided:
        if prefix is None or null_prefix.shape != prefix.shape:
            raise ValueError("null_prefix needs a prefix of the same shape "
                             f"({None if prefix is None else tuple(prefix.shape)} vs {tuple(null_prefix.shape)})")
        prefix_valid, null_prefix_valid = _both_valid(prefix, prefix_valid, null_prefix_valid)
        prefix = torch.cat([prefix, null_prefix])
        prefix_valid = torch.cat([prefix_valid, null_prefix_valid])
        if prefix_positions is not None:
            prefix_positions = torch.cat([prefix_positions, null_prefix_positions])
    if prefix is not None:
        batch_size = prefix.shape[0] // (2 if guided else 1)
    rows = batch_size * (2 if guided else 1)
    device = next(model.parameters()).device
    layout = layout.to(device)
    special = torch.tensor(model.special_ids, device=device)
    steps = special[None, :, None].repeat(batch_size, 1, layout.shape[1])
    lengths = torch.full((batch_size,), num_frames, device=device)
    complete_after = last_step_before(layout.cpu()).to(device)
    cache = model.new_cache(rows, (0 if prefix is None else prefix.shape[1]) + layout.shape[1], device=device)
    inputs = special[None, :, None].expand(rows, -1, 1)
    for s in range(layout.shape[1]):
        positions = None
        if prefix_positions is not None:
            step = torch.full((rows, 1), float(s), device=device)
            positions = torch.cat([prefix_positions.to(device), step], dim=1) if s == 0 else step
        logits = model(inputs, prefix=prefix if s == 0 else None, prefix_valid=prefix_valid if s == 0 else None,
                       cache=cache, positions=positions)[:, :, -1]
        if guided:
            logits = classifier_free_guidance(logits[:batch_size], logits[batch_size:], cfg_scale)
        if temperature == 0:
            tokens = logits.argmax(-1)
        else:
            tokens = sample_categorical(process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p),
                                        generator=generator, precision=precision)
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


def _both_valid(prefix, prefix_valid, null_valid) -> tuple[torch.Tensor, torch.Tensor]:
    """Validity masks for the conditional and the null prefix (all True where not given)."""
    full = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
    return (full if prefix_valid is None else prefix_valid), (full if null_valid is None else null_valid)
