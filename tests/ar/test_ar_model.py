"""The AR generator as a Hub model: patterns from specs, teacher forcing with an end token,
conditioning that steers generation, the tokenizer check, and a Hub round trip."""

from __future__ import annotations

import json

import pytest
import torch

from mmtok.ar.model import ARGenerator, teacher_forcing
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.patterns import DelayPattern, ParallelPattern, build_pattern


def test_patterns_are_built_from_a_name_or_a_class_path():
    assert isinstance(build_pattern("parallel"), ParallelPattern)
    delay = build_pattern({"class_path": "mmtok.patterns.DelayPattern", "init_args": {"delays": [0, 2]}})
    assert isinstance(delay, DelayPattern) and delay.delays == [0, 2]
    with pytest.raises(ValueError, match="expected one of"):
        build_pattern({"class_path": "os.system"})


def test_teacher_forcing_targets_codes_then_end_and_masks_padding():
    model = CodebookTransformer(codebook_sizes=[5, 5], dim=8, num_layers=1, num_heads=2, end_token=True)
    codes = torch.tensor([[[1, 2], [3, 4]], [[0, 9], [2, 9]]])  # item 1 has one frame (9 = padding)
    inputs, targets, mask = teacher_forcing(model, ParallelPattern(), codes, torch.tensor([2, 1]))
    assert targets[0].tolist() == [[1, 2, 5], [3, 4, 5]] and mask[0].tolist() == [[True, True, True],
                                                                                  [True, True, False]]
    assert mask[1].tolist() == [[True, True, False], [True, False, False]] and targets[1, 0, 1] == 5
    assert inputs[0].tolist() == [[5, 1, 2], [5, 3, 4]], "start, then the codes; padding never fed"
    assert inputs[1].tolist() == [[5, 0, 5], [5, 2, 5]]


def tiny_generator(folder, codebook_sizes=(32, 32), **overrides) -> ARGenerator:
    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=codebook_sizes, dim=32, num_layers=2, num_heads=2, end_token=True)
    options = dict(tokenizer=str(folder), backbone=backbone, pattern="delay",
                   conditions=[{"type": "class", "key": "speaker", "classes": ["a", "b"]}])
    return ARGenerator(**{**options, **overrides})


