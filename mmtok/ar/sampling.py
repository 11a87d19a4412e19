"""Autoregressive generation: one step per model call with a KV cache, any codebook pattern."""

from __future__ import annotations

import torch

from mmtok.ar.transformer import ARTransformer
from mmtok.patterns import Pattern
from mmtok.sampling import classifier_free_guidance, process_logits, sample_categorical


@torch.no_grad()
def generate(model: ARTransformer, pattern: Pattern, *, num_frames: int, batch_size: int = 1,
             prefix: torch.Tensor | None = None, prefix_valid: torch.Tensor | None = None,
             null_prefix: torch.Tensor | None = None, cfg_scale: float = 1.0,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, precision: str = "float64") -> torch.Tensor:
    """Codes ``[B, Q, num_frames]``. ``temperature=0`` decodes greedily. Each step fills only the
    slots the pattern marks; the others get the codebook's special id, as in training.

    With ``null_prefix`` (the null condition, shaped like ``prefix``) the batch is doubled: the
    conditional and unconditional logits of every step are combined by classifier-free guidance
    with ``cfg_scale`` before sampling, and both halves are fed the same sampled tokens."""
    num_codebooks = len(model.codebook_sizes)
    mask = pattern.mask(num_codebooks, num_frames)
    guided = null_prefix is not None
    if guided:
        if prefix is None or null_prefix.shape != prefix.shape:
            raise ValueError("null_prefix needs a prefix of the same shape "
                             f"({None if prefix is None else tuple(prefix.shape)} vs {tuple(null_prefix.shape)})")
        prefix = torch.cat([prefix, null_prefix])
        prefix_valid = None if prefix_valid is None else torch.cat([prefix_valid, prefix_valid])
    if prefix is not None:
        batch_size = prefix.shape[0] // (2 if guided else 1)
    rows = batch_size * (2 if guided else 1)
    device = next(model.parameters()).device
    special = torch.tensor(model.special_ids, device=device)
    steps = special[None, :, None].repeat(batch_size, 1, mask.shape[1])
    cache = model.new_cache(rows, (0 if prefix is None else prefix.shape[1]) + mask.shape[1], device=device)
    inputs = special[None, :, None].expand(rows, -1, 1)
    for s in range(mask.shape[1]):
        logits = model(inputs, prefix=prefix if s == 0 else None, prefix_valid=prefix_valid if s == 0 else None,
                       cache=cache)[:, :, -1]
        if guided:
            logits = classifier_free_guidance(logits[:batch_size], logits[batch_size:], cfg_scale)
        if temperature == 0:
            tokens = logits.argmax(-1)
        else:
            tokens = sample_categorical(process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p),
                                        generator=generator, precision=precision)
        steps[:, :, s] = torch.where(mask[:, s].to(device), tokens, special)
        inputs = steps[:, :, s:s + 1].repeat(2 if guided else 1, 1, 1)
    return pattern.revert(steps, num_frames)
