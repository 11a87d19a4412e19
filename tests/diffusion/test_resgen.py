"""ResGen (mmtok/diffusion/resgen.py): finest-first masking by hand, the cumulative target, the
mixture NLL against a direct computation, exact re-quantization, a step count that does not depend
on depth, a tiny model that learns a token set, and the Hub round trip."""

from __future__ import annotations

import math

import pytest
import torch

from mmtok.codebook_transformer import CodebookTransformer
from mmtok.diffusion.resgen import (ResGenGenerator, cumulative_embedding, mask_finest_first, mixture_nll,
                                    mixture_split, requantize, resgen_sample)
from mmtok.hub import load_pretrained


def test_masking_takes_each_positions_deepest_tokens_first():
    valid = torch.tensor([[True, True, True, False]])
    for seed in range(20):
        masked = mask_finest_first(valid, 4, torch.tensor([0.5]), generator=torch.Generator().manual_seed(seed))
        assert masked.shape == (1, 4, 4)
        assert int(masked.sum()) == math.ceil(0.5 * 3 * 4), "n = ⌈γ · L · D⌉ of the valid slots"
        assert not masked[0, :, 3].any(), "padding is never masked"
        for position in range(3):
            column = masked[0, :, position].tolist()
            k = sum(column)
            assert column == [False] * (4 - k) + [True] * k, f"a suffix of depths: {column}"
    # Hand example: with every slot drawn, all is masked; with one, exactly the deepest token of one position.
    assert mask_finest_first(valid, 4, torch.tensor([1.0])).sum() == 12
    one = mask_finest_first(valid, 4, torch.tensor([0.01]), generator=torch.Generator().manual_seed(0))
    assert int(one.sum()) == 1 and bool(one[0, 3].any())
    # The counts are a hypergeometric draw of n = 3 of 12 slots: a position holds n / L = 1 masked token on
    # average, and at least one with probability 1 − C(8, 3) / C(12, 3).
    draws = torch.stack([mask_finest_first(torch.ones(1, 3, dtype=torch.bool), 4, torch.tensor([0.25]),
                                           generator=torch.Generator().manual_seed(s))[0] for s in range(3000)])
    torch.testing.assert_close(draws.sum(1).float().mean(0), torch.ones(3), atol=0.05, rtol=0)
    torch.testing.assert_close(draws[:, 3].float().mean(0), torch.full((3,), 1 - 56 / 220), atol=0.03, rtol=0)


def test_the_target_is_the_sum_of_the_masked_tokens_codewords(tiny_codec_folder):
    codec = load_pretrained(tiny_codec_folder)
    codewords = torch.stack(codec.codebook_vectors())  # [4, 32, 16]
    codes = torch.randint(0, 32, (2, 4, 5))
    masked = mask_finest_first(torch.ones(2, 5, dtype=torch.bool), 4, torch.tensor([0.3, 0.8]),
                               generator=torch.Generator().manual_seed(0))
    z = cumulative_embedding(codes, masked, codewords)
    # The same vector through the codec's own decoding path: all tokens minus the visible ones.
    visible = codes.masked_fill(masked, -1)  # -1: a dropped codebook adds nothing
    expected = codec.dequantize(codes) - codec.dequantize(visible)  # [B, d, T]
    torch.testing.assert_close(z, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)
    assert (z[~masked.any(1)] == 0).all()


def test_the_mixture_nll_equals_a_direct_computation():
    torch.manual_seed(0)
    logits, means, log_scales = torch.randn(3, 4), torch.randn(3, 4, 2), 0.3 * torch.randn(3, 4, 2)
    z = torch.randn(3, 2)
    weights = logits.softmax(-1)
    expected = []
    for b in range(3):
        density = 0.0
        for k in range(4):
            normal = torch.distributions.Normal(means[b, k], log_scales[b, k].exp())
            density += weights[b, k] * normal.log_prob(z[b]).sum().exp()
        expected.append(-torch.log(density))
    torch.testing.assert_close(mixture_nll((logits, means, log_scales), z), torch.stack(expected))
    nll, classification, regression = mixture_split((logits, means, log_scales), z)
    torch.testing.assert_close(nll, torch.stack(expected))
    q = torch.stack([(weights[:, k].log() + torch.distributions.Normal(means[:, k], log_scales[:, k].exp())
                      .log_prob(z).sum(-1)) for k in range(4)], -1).softmax(-1)
    entropy = -(q * q.log()).sum(-1)
    torch.testing.assert_close(classification + regression - entropy, torch.stack(expected), atol=1e-5, rtol=1e-5)
    # β-NLL: each dimension's regression term weighed by σ^{2β} (no gradient through the weight).
    _, _, weighted = mixture_split((logits, means, log_scales), z, beta=0.5)
    per_dimension = -torch.distributions.Normal(means, log_scales.exp()).log_prob(z[:, None])  # [3, 4, 2]
    torch.testing.assert_close(weighted, (q * (per_dimension * log_scales.exp()).sum(-1)).sum(-1))


