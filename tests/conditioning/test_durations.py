"""Phonemes on the frames by their durations, and the duration predictor (its loss, its spec,
whole frames from its predictions)."""

from __future__ import annotations

import pytest
import torch

from mmtok.conditioning import Conditioner, PhonemeCondition, build_condition
from mmtok.conditioning.durations import round_durations

CPU = torch.device("cpu")


def test_phonemes_placed_by_durations_land_on_the_frames_of_their_spans():
    torch.manual_seed(0)
    phonemes = PhonemeCondition(dim=4, phonemes=["a", "b", "k"], placement="frames", durations="durations").eval()
    model = Conditioner([phonemes])
    batch = {"phonemes": ["a b k", "k a"], "durations": [[1, 3, 2], [4, 1]]}
    frames = model.frames(batch, lengths=torch.tensor([6, 5]), num_frames=7, device=CPU)
    table = phonemes.embedding.weight
    torch.testing.assert_close(frames[0, :6], table[[1, 2, 2, 2, 3, 3]])  # a | b b b | k k
    torch.testing.assert_close(frames[1, :5], table[[3, 3, 3, 3, 1]])  # k k k k | a
    assert not frames[0, 6:].any() and not frames[1, 5:].any(), "nothing past an item's length"
    longer = model.frames(batch, lengths=torch.tensor([8, 5]), num_frames=8, device=CPU)
    torch.testing.assert_close(longer[0, 6:], table[[3, 3]]), "past the spans: the last phoneme"
    with pytest.raises(ValueError, match="item 1 has 2 phonemes but 3 durations"):
        model.frames({"phonemes": ["a", "k a"], "durations": [[2], [1, 1, 1]]}, lengths=torch.tensor([2, 3]),
                     num_frames=3, device=CPU)


def test_without_durations_the_placement_is_the_uniform_one_of_existing_models():
    torch.manual_seed(0)
    uniform = PhonemeCondition(dim=4, phonemes=["a", "b", "k"], placement="frames").eval()
    aligned = PhonemeCondition(dim=4, phonemes=["a", "b", "k"], placement="frames", durations="durations").eval()
    aligned.load_state_dict(uniform.state_dict())
    batch, lengths = {"phonemes": ["a b k", "k a"]}, torch.tensor([6, 5])
    expected = Conditioner([uniform]).frames(batch, lengths=lengths, num_frames=6, device=CPU)
    assert torch.equal(Conditioner([aligned]).frames(batch, lengths=lengths, num_frames=6, device=CPU), expected)
    assert torch.equal(Conditioner([uniform]).frames({**batch, "durations": [[1, 1, 4], [1, 4]]}, lengths=lengths,
                                                     num_frames=6, device=CPU), expected), "not read unless named"
    assert "durations" not in uniform.spec() and "duration_predictor" not in uniform.spec(), "specs as before"
    with pytest.raises(ValueError, match="training needs the batch field 'durations'"):
        Conditioner([aligned.train()]).frames(batch, lengths=lengths, num_frames=6, device=CPU)
    with pytest.raises(ValueError, match="use placement 'frames'"):
        PhonemeCondition(dim=4, phonemes=["a"], durations="durations")
    with pytest.raises(ValueError, match="learns from the batch's durations"):
        PhonemeCondition(dim=4, phonemes=["a"], placement="frames", duration_predictor={})


def test_span_positions_count_the_frames_passed_and_left_in_each_phonemes_span():
    torch.manual_seed(0)
    phonemes = PhonemeCondition(dim=4, phonemes=["a", "b", "k"], placement="frames", durations="durations",
                                span_positions=3).eval()
    batch = {"phonemes": ["a b k", "k a"], "durations": [[1, 4, 2], [2, 3]]}
    frames = Conditioner([phonemes]).frames(batch, lengths=torch.tensor([7, 5]), num_frames=7, device=CPU)
    table, passed, left = phonemes.embedding.weight, phonemes.elapsed.weight, phonemes.remaining.weight
    # a | b b b b | k k: passed 0 | 0 1 2 2(clamped) | 0 1, left 1 | 2(clamped) 2 2 1 | 2 1
    expected = table[[1, 2, 2, 2, 2, 3, 3]] + passed[[0, 0, 1, 2, 2, 0, 1]] + left[[1, 2, 2, 2, 1, 2, 1]]
    torch.testing.assert_close(frames[0], expected)
    expected = table[[3, 3, 1, 1, 1]] + passed[[0, 1, 0, 1, 2]] + left[[2, 1, 2, 2, 1]]  # k k | a a a
    torch.testing.assert_close(frames[1, :5], expected)
    uniform = Conditioner([phonemes]).frames({"phonemes": ["a b k"]}, lengths=torch.tensor([7]), num_frames=7,
                                             device=CPU)  # ⌊t·3/7⌋: a a a | b b | k k
    expected = table[[1, 1, 1, 2, 2, 3, 3]] + passed[[0, 1, 2, 0, 1, 0, 1]] + left[[2, 2, 1, 2, 1, 2, 1]]
    torch.testing.assert_close(uniform[0], expected)
    rebuilt = build_condition(phonemes.spec(), dim=4)
    assert (rebuilt.span_positions, rebuilt.context_layers) == (3, 0)
    with pytest.raises(ValueError, match="span_positions count frames within a phoneme's span"):
        PhonemeCondition(dim=4, phonemes=["a"], span_positions=4)


