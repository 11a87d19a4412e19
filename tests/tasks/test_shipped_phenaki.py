"""The released text-to-video model in checkpoints/phenaki-moving-digits: a small Hub folder over the
released C-ViViT that draws clips of the length asked for and continues a clip
by priming."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from mmtok.hub import load_pretrained
from mmtok.tasks import build_task
from mmtok.tasks.video import clip_rates

CHECKPOINT = REPO / "checkpoints" / "phenaki-moving-digits"
JUDGE = REPO / "checkpoints" / "digit-classifier"


@pytest.fixture(scope="module")
def shipped():
    generator = load_pretrained(CHECKPOINT)
    return generator, generator.load_tokenizer(near=CHECKPOINT), build_task(generator.task)


def test_the_release_is_a_small_hub_folder_over_the_released_tokenizer(shipped):
    generator, tokenizer, task = shipped
    assert {p.name for p in CHECKPOINT.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (CHECKPOINT / "model.safetensors").stat().st_size <= 10 * 2**20
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["tokenizer"] == "checkpoints/cvivit-moving-digits" and config["grid"] == [None, 8, 8]
    assert generator.codebook_sizes == tokenizer.codebook_sizes and task.longest == 17


def test_captions_give_clips_of_the_asked_length_that_move_the_named_way(shipped):
    """The frame count is exact, nearly every frame has a stroke, and most clips move the caption's way
    (0.88 / 0.88 / 0.86 of 200 held-out clips at seeds 0 / 1 / 2, docs/benchmarks.md). The captions say the
    digit bounces, as 91 % of the training captions do: a clip without a bounce is short (mostly 5-10 frames), and
    asked for 9 frames this release follows a caption without one less often (0.0 / 0.2 of these ten at seeds 0 / 1).
    The digit is not asserted: 0.57 / 0.555 / 0.535 held out."""
    generator, tokenizer, task = shipped
    ways = ["left", "right", "up", "down", "up-left", "down-right", "up-right", "down-left", "left", "right"]
    captions = [f"the digit {d} moves {way} and bounces off the wall" for d, way in zip(range(10), ways)]
    video = task.make(generator, tokenizer, [captions], frames=9, prime_frames=task.prime_frames,
                      rng=torch.Generator().manual_seed(0), batch_size=10, **generator.sampling_with())
    assert video.shape == (10, 1, 9, 48, 48)
    rates = clip_rates(list(video), list(range(10)), ways, [9] * 10, load_pretrained(JUDGE), 28)
    assert rates["frame_count_rate"] == 1.0, rates
    assert rates["direction_rate"] >= 0.4, rates  # 0.6 and 1.0 at seeds 0 and 1; chance 0.125
    inked = (video.amax(dim=(1, 3, 4)) > 0.5).float().mean()
    assert float(inked) >= 0.9, f"only {float(inked):.0%} of the frames have a stroke"


def test_a_story_starts_with_its_first_segment_and_adds_the_second_after_the_primed_frames(shipped):
    generator, tokenizer, task = shipped
    sampling = generator.sampling_with()
    story = task.make(generator, tokenizer, [["the digit 4 moves right"], ["the digit 4 moves left"]], frames=9,
                      prime_frames=task.prime_frames, rng=torch.Generator().manual_seed(0), batch_size=1, **sampling)
    first = task.make(generator, tokenizer, [["the digit 4 moves right"]], frames=9, prime_frames=task.prime_frames,
                      rng=torch.Generator().manual_seed(0), batch_size=1, **sampling)
    assert story.shape[2] == 9 + (9 - task.prime_frames)
    assert torch.equal(story[:, :, :9], first), "the story's first segment is the clip of its first caption"
    assert not torch.allclose(story[:, :, 9:], story[:, :, 5:9]), "the second segment adds new frames"
