"""The AR transformer over pattern steps: cached decoding equals a full pass; a tiny model memorises codes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmtok.ar.sampling import generate
from mmtok.ar.transformer import ARTransformer
from mmtok.patterns import CoarseFirstPattern, DelayPattern, FlattenPattern, ParallelPattern


def tiny(sizes=(5, 7), **overrides) -> ARTransformer:
    torch.manual_seed(0)
    return ARTransformer(codebook_sizes=sizes, **{**dict(dim=32, num_layers=2, num_heads=4), **overrides}).eval()


def test_cached_step_by_step_logits_equal_the_full_forward():
    model = tiny()
    steps, _ = DelayPattern().build(torch.randint(0, 5, (2, 2, 6)), fill=model.special_ids)
    prefix = torch.randn(2, 3, 32)
    with torch.no_grad():
        full = model(model.shift_right(steps), prefix=prefix)
        inputs = model.shift_right(steps)
        cache = model.new_cache(2, 3 + steps.shape[2])
        pieces = [model(inputs[:, :, :1], prefix=prefix, cache=cache)]
        pieces += [model(inputs[:, :, s:s + 1], cache=cache) for s in range(1, steps.shape[2])]
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, atol=1e-5, rtol=1e-5)
    assert full.shape == (2, 2, steps.shape[2], 7)
    assert torch.isinf(full[:, 0, :, 5:]).all() and torch.isfinite(full[:, 1]).all(), "-inf past codebook 0's size"


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
    generated = generate(model.eval(), pattern, num_frames=6, temperature=0)
    assert torch.equal(generated, codes)


def test_a_fixed_generator_gives_identical_samples():
    model = tiny()
    first = generate(model, DelayPattern(), num_frames=5, batch_size=3, generator=torch.Generator().manual_seed(3),
                     top_k=4, top_p=0.9)
    second = generate(model, DelayPattern(), num_frames=5, batch_size=3, generator=torch.Generator().manual_seed(3),
                      top_k=4, top_p=0.9)
    assert torch.equal(first, second) and first.shape == (3, 2, 5)
    assert (first[:, 0] < 5).all() and (first[:, 1] < 7).all(), "no special id in generated codes"


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional_generation():
    model = tiny()
    condition, null = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    options = dict(num_frames=6, temperature=0)
    conditional = generate(model, DelayPattern(), prefix=condition, **options)
    unconditional = generate(model, DelayPattern(), prefix=null, **options)
    assert not torch.equal(conditional, unconditional), "the prefix must matter for this test to mean anything"
    assert torch.equal(generate(model, DelayPattern(), prefix=condition, null_prefix=null, cfg_scale=1.0, **options),
                       conditional)
    assert torch.equal(generate(model, DelayPattern(), prefix=condition, null_prefix=null, cfg_scale=0.0, **options),
                       unconditional)
    with pytest.raises(ValueError, match="null_prefix needs a prefix of the same shape"):
        generate(model, DelayPattern(), prefix=condition, null_prefix=null[:1], **options)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="codebook_sizes must be positive"):
        ARTransformer(codebook_sizes=[])
    with pytest.raises(ValueError, match=r"steps must be \[B, 2, S\]"):
        tiny()(torch.zeros(1, 3, 4, dtype=torch.long))