def test_context_layers_let_a_frame_see_the_next_phoneme_and_not_past_the_padding():
    torch.manual_seed(0)
    phonemes = PhonemeCondition(dim=8, phonemes=["a", "b", "k"], placement="frames", durations="durations",
                                context_layers=1).eval()
    torch.nn.init.normal_(phonemes.context[0].norm.bias)  # as after training: the norm of a zero pad is not zero
    model = Conditioner([phonemes])

    def first_frame(text, durations):
        batch = {"phonemes": [text], "durations": [durations]}
        return model.frames(batch, lengths=torch.tensor([3]), num_frames=3, device=CPU)[0, 0]

    assert not torch.allclose(first_frame("a b", [1, 2]), first_frame("a k", [1, 2])), "the next phoneme is seen"
    torch.testing.assert_close(first_frame("a b b", [1, 1, 1]), first_frame("a b b", [1, 2, 0]))
    padded = phonemes.states(phonemes.ids(["a b", "a b k k"], CPU))
    torch.testing.assert_close(padded[0, :2], phonemes.states(phonemes.ids(["a b"], CPU))[0])
    assert not padded[0, 2:].any(), "padding stays zero"
    assert "context_layers" not in PhonemeCondition(dim=4, phonemes=["a"]).spec(), "specs as before"
    assert build_condition(phonemes.spec(), dim=8).context_layers == 1


def predictor_condition(**predictor) -> PhonemeCondition:
    torch.manual_seed(0)
    return PhonemeCondition(dim=8, phonemes=["a", "b", "k"], placement="frames", durations="durations",
                            duration_predictor={"speakers": ["fast", "slow"], "dim": 32, "dropout": 0.0,
                                                "speaker_dropout": 0.0, **predictor})


def test_the_duration_predictors_loss_falls_and_it_learns_each_speakers_pace():
    condition = predictor_condition()
    rate = {"a": 2, "b": 5, "k": 3}
    phonemes = ["a b k", "k a", "b b a k", "a k", "b k a a"]
    batch = {"phonemes": phonemes * 2, "speaker": ["fast"] * 5 + ["slow"] * 5,
             "durations": [[rate[p] for p in text.split()] for text in phonemes]
             + [[2 * rate[p] for p in text.split()] for text in phonemes]}  # the slow voice: twice the frames
    optimizer = torch.optim.Adam(condition.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        loss, logs = Conditioner([condition.train()]).auxiliary_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(logs["duration_loss"]))
    assert losses[-1] < 0.01 * losses[0], f"{losses[0]:.3f} -> {losses[-1]:.3f}"
    condition.eval()
    fast, slow = condition.predict_frames(["a b k", "a b k"], ["fast", "slow"])
    assert round_durations(fast) == [2, 5, 3] and round_durations(slow) == [4, 10, 6]
    assert condition.predict_frames(["a"], None)[0].shape == (1,), "no speaker: the null speaker"
    no_durations = {"phonemes": ["a"], "speaker": ["fast"]}
    with pytest.raises(ValueError, match="needs the batch field 'durations'"):
        condition.auxiliary_loss(no_durations)


def test_the_predictor_is_rebuilt_from_its_spec_with_its_speakers(tiny_corpus):
    condition = PhonemeCondition(dim=8, phonemes=str(tiny_corpus), placement="frames", durations="durations",
                                 duration_predictor={"speakers": str(tiny_corpus), "num_layers": 3})
    spec = condition.spec()
    assert spec["duration_predictor"]["speakers"] == sorted(spec["duration_predictor"]["speakers"])
    assert len(spec["duration_predictor"]["speakers"]) >= 2 and spec["duration_predictor"]["num_layers"] == 3
    rebuilt = build_condition(spec, dim=8)
    rebuilt.load_state_dict(condition.state_dict())
    speaker = spec["duration_predictor"]["speakers"][0]
    text = " ".join(condition.phonemes[:4])
    torch.testing.assert_close(rebuilt.eval().predict_frames([text], [speaker])[0],
                               condition.eval().predict_frames([text], [speaker])[0])
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        build_condition({**spec, "duration_predictor": {**spec["duration_predictor"], "kernel_size": 2}}, dim=8)


def test_whole_frames_are_rounded_on_the_running_sum_and_scaled_by_the_pace():
    assert round_durations([1.4, 1.4, 1.4]) == [1, 2, 1], "ends 1.4, 2.8, 4.2 -> 1, 3, 4"
    assert round_durations([1.4, 1.4, 1.4], pace=2.0) == [3, 3, 2] and sum(round_durations([1.4] * 3, pace=2)) == 8
    assert round_durations(torch.tensor([0.1, 0.1, 0.2])) == [1, 1, 1], "every phoneme keeps a frame"
    frames = 1 + torch.rand(40, generator=torch.Generator().manual_seed(0)) * 7
    for pace in (1.0, 1.25, 1.5):  # no phoneme under a frame: the total is exactly round(pace · sum)
        rounded = round_durations(frames, pace=pace)
        assert sum(rounded) == round(float(frames.double().sum()) * pace)
        assert all(abs(r - f * pace) < 1 for r, f in zip(rounded, frames.tolist())), "each within a frame"