def _greedy_codewords(depth=4, size=16, width=6, seed=0) -> torch.Tensor:
    """Codebooks whose scale shrinks with depth, so greedy residual search inverts any sum of codewords."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(size, width, generator=generator) * 0.2 ** j for j in range(depth)])


def test_requantizing_an_exact_cumulative_vector_returns_the_original_tokens():
    codewords = _greedy_codewords()
    codes = torch.randint(0, 16, (3, 4, 7), generator=torch.Generator().manual_seed(1))
    masked = mask_finest_first(torch.ones(3, 7, dtype=torch.bool), 4, torch.tensor([0.2, 0.6, 1.0]),
                               generator=torch.Generator().manual_seed(2))
    z = cumulative_embedding(codes, masked, codewords)
    found, log_probs = requantize(z, masked, codewords, variance=torch.full((3, 7), 1e-9))
    assert torch.equal(found[masked], codes[masked]) and (found[~masked] == 0).all()
    assert (log_probs[masked] > -1e-3).all(), "an exact vector is sure of its codes"
    _, unsure = requantize(z, masked, codewords, variance=torch.full((3, 7), 10.0))
    assert (unsure[masked] < log_probs[masked]).all()


@pytest.mark.parametrize("depth", [4, 8])
def test_the_number_of_network_calls_does_not_depend_on_depth(depth):
    codewords = _greedy_codewords(depth=depth)
    calls = []

    def predict(codes, masked):
        calls.append(int(masked.sum()))
        batch, _, length = masked.shape
        return torch.zeros(batch, length, 2), torch.zeros(batch, length, 2, 6), torch.zeros(batch, length, 2, 6)

    masked = torch.ones(2, depth, 10, dtype=torch.bool)
    codes, stats = resgen_sample(predict, torch.zeros_like(masked, dtype=torch.long), masked, codewords,
                                 num_steps=8, generator=torch.Generator().manual_seed(0))
    assert stats["denoiser_calls"] == 8 == len(calls)
    assert calls == sorted(calls, reverse=True) and calls[0] == 2 * depth * 10
    assert ((codes >= 0) & (codes < 16)).all()


@pytest.fixture(scope="module")
def residual_codec_folder(tmp_path_factory):
    """A tiny RVQ codec whose codewords shrink with depth, as a trained residual quantizer's do (its
    first codebook carries most of the latent), so that greedy search inverts sums of codewords."""
    from mmtok.codecs.rvq import RVQCodec

    torch.manual_seed(0)
    codec = RVQCodec(encoder_channels=4, decoder_channels=16, latent_dim=16, codebook_size=32, num_quantizers=4,
                     kmeans_init=False)
    with torch.no_grad():
        for depth, layer in enumerate(codec.quantizer.layers):
            layer._codebook.embed.mul_(10 * 0.3 ** depth)
    folder = tmp_path_factory.mktemp("residual_codec")
    codec.save_pretrained(folder)
    return folder


def tiny_resgen(tokenizer, **overrides) -> ResGenGenerator:
    backbone = CodebookTransformer(codebook_sizes=[32] * 4, dim=32, num_layers=2, num_heads=2, heads=False)
    options = dict(tokenizer=str(tokenizer), backbone=backbone, components=4,
                   conditions=[{"type": "class", "key": "speaker", "classes": ["a", "b"]}])
    return ResGenGenerator(**{**options, **overrides})


def _self_consistent_codes(codewords: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Codes that greedy residual search returns from their own sum (what an RVQ encoder gives)."""
    everything = torch.ones(codes.shape, dtype=torch.bool)
    for _ in range(10):
        codes, _ = requantize(cumulative_embedding(codes, everything, codewords), everything, codewords)
    return codes