@pytest.mark.parametrize("positions", ["sequential", "aligned"])
def test_a_class_condition_steers_generation_to_its_own_sequence_and_length(positions, tiny_codec_folder):
    generator = tiny_generator(tiny_codec_folder, positions=positions)
    codes = torch.tensor([[[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], [[7, 7, 0, 0, 0], [8, 1, 0, 0, 0]]])
    batch = {"codes": codes, "lengths": torch.tensor([5, 2]), "speaker": ["a", "b"]}
    optimizer = torch.optim.Adam(generator.parameters(), lr=3e-3)
    first_loss = None
    for _ in range(150):
        loss, logs = generator.loss(batch)
        first_loss = first_loss or float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.05 * first_loss and logs["accuracy"] == 1.0
    twelve = torch.tensor([12, 12])
    tokens = generator.eval().generate({"speaker": ["b", "a"]}, lengths=twelve, temperature=0)
    assert tokens.lengths.tolist() == [2, 5]
    assert torch.equal(tokens[0].codes[0], codes[1, :, :2]) and torch.equal(tokens[1].codes[0], codes[0])
    guided = generator.generate({"speaker": ["b", "a"]}, lengths=twelve, temperature=0, cfg_scale=1.5)
    assert guided.lengths.tolist() == [2, 5]
    capped = generator.generate({"speaker": ["b", "a"]}, lengths=torch.tensor([12, 3]), temperature=0)
    assert capped.lengths.tolist() == [2, 3] and torch.equal(capped[1].codes[0], codes[0, :, :3])


def test_a_tokenizer_that_does_not_fit_the_vocabulary_fails_with_both_numbers(tiny_codec_folder):
    from mmtok.training.ar import ARModule

    with pytest.raises(ValueError, match=r"codebook sizes \[32, 32, 32, 32\].*vocabulary is \[64, 64\]"):
        ARModule(generator=tiny_generator(tiny_codec_folder, codebook_sizes=[64, 64]))
    with pytest.raises(ValueError, match=r"vocabulary is \[32, 32, 32, 32, 32\]"):
        ARModule(generator=tiny_generator(tiny_codec_folder, codebook_sizes=[32] * 5))
    with pytest.raises(ValueError, match="cannot stop at an end token"):
        tiny_generator(tiny_codec_folder, pattern="coarse_first")


def test_hub_round_trip_keeps_resolved_conditions_and_generates_the_same(tiny_codec_folder, tiny_corpus, tmp_path):
    from mmtok.hub import load_pretrained

    generator = tiny_generator(tiny_codec_folder, conditions=[
        {"type": "phonemes", "phonemes": str(tiny_corpus)},
        {"type": "class", "key": "speaker", "classes": str(tiny_corpus)}]).eval()
    generator.save_pretrained(tmp_path / "gen")
    config = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert isinstance(config["conditions"][0]["phonemes"], list), "the inventory itself, not the corpus path"
    assert config["pattern"]["class_path"] == "mmtok.patterns.DelayPattern"
    assert config["backbone"] == {"class_path": "mmtok.codebook_transformer.CodebookTransformer",
                                  "init_args": generator.backbone.init_args}
    loaded = load_pretrained(tmp_path / "gen")
    speaker = generator.conditioner.conditions[1].classes[0]
    conditions = {"phonemes": ["ð ə", "k æ t"], "speaker": [speaker, speaker]}
    lengths = torch.tensor([12, 12])
    first = generator.generate(conditions, lengths=lengths, rng=torch.Generator().manual_seed(0))
    second = loaded.generate(conditions, lengths=lengths, rng=torch.Generator().manual_seed(0))
    assert torch.equal(first.codes, second.codes) and torch.equal(first.lengths, second.lengths)
    assert loaded.load_tokenizer().codebook_sizes[:2] == [32, 32]


def fit(generator: ARGenerator, batch: dict, *, steps: int) -> dict:
    """Adam at 3e-3 on one batch; the last step's logs."""
    optimizer = torch.optim.Adam(generator.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, logs = generator.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return logs


def test_an_aligned_ar_generator_speaks_each_frames_phoneme_and_its_cached_generation_agrees(tiny_codec_folder):
    """The aligned AR mode: frame t's phoneme (placed by durations) is an input of step t. A model
    trained on codes that spell each frame's phoneme generates, for durations it never saw, codes on
    exactly those frames; greedy cached generation agrees with the teacher-forced full pass."""
    from mmtok.ar.model import teacher_forcing

    code = {"a": (1, 11), "b": (2, 12), "k": (3, 13)}  # codebook 0 and 1 codes of each phoneme's frames

    def codes_of(text: str, durations: list[int], width: int) -> torch.Tensor:
        frames = [code[p] for p, d in zip(text.split(), durations) for _ in range(d)]
        out = torch.zeros(2, width, dtype=torch.long)
        out[:, : len(frames)] = torch.tensor(frames).T
        return out

    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=[32, 32], dim=32, num_layers=2, num_heads=2)
    generator = ARGenerator(tokenizer=str(tiny_codec_folder), backbone=backbone, pattern="delay", positions="aligned",
                            conditions=[{"type": "phonemes", "phonemes": ["a", "b", "k"], "placement": "frames",
                                         "durations": "durations", "dropout": 0.1}])
    assert not generator.stops_by_itself and generator.frame_aligned
    draw = torch.Generator().manual_seed(0)  # random sequences: only each frame's phoneme tells its codes
    texts = [" ".join("abk"[int(i)] for i in torch.randint(0, 3, (3,), generator=draw)) for _ in range(24)]
    durations = [torch.randint(1, 3, (3,), generator=draw).tolist() for _ in texts]
    batch = {"codes": torch.stack([codes_of(t, d, 6) for t, d in zip(texts, durations)]),
             "lengths": torch.tensor([sum(d) for d in durations]), "phonemes": texts, "durations": durations}
    logs = fit(generator, batch, steps=200)
    generator.eval()
    assert logs["accuracy"] > 0.95
    unseen = {"phonemes": ["a k b", "b a k"], "durations": [[1, 2, 3], [3, 1, 1]]}
    tokens = generator.generate(unseen, lengths=torch.tensor([6, 5]), temperature=0)
    assert tokens.lengths.tolist() == [6, 5]
    assert torch.equal(tokens[0].codes[0], codes_of("a k b", [1, 2, 3], 6))
    assert torch.equal(tokens[1].codes[0], codes_of("b a k", [3, 1, 1], 5))
    guided = generator.generate(unseen, lengths=torch.tensor([6, 5]), temperature=0, cfg_scale=2.0)
    assert torch.equal(guided.codes, tokens.codes), "guidance against the null phonemes keeps what they spell"
    # the full teacher-forced pass over the generated codes predicts them back, step for step
    inputs, targets, mask = teacher_forcing(generator.backbone, generator.pattern, tokens.codes, tokens.lengths)
    on_frames = generator.step_conditions(unseen, lengths=tokens.lengths, step_frames=generator._step_frames(6))
    with torch.no_grad():
        logits = generator.backbone(inputs, step_embeddings=on_frames,
                                    positions=generator.full_positions(None, generator.coordinates(
                                        torch.arange(inputs.shape[2])), 2))
    assert torch.equal(logits.argmax(-1)[mask], targets[mask])


def test_span_positions_and_phoneme_context_let_an_aligned_ar_model_speak_a_phonemes_last_frame(tiny_codec_folder):
    """Where a phoneme ends, and what follows it, is what a left-to-right model cannot see from frame t's
    phoneme alone. Codes here mark each span's last frame with the next phoneme (a transition, as
    coarticulation does): with ``span_positions`` and ``context_layers`` the model learns them and
    generates them greedily for durations it never saw; without, it cannot tell the last frame."""
    index = {"a": 0, "b": 1, "k": 2}

    def codes_of(text: str, durations: list[int]) -> torch.Tensor:
        symbols, frames = text.split(), []
        for i, (p, d) in enumerate(zip(symbols, durations)):
            last = 1 + index[p] if i + 1 == len(symbols) else 4 + 3 * index[p] + index[symbols[i + 1]]
            frames += [1 + index[p]] * (d - 1) + [last]
        out = torch.zeros(2, 9, dtype=torch.long)
        out[:, : len(frames)] = torch.tensor(frames)
        return out

    def trained(**options) -> tuple[ARGenerator, float]:
        torch.manual_seed(0)
        backbone = CodebookTransformer(codebook_sizes=[32, 32], dim=32, num_layers=2, num_heads=2)
        generator = ARGenerator(tokenizer=str(tiny_codec_folder), backbone=backbone, pattern="delay",
                                positions="aligned", conditions=[{"type": "phonemes", "phonemes": list(index),
                                                                  "placement": "frames", "durations": "durations",
                                                                  **options}])
        draw = torch.Generator().manual_seed(0)
        texts = [" ".join("abk"[int(i)] for i in torch.randint(0, 3, (3,), generator=draw)) for _ in range(32)]
        durations = [torch.randint(1, 4, (3,), generator=draw).tolist() for _ in texts]
        batch = {"codes": torch.stack([codes_of(t, d) for t, d in zip(texts, durations)]),
                 "lengths": torch.tensor([sum(d) for d in durations]), "phonemes": texts, "durations": durations}
        accuracy = float(fit(generator, batch, steps=250)["accuracy"])
        return generator.eval(), accuracy

    generator, accuracy = trained(span_positions=4, context_layers=1)
    assert accuracy > 0.97
    unseen = {"phonemes": ["k b a", "b k b"], "durations": [[1, 3, 2], [2, 1, 3]]}
    tokens = generator.generate(unseen, lengths=torch.tensor([6, 6]), temperature=0)
    assert torch.equal(tokens[0].codes[0], codes_of("k b a", [1, 3, 2])[:, :6])
    assert torch.equal(tokens[1].codes[0], codes_of("b k b", [2, 1, 3])[:, :6])
    _, blind = trained()
    assert blind < accuracy - 0.05, f"without span positions and context the last frames stay guesses ({blind})"
