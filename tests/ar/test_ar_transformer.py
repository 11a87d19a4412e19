"""The AR transformer over pattern steps: cached decoding equals a full pass; a tiny model memorises codes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmtok.ar.sampling import generate
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.conditioning import Prefix
from mmtok.patterns import CoarseFirstPattern, DelayPattern, FlattenPattern, ParallelPattern


def tiny(sizes=(5, 7), **overrides) -> CodebookTransformer:
    torch.manual_seed(0)
    return CodebookTransformer(codebook_sizes=sizes, **{**dict(dim=32, num_layers=2, num_heads=4), **overrides}).eval()


def prefix_of(embeddings: torch.Tensor, valid: torch.Tensor | None = None) -> Prefix:
    """A prefix of raw embeddings [B, P, D] (all valid unless ``valid``), at positions 0."""
    valid = torch.ones(embeddings.shape[:2], dtype=torch.bool) if valid is None else valid
    return Prefix(embeddings, valid, torch.zeros(embeddings.shape[:2]))


def test_cached_step_by_step_logits_equal_the_full_forward():
    model = tiny()
    steps, _ = DelayPattern().build(torch.randint(0, 5, (2, 2, 6)), fill=model.special_ids)
    prefix = prefix_of(torch.randn(2, 3, 32))
    with torch.no_grad():
        full = model(model.shift_right(steps), prefix=prefix)
        inputs = model.shift_right(steps)
        cache = model.new_cache(2, 3 + steps.shape[2])
        pieces = [model(inputs[:, :, :1], prefix=prefix, cache=cache)]
        pieces += [model(inputs[:, :, s:s + 1], cache=cache) for s in range(1, steps.shape[2])]
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, atol=1e-5, rtol=1e-5)
    assert full.shape == (2, 2, steps.shape[2], 7)
    assert torch.isinf(full[:, 0, :, 5:]).all() and torch.isfinite(full[:, 1]).all(), "-inf past codebook 0's size"


def test_cached_logits_with_step_embeddings_equal_the_full_forward():
    """Frame-placed conditions (the aligned AR mode): step s's embedding joins the input that predicts
    it, one step at a time through the KV cache as in the full pass."""
    model = tiny()
    steps, _ = DelayPattern().build(torch.randint(0, 5, (2, 2, 6)), fill=model.special_ids)
    prefix = prefix_of(torch.randn(2, 3, 32))
    added = torch.randn(2, steps.shape[2], 32)
    with torch.no_grad():
        inputs = model.shift_right(steps)
        full = model(inputs, prefix=prefix, step_embeddings=added)
        cache = model.new_cache(2, 3 + steps.shape[2])
        pieces = [model(inputs[:, :, :1], prefix=prefix, cache=cache, step_embeddings=added[:, :1])]
        pieces += [model(inputs[:, :, s:s + 1], cache=cache, step_embeddings=added[:, s:s + 1])
                   for s in range(1, steps.shape[2])]
        without = model(inputs, prefix=prefix)
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, without), "the step embeddings are read"


@pytest.mark.parametrize("pattern", [ParallelPattern(), DelayPattern(), FlattenPattern(), CoarseFirstPattern()],
                         ids=lambda p: type(p).__name__)
def test_a_tiny_model_memorises_codes_and_greedy_generation_reproduces_them(pattern):
    model = tiny().train()
    codes = torch.tensor([[[0, 3, 1, 4, 2, 2], [6, 0, 5, 1, 1, 3]]])
    steps, mask = pattern.build(codes, fill=model.special_ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(model.shift_right(steps))
        loss = sum(F.cross_entropy(logits[0, q][mask[q]][:, : model.codebook_sizes[q]], steps[0, q][mask[q]])
                   for q in range(2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    generated, lengths = generate(model.eval(), pattern, num_frames=6, temperature=0)
    assert torch.equal(generated, codes) and lengths.tolist() == [6]


def test_a_fixed_generator_gives_identical_samples():
    model = tiny()
    first, _ = generate(model, DelayPattern(), num_frames=5, batch_size=3,
                        rng=torch.Generator().manual_seed(3), top_k=4, top_p=0.9)
    second, _ = generate(model, DelayPattern(), num_frames=5, batch_size=3,
                         rng=torch.Generator().manual_seed(3), top_k=4, top_p=0.9)
    assert torch.equal(first, second) and first.shape == (3, 2, 5)
    assert (first[:, 0] < 5).all() and (first[:, 1] < 7).all(), "no special id in generated codes"


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional_generation():
    model = tiny()
    condition, null = prefix_of(torch.randn(2, 3, 32)), prefix_of(torch.randn(2, 3, 32))
    options = dict(num_frames=6, temperature=0)
    conditional, _ = generate(model, DelayPattern(), prefix=condition, **options)
    unconditional, _ = generate(model, DelayPattern(), prefix=null, **options)
    assert not torch.equal(conditional, unconditional), "the prefix must matter for this test to mean anything"
    for scale, expected in ((1.0, conditional), (0.0, unconditional)):
        guided, _ = generate(model, DelayPattern(), prefix=condition, null_prefix=null, cfg_scale=scale, **options)
        assert torch.equal(guided, expected)
    with pytest.raises(ValueError, match="null_prefix needs a prefix of the same shape"):
        generate(model, DelayPattern(), prefix=condition, null_prefix=prefix_of(torch.randn(1, 3, 32)), **options)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="codebook_sizes must be positive"):
        CodebookTransformer(codebook_sizes=[])
    with pytest.raises(ValueError, match=r"steps must be \[B, 2, S\]"):
        tiny()(torch.zeros(1, 3, 4, dtype=torch.long))


def test_items_with_prompts_of_different_lengths_generate_as_they_would_alone():
    model = tiny()
    long_prompt, short_prompt = torch.randn(1, 5, 32), torch.randn(1, 2, 32)
    alone = [generate(model, DelayPattern(), num_frames=6, temperature=0, prefix=prefix_of(p))[0]
             for p in (long_prompt, short_prompt)]
    padded = torch.cat([long_prompt, torch.cat([torch.zeros(1, 3, 32), short_prompt], dim=1)])
    valid = torch.tensor([[True] * 5, [False] * 3 + [True] * 2])
    batched, _ = generate(model, DelayPattern(), num_frames=6, temperature=0, prefix=prefix_of(padded, valid))
    assert torch.equal(batched, torch.cat(alone))


def end_token_model(pattern, codes_per_item):
    """A tiny model with an end token trained on items of different lengths (each prompted by its own
    class-like prefix vector) until greedy decoding reproduces them."""
    from mmtok.ar.model import teacher_forcing

    model = tiny(end_token=True).train()
    torch.manual_seed(1)
    prefixes = prefix_of(torch.randn(len(codes_per_item), 1, 32))
    lengths = torch.tensor([c.shape[1] for c in codes_per_item])
    codes = torch.zeros(len(codes_per_item), 2, int(lengths.max()), dtype=torch.long)
    for i, c in enumerate(codes_per_item):
        codes[i, :, : c.shape[1]] = c
    inputs, targets, mask = teacher_forcing(model, pattern, codes, lengths)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        logits = model(inputs, prefix=prefixes)
        loss = F.cross_entropy(logits[mask], targets[mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), prefixes, codes, lengths


@pytest.mark.parametrize("pattern", [ParallelPattern(), DelayPattern(), FlattenPattern()],
                         ids=lambda p: type(p).__name__)
def test_generation_stops_at_the_end_token_per_item(pattern):
    items = [torch.tensor([[0, 3, 1, 4], [6, 0, 5, 1]]), torch.tensor([[2, 2], [3, 4]])]
    model, prefixes, codes, lengths = end_token_model(pattern, items)
    generated, generated_lengths = generate(model, pattern, num_frames=8, temperature=0, prefix=prefixes)
    assert generated_lengths.tolist() == [4, 2]
    assert torch.equal(generated[:, :, :4], codes) and (generated[:, :, 4:] == 0).all()
    assert (generated[1, :, 2:] == 0).all(), "zeros past an item's end"


def test_an_end_token_needs_a_frame_stable_pattern():
    assert not CoarseFirstPattern().is_frame_stable(2) and DelayPattern().is_frame_stable(3)
    with pytest.raises(ValueError, match="frame-stable pattern"):
        generate(tiny(end_token=True), CoarseFirstPattern(), num_frames=4)


def test_bidirectional_outputs_ignore_padded_steps():
    model = tiny()
    steps = torch.randint(0, 5, (1, 2, 4))
    padded = torch.cat([steps, torch.zeros(1, 2, 3, dtype=torch.long)], dim=2)
    prefix = prefix_of(torch.randn(1, 2, 32))
    with torch.no_grad():
        alone = model(steps, prefix=prefix, causal=False)
        masked = model(padded, prefix=prefix, steps_valid=torch.tensor([[True] * 4 + [False] * 3]), causal=False)
        unmasked = model(padded, prefix=prefix, causal=False)
    torch.testing.assert_close(masked[:, :, :4], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[:, :, :4], alone, atol=1e-3), "padding would leak without the mask"
