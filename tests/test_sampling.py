"""Logits processors and the float64 categorical draw, against hand computations and exact probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from mmtok.sampling import (classifier_free_guidance, process_logits, sample_categorical, top_k_filter,
                            top_p_filter)


def test_top_k_one_is_greedy():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    samples = sample_categorical(top_k_filter(logits, 1), generator=torch.Generator().manual_seed(1))
    assert torch.equal(samples, logits.argmax(-1))


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_over_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    # sorted: 0.5, 0.3, 0.15, 0.05 -> cumulative 0.5, 0.8, 0.95, 1.0
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.51)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.9)).tolist() == [[True, False, True, True]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [[True, False, False, False]], "never empty"
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_guidance_scale_one_is_the_conditional_logits_and_zero_the_unconditional():
    conditional, unconditional = torch.randn(3, 10), torch.randn(3, 10)
    torch.testing.assert_close(classifier_free_guidance(conditional, unconditional, 1.0), conditional)
    torch.testing.assert_close(classifier_free_guidance(conditional, unconditional, 0.0), unconditional)
    torch.testing.assert_close(classifier_free_guidance(conditional, unconditional, 3.0),
                               unconditional + 3 * (conditional - unconditional))
    impossible = torch.tensor([[0.0, float("-inf")]])
    guided = classifier_free_guidance(impossible, impossible.clone(), 3.0)
    assert guided.tolist() == [[0.0, float("-inf")]], "-inf stays -inf instead of becoming NaN"


def test_a_fixed_generator_gives_identical_samples():
    logits = torch.randn(8, 50)
    first = sample_categorical(logits, generator=torch.Generator().manual_seed(7))
    second = sample_categorical(logits, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize("method", ["inverse_cdf", "gumbel"])
def test_samples_follow_the_exact_probabilities(method):
    probs = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
    logits = probs.log().expand(20000, -1)
    samples = sample_categorical(logits, generator=torch.Generator().manual_seed(0), method=method)
    empirical = torch.bincount(samples, minlength=5).double() / len(samples)
    assert 0.5 * (empirical - probs.double()).abs().sum() < 0.01
    impossible = torch.tensor([[0.0, float("-inf"), 0.0]]).expand(1000, -1)
    assert sample_categorical(impossible, method=method).ne(1).all()


def test_every_sampler_draws_in_float64_by_default():
    import inspect

    from mmtok.ar.sampling import generate
    from mmtok.diffusion.samplers import ancestral_sample, first_hitting_sample, maskgit_sample

    for function in (sample_categorical, generate, ancestral_sample, first_hitting_sample, maskgit_sample):
        assert inspect.signature(function).parameters["precision"].default == "float64", function.__name__


def test_temperature_sharpens_and_rejects_zero():
    logits = torch.tensor([[1.0, 2.0]])
    cold = process_logits(logits, temperature=0.5).softmax(-1)[0, 1].item()
    assert cold == pytest.approx(1 / (1 + math.exp(-2.0)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        process_logits(logits, temperature=0.0)
    with pytest.raises(ValueError, match="precision must be one of"):
        sample_categorical(logits, precision="float16")


def _tiny_masked_diffusion(tokenizer: str):
    from mmtok.diffusion.model import MaskedDiffusionGenerator

    backbone = {"class_path": "mmtok.codebook_transformer.CodebookTransformer",
                "init_args": {"codebook_sizes": [32], "dim": 16, "num_layers": 1, "num_heads": 2}}
    return MaskedDiffusionGenerator(tokenizer=tokenizer, backbone=backbone).eval()


def test_recorded_steps_stay_with_the_recorded_sampler(tiny_codec_folder):
    model = _tiny_masked_diffusion(str(tiny_codec_folder))
    model.record_sampling(sampler="maskgit", steps=32, cfg_scale=3.0)
    assert model.sampling_with() == {"sampler": "maskgit", "steps": 32, "cfg_scale": 3.0}
    assert model.sampling_with(steps=8)["steps"] == 8
    assert model.sampling_with(sampler="fhs") == {"sampler": "fhs", "cfg_scale": 3.0}, "FHS has no steps"
    assert model.sampling_with(sampler="ancestral", steps=16)["steps"] == 16
    assert model.sampling_with(sampler="maskgit")["steps"] == 32, "the same sampler keeps its steps"


def test_the_choice_temperature_reaches_maskgit_and_only_maskgit(tiny_codec_folder, monkeypatch):
    from mmtok.diffusion import model as diffusion_model
    from mmtok.errors import UsageError

    model = _tiny_masked_diffusion(str(tiny_codec_folder))
    model.record_sampling(sampler="maskgit", choice_temperature=1.0)
    assert model.sampling_with(sampler="fhs") == {"sampler": "fhs"}, "it belongs to the recorded sampler"
    assert model.sampling_with(choice_temperature=0.0)["choice_temperature"] == 0.0
    with pytest.raises(UsageError, match="choice_temperature -1"):
        model.sampling_with(choice_temperature=-1.0)
    given = []
    original = diffusion_model.SAMPLERS["maskgit"]

    def recording(*args, **options):
        given.append(options.get("choice_temperature"))
        return original(*args, **options)

    monkeypatch.setitem(diffusion_model.SAMPLERS, "maskgit", recording)
    lengths = torch.tensor([6, 4])
    tokens = model.generate({}, lengths=lengths, rng=torch.Generator().manual_seed(0), **model.sampling_with(steps=3))
    assert given == [1.0] and tokens.codes.shape == (2, 1, 6)
    model.generate({}, lengths=lengths, sampler="maskgit", choice_temperature=0.0)
    model.generate({}, lengths=lengths, sampler="maskgit")
    assert given == [1.0, 0.0, None], "unset, the sampler's own default (4.5) applies"
    with pytest.raises(UsageError, match="the fhs sampler"):
        model.generate({}, lengths=lengths, sampler="fhs", choice_temperature=0.0)
