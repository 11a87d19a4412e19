"""The masked diffusion objective and generator: schedules and weights by hand, masking rates,
and a tiny conditioned model that learns a token set and generates it with every sampler."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmtok.diffusion.masked import mask_tokens, masked_diffusion_loss, masked_token_cross_entropy, sample_times
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.diffusion.model import MaskedDiffusionGenerator
from mmtok.diffusion.schedules import CosineSchedule, LogLinearSchedule, build_schedule


def test_schedules_and_loss_weights_against_hand_computation():
    t = torch.tensor([0.25, 0.5, 0.9], dtype=torch.float64)
    linear, cosine = LogLinearSchedule(), CosineSchedule()
    torch.testing.assert_close(linear.loss_weight(t), 1 / t)
    expected = (math.pi / 2) * torch.sin(math.pi / 2 * t) / (1 - torch.cos(math.pi / 2 * t))
    torch.testing.assert_close(cosine.loss_weight(t), expected)
    for schedule in (linear, cosine):
        assert float(schedule.alpha(torch.tensor(0.0))) == 1.0 and abs(float(schedule.alpha(torch.tensor(1.0)))) < 1e-7
        torch.testing.assert_close(schedule.inverse(schedule.alpha(t)), t)
    with pytest.raises(ValueError, match="schedule must be one of"):
        build_schedule("linear")


def test_masking_follows_the_schedule_and_respects_padding():
    tokens = torch.zeros(4, 20_000, dtype=torch.long)
    t = torch.tensor([0.1, 0.5, 0.9, 0.5])
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[3, 10_000:] = False
    noisy, masked = mask_tokens(tokens, t, LogLinearSchedule(), mask_id=7, valid=valid,
                                generator=torch.Generator().manual_seed(0))
    rates = masked[:3].float().mean(1)
    torch.testing.assert_close(rates, t[:3], atol=0.015, rtol=0)
    assert not masked[3, 10_000:].any() and (noisy[masked] == 7).all() and (noisy[~masked] == 0).all()
    times = sample_times(8, generator=torch.Generator().manual_seed(0))
    assert ((times >= 1e-3) & (times < 1)).all()
    torch.testing.assert_close(times.sort().values.diff(), torch.full((7,), (1 - 1e-3) / 8))


def test_the_loss_is_the_weighted_masked_cross_entropy_per_valid_token():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 3], [0, 4, 4]])
    masked = torch.tensor([[True, False, True], [False, False, True]])
    t = torch.tensor([0.5, 0.25])
    ce = F.cross_entropy(logits.reshape(6, 5), targets.reshape(6), reduction="none").reshape(2, 3)
    expected = (2 * (ce[0, 0] + ce[0, 2]) + 4 * ce[1, 2]) / 6
    torch.testing.assert_close(masked_diffusion_loss(logits, targets, masked, t, LogLinearSchedule()), expected)


def test_maskgit_weighting_is_the_mean_cross_entropy_of_the_masked_tokens_whatever_their_time():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 3], [0, 4, 4]])
    masked = torch.tensor([[True, False, True], [False, False, True]])
    ce = F.cross_entropy(logits.reshape(6, 5), targets.reshape(6), reduction="none").reshape(2, 3)
    expected = (ce[0, 0] + ce[0, 2] + ce[1, 2]) / 3
    torch.testing.assert_close(masked_token_cross_entropy(logits, targets, masked), expected)
    assert masked_token_cross_entropy(logits, targets, torch.zeros_like(masked)) == 0, "nothing masked: no loss"


def test_a_maskgit_weighted_model_trains_on_that_loss_logs_its_nelbo_and_keeps_the_choice(tiny_codec_folder, tmp_path):
    from mmtok.hub import load_pretrained

    batch = {"codes": torch.randint(0, 32, (4, 2, 5)), "lengths": torch.tensor([5, 3, 5, 2]),
             "speaker": ["a", "b", "a", "b"]}
    nelbo_model, maskgit_model = tiny_mdm(tiny_codec_folder), tiny_mdm(tiny_codec_folder, loss_weighting="maskgit")
    nelbo, _ = nelbo_model.loss(batch, rng=torch.Generator().manual_seed(0))
    loss, logs = maskgit_model.loss(batch, rng=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logs["nelbo"], nelbo.detach())  # same weights, same draws: the bound it no longer trains
    assert not torch.isclose(loss, nelbo), "the trained loss is not the NELBO"
    maskgit_model.save_pretrained(tmp_path / "mdm")
    assert load_pretrained(tmp_path / "mdm").loss_weighting == "maskgit"
    with pytest.raises(ValueError, match="loss_weighting 'simple': expected one of nelbo, maskgit"):
        tiny_mdm(tiny_codec_folder, loss_weighting="simple")


def test_primed_items_are_given_whole_slices_of_the_grid(tiny_codec_folder):
    model = tiny_mdm(tiny_codec_folder, grid=[None, 2], primed_fraction=1.0)
    assert model.prime_unit == 2, "one slice of the grid's first axis: 2 frames"
    lengths = torch.tensor([8, 2, 5, 1]).repeat(2_000)  # 4, 1, 2 and 0 whole slices
    given = model.given_frames(lengths, generator=torch.Generator().manual_seed(0)).reshape(2_000, 4)
    assert set(given[:, 0].tolist()) == {2, 4, 6}, "one to all but the last slice, in whole slices"
    assert (given[:, 1] == 0).all() and (given[:, 2] == 2).all() and (given[:, 3] == 0).all()
    torch.testing.assert_close(given[:, 0].float().mean(), torch.tensor(4.0), atol=0.1, rtol=0)  # uniform
    half = tiny_mdm(tiny_codec_folder, grid=[None, 2], primed_fraction=0.5)
    primed = half.given_frames(torch.full((20_000,), 8), generator=torch.Generator().manual_seed(0)) > 0
    torch.testing.assert_close(primed.float().mean(), torch.tensor(0.5), atol=0.015, rtol=0)
    assert tiny_mdm(tiny_codec_folder).prime_unit == 1, "without a grid a primer comes in frames"
    with pytest.raises(ValueError, match="primed_fraction 1.5: expected a share in"):
        tiny_mdm(tiny_codec_folder, primed_fraction=1.5)


def test_a_primed_item_is_scored_on_the_rest_given_its_first_slices(tiny_codec_folder, tmp_path):
    """At t → 1 every scored code is masked: the loss is then the weighted cross-entropy of the frames after
    the given slice, under logits computed from that slice alone (a reference pass through ``logits``)."""
    from mmtok.hub import load_pretrained

    model = tiny_mdm(tiny_codec_folder, grid=[None, 2], primed_fraction=1.0).train()
    codes = torch.randint(0, 32, (3, 2, 4))
    batch = {"codes": codes, "lengths": torch.tensor([4, 4, 4]), "speaker": ["a", "b", "a"]}
    t = torch.full((3,), 1 - 1e-6)
    loss, logs = model.loss(batch, t=t, rng=torch.Generator().manual_seed(0))
    noisy = codes.clone()
    noisy[:, :, 2:] = model.mask_id  # two slices of 2 frames: the first is given, the second masked
    logits = model.logits(noisy, t, batch, lengths=batch["lengths"], num_frames=4)
    ce = F.cross_entropy(logits[:, :, 2:].flatten(0, -2), codes[:, :, 2:].flatten(), reduction="none")
    torch.testing.assert_close(loss, (model.schedule.loss_weight(t[:1]) * ce).mean())
    assert logs["masked_fraction"] == 0.5, "the given half of every item is never masked"
    _, eval_logs = model.eval().loss(batch, t=t, rng=torch.Generator().manual_seed(0))
    assert eval_logs["masked_fraction"] == 1.0, "validation scores the unprimed bound, comparable across runs"
    model.save_pretrained(tmp_path / "mdm")
    assert load_pretrained(tmp_path / "mdm").primed_fraction == 1.0


def tiny_mdm(folder, codebook_sizes=(32, 32), **overrides) -> MaskedDiffusionGenerator:
    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=codebook_sizes, dim=32, num_layers=2, num_heads=2)
    options = dict(tokenizer=str(folder), backbone=backbone,
                   conditions=[{"type": "class", "key": "speaker", "classes": ["a", "b"]}])
    return MaskedDiffusionGenerator(**{**options, **overrides})


@pytest.mark.parametrize("sampler,positions,pattern", [
    ("fhs", "aligned", "parallel"), ("ancestral", "sequential", "parallel"), ("maskgit", "sequential", "parallel"),
    ("fhs", "aligned", "flatten"), ("fhs", "sequential", "delay")])
def test_a_tiny_model_learns_a_token_set_and_every_sampler_generates_it(sampler, positions, pattern,
                                                                        tiny_codec_folder):
    model = tiny_mdm(tiny_codec_folder, positions=positions, pattern=pattern)
    codes = torch.tensor([[[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], [[7, 7, 0, 0, 0], [8, 1, 0, 0, 0]]])
    batch = {"codes": codes.repeat(8, 1, 1), "lengths": torch.tensor([5, 2]).repeat(8), "speaker": ["a", "b"] * 8}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        loss, _ = model.loss(batch, rng=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens = model.eval().generate({"speaker": ["b", "a"]}, lengths=torch.tensor([2, 5]), sampler=sampler,
                                   temperature=0.5, rng=torch.Generator().manual_seed(0))
    stats = model.last_stats
    assert torch.equal(tokens[0].codes[0], codes[1, :, :2]) and torch.equal(tokens[1].codes[0], codes[0])
    assert (tokens.codes != model.mask_id).all(), "the absorbing token never appears in outputs"
    if sampler == "fhs":
        assert stats["denoiser_calls"] == 2 * 5, "one code per call: the longest item's Q · T events, any pattern"


@pytest.mark.parametrize("sampler", ["fhs", "maskgit", "ancestral"])
def test_denoiser_calls_count_the_forward_passes_guidance_included(sampler, tiny_codec_folder):
    model = tiny_mdm(tiny_codec_folder).eval()
    passes, hidden = [], model.hidden  # one backbone pass per call of hidden

    def counted_hidden(*args, **kwargs):
        passes.append(1)
        return hidden(*args, **kwargs)

    model.hidden = counted_hidden
    counted = []
    for cfg_scale in (1.0, 2.0):
        passes.clear()
        model.generate({"speaker": ["a", "b"]}, lengths=torch.tensor([3, 2]), sampler=sampler, steps=None if
                       sampler == "fhs" else 4, cfg_scale=cfg_scale, rng=torch.Generator().manual_seed(0))
        assert model.last_stats["denoiser_calls"] == len(passes), (sampler, cfg_scale)
        counted.append(len(passes))
    assert counted[1] == 2 * counted[0], "guidance: a conditional and an unconditional pass per sampler call"


def test_the_denoiser_at_chosen_positions_equals_the_full_logits_there(tiny_codec_folder):
    model = tiny_mdm(tiny_codec_folder).eval()
    lengths = torch.tensor([4, 3])
    denoiser, _ = model.denoisers({"speaker": ["a", "b"]}, lengths)
    tokens = torch.randint(0, 33, (2, 2 * 4))
    t = torch.tensor([0.5, 0.7])
    positions = torch.tensor([[5, 0], [2, 7]])  # codebook 1 frame 1, codebook 0 frame 0; ...
    full = denoiser(tokens, t)
    expected = torch.stack([full[0, [5, 0]], full[1, [2, 7]]])
    torch.testing.assert_close(denoiser(tokens, t, positions=positions), expected)


def test_adapting_from_an_ar_generator_copies_every_shared_tensor_and_drops_the_end_row(tiny_codec_folder, tmp_path):
    from mmtok.ar.model import ARGenerator

    torch.manual_seed(1)
    speaker = {"type": "class", "key": "speaker", "classes": ["a", "b"]}
    backbone = CodebookTransformer(codebook_sizes=[32, 32], dim=32, num_layers=2, num_heads=2, end_token=True)
    ar = ARGenerator(tokenizer=str(tiny_codec_folder), backbone=backbone, pattern="delay",
                     conditions=[speaker, {"type": "phonemes", "phonemes": ["x", "y"]}])
    ar.save_pretrained(tmp_path / "ar")
    model = tiny_mdm(tiny_codec_folder, time_conditioning=True,
                     conditions=[speaker, {"type": "phonemes", "phonemes": ["x", "y"], "placement": "frames"}])
    untouched = model.adapt_from_autoregressive(str(tmp_path / "ar"))
    assert untouched and all(name.startswith("time_embedding.") for name in untouched)
    source = ar.state_dict()
    torch.testing.assert_close(model.backbone.heads[0].weight, source["backbone.heads.0.weight"][:32])
    torch.testing.assert_close(model.backbone.transformer.state_dict(), ar.backbone.transformer.state_dict())
    phonemes = model.conditioner.conditions[1].embedding.weight
    torch.testing.assert_close(phonemes, ar.conditioner.conditions[1].embedding.weight)
    other = CodebookTransformer(codebook_sizes=[16, 16], dim=32, num_layers=2, num_heads=2, end_token=True)
    ARGenerator(tokenizer="a/hub-codec-of-16", backbone=other, pattern="delay").save_pretrained(tmp_path / "ar16")
    with pytest.raises(ValueError, match="do not start with"):
        model.adapt_from_autoregressive(str(tmp_path / "ar16"))
    model.save_pretrained(tmp_path / "mdm")
    with pytest.raises(ValueError, match="an ARGenerator Hub folder is needed"):
        tiny_mdm(tiny_codec_folder).adapt_from_autoregressive(str(tmp_path / "mdm"))


def test_the_generator_needs_one_codebook_size_and_a_fitting_tokenizer(tiny_codec_folder, tmp_path):
    from mmtok.hub import load_pretrained

    with pytest.raises(ValueError, match="codebooks of one size"):
        tiny_mdm("a/hub-codec", codebook_sizes=[32, 16])  # a repo id: its vocabulary is checked when loaded
    with pytest.raises(ValueError, match=r"vocabulary is \[64, 64\]"):
        tiny_mdm(tiny_codec_folder, codebook_sizes=[64, 64])  # a local tokenizer: checked at construction
    model = tiny_mdm(tiny_codec_folder, time_conditioning=True, positions="aligned", pattern="delay").eval()
    model.save_pretrained(tmp_path / "mdm")
    loaded = load_pretrained(tmp_path / "mdm")
    options = dict(lengths=torch.tensor([3]), sampler="maskgit", steps=2)
    first = model.generate({"speaker": ["a"]}, rng=torch.Generator().manual_seed(0), **options)
    second = loaded.generate({"speaker": ["a"]}, rng=torch.Generator().manual_seed(0), **options)
    assert torch.equal(first.codes, second.codes) and type(loaded.pattern).__name__ == "DelayPattern"
    with pytest.raises(ValueError, match="steps 0: must be ≥ 1"):
        model.generate({"speaker": ["a"]}, lengths=torch.tensor([3]), sampler="maskgit", steps=0)
    with pytest.raises(ValueError, match="samples with fhs, ancestral, maskgit"):
        model.generate({"speaker": ["a"]}, lengths=torch.tensor([3]), sampler="autoregressive")