@pytest.mark.parametrize("objective", [{}, {"classification_weight": 16.0, "regression_beta": 0.5}],
                         ids=["nll", "beta-nll"])
def test_a_tiny_model_learns_a_token_set_and_regenerates_it(residual_codec_folder, tmp_path, objective):
    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=[32] * 4, dim=64, num_layers=2, num_heads=2, heads=False,
                                   positions="learned", grid=[8])
    model = tiny_resgen(residual_codec_folder, backbone=backbone, positions="aligned", **objective)
    codes = _self_consistent_codes(model.codewords, torch.randint(0, 32, (2, 4, 5),
                                                                  generator=torch.Generator().manual_seed(3)))
    batch = {"codes": codes.repeat(8, 1, 1), "lengths": torch.tensor([5, 3]).repeat(8), "speaker": ["a", "b"] * 8}
    model.eval()
    _, untrained = model.loss(batch, rng=torch.Generator().manual_seed(0))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / 600)
    for step in range(600):
        loss, _ = model.loss(batch, rng=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    _, logs = model.loss(batch, rng=torch.Generator().manual_seed(0))
    assert logs["nll"] < untrained["nll"] - 3.0, "the NLL per dimension goes down"
    assert logs["requantized_accuracy"] > 0.7

    def generate(generator, **options):
        tokens = generator.generate({"speaker": ["b", "a"]}, lengths=torch.tensor([3, 5]), steps=4, temperature=0.01,
                                    rng=torch.Generator().manual_seed(0), **options)
        return tokens, torch.cat([tokens.codes[0, :, :3] == codes[1, :, :3], tokens.codes[1] == codes[0]], dim=1)

    tokens, right = generate(model)
    assert model.last_stats["denoiser_calls"] == 4
    assert right[0].all(), "the coarse tokens of every position are regenerated exactly"
    assert right.float().mean() > 0.85, right
    # Hub round trip: the same weights, config and samples; the codewords come from the tokenizer again.
    model.save_pretrained(tmp_path / "resgen")
    loaded = load_pretrained(tmp_path / "resgen")
    assert isinstance(loaded, ResGenGenerator) and loaded.latent_scale == model.latent_scale
    assert torch.equal(generate(loaded)[0].codes, tokens.codes)
    _, guided = generate(loaded, cfg_scale=2.0)
    assert loaded.last_stats["denoiser_calls"] == 8, "guidance: a conditional and an unconditional call per step"
    assert guided.float().mean() > 0.7


def test_a_resgen_generator_names_what_it_lacks(tiny_codec_folder):
    with pytest.raises(ValueError, match="latent_dim and latent_scale"):
        tiny_resgen("some/hub-repo")
    model = tiny_resgen(tiny_codec_folder)
    with pytest.raises(Exception, match="sampler 'fhs'"):
        model.generate({"speaker": ["a"]}, lengths=torch.tensor([3]), sampler="fhs")


def test_resgen_over_more_codebooks_starts_from_an_ar_generator_over_fewer(residual_codec_folder, tmp_path):
    from mmtok.ar.model import ARGenerator

    torch.manual_seed(1)
    speaker = {"type": "class", "key": "speaker", "classes": ["a", "b"]}
    backbone = CodebookTransformer(codebook_sizes=[32, 32], dim=32, num_layers=2, num_heads=2, end_token=True)
    ar = ARGenerator(tokenizer=str(residual_codec_folder), backbone=backbone, pattern="delay", conditions=[speaker])
    ar.save_pretrained(tmp_path / "ar")
    model = tiny_resgen(residual_codec_folder)
    untouched = model.adapt_from_autoregressive(str(tmp_path / "ar"))
    assert {"backbone.embeddings.2.weight", "backbone.embeddings.3.weight"} <= set(untouched)
    assert all(name.startswith(("backbone.embeddings.", "head.")) for name in untouched), untouched
    torch.testing.assert_close(model.backbone.embeddings[1].weight, ar.backbone.embeddings[1].weight)
    torch.testing.assert_close(model.backbone.transformer.state_dict(), ar.backbone.transformer.state_dict())
