"""Distilled Decoding: the per-token flow's distribution, teacher pairs, the student's start from the
teacher, its passes, the Hub round trip and the recipe from teacher to `mmtok generate` pngs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, cli_error, grid_generator
from mmtok.cli import main
from mmtok.distill.flow import token_flow, whitened_vectors
from mmtok.distill.model import DistilledGenerator
from mmtok.distill.pairs import build_pairs, flow_vectors, pair_noise, shard_path, teacher_pairs
from mmtok.errors import UsageError
from mmtok.hub import load_pretrained, weights_digest


def total_variation(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    frequencies = torch.bincount(tokens, minlength=len(probs)).double() / len(tokens)
    return 0.5 * float((frequencies - probs.double()).abs().sum())


@pytest.mark.parametrize("sharpness", [0.5, 2.0, 5.0])
def test_the_flow_pushes_gaussian_noise_onto_the_teachers_distribution(sharpness):
    torch.manual_seed(0)
    vectors, logits = torch.randn(16, 4), torch.randn(16) * sharpness
    logits[3] = float("-inf")  # a token the teacher rules out (a filtered or padded logit)
    noise = torch.randn(20000, 4)
    tokens = token_flow(noise, logits.expand(20000, -1), vectors)
    # Multinomial draws of 20,000 from 16 tokens sit ~0.01 from p in total variation; the flow's own error
    # at 32 steps is ~0.007 (bench/distilled_decoding.py).
    assert total_variation(tokens, logits.softmax(-1)) < 0.025
    assert not (tokens == 3).any()
    halves = torch.cat([token_flow(noise[:7], logits.expand(7, -1), vectors),
                        token_flow(noise[7:20], logits.expand(13, -1), vectors)])
    assert torch.equal(halves, tokens[:20]), "deterministic, and each token depends on its own noise alone"


def test_whitened_vectors_have_unit_variance_and_keep_the_nearest_neighbours():
    torch.manual_seed(0)
    vectors = torch.randn(64, 3) @ torch.randn(3, 12)  # 12-d codewords on a 3-d subspace
    whitened = whitened_vectors(vectors, 3)
    assert whitened.shape == (64, 3) and torch.allclose(whitened.std(0), torch.ones(3), atol=1e-5)
    assert torch.equal(whitened, whitened_vectors(vectors.clone(), 3))
    nearest = torch.cdist(vectors, vectors).fill_diagonal_(1e9).argmin(1)
    scaled = torch.cdist(whitened, whitened).fill_diagonal_(1e9).argmin(1)
    assert (nearest == scaled).float().mean() > 0.5
    with pytest.raises(ValueError, match="vector_dim must be in 1..12"):
        whitened_vectors(vectors, 13)


@pytest.fixture(scope="module")
def teacher(grid_tokenizer, tmp_path_factory) -> Path:
    """An untrained tiny AR teacher over the 4 x 4 grid, with recorded sampling (cfg 2, T 0.8), as a Hub folder."""
    model = grid_generator(grid_tokenizer).eval()
    model.record_token_facts(load_pretrained(grid_tokenizer))
    model.record_sampling(cfg_scale=2.0, temperature=0.8)
    folder = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(folder)
    return folder


def test_each_pair_token_follows_the_teachers_guided_distribution(teacher):
    """Over many noises, the first step's tokens have the frequencies of the teacher's guided, tempered
    distribution at that step (the flow replaces its categorical draw exactly)."""
    model = load_pretrained(teacher)
    vectors = flow_vectors(model.load_tokenizer(), 2, 4)
    count = 6000
    noise = pair_noise(model, batch_size=count, num_frames=1, dim=4, rng=torch.Generator().manual_seed(0))
    codes = teacher_pairs(model, {"label": ["3"] * count}, noise=noise, vectors=vectors, num_frames=1,
                          cfg_scale=2.0, temperature=0.8)
    with torch.no_grad():
        prefix, null = model.prefix({"label": ["3"]}, batch_size=1), model.prefix({}, batch_size=1, null=True)
        start = torch.tensor(model.backbone.special_ids)[None, :, None]
        position = model.coordinates(torch.arange(1))
        conditional = model.backbone(start, prefix=prefix, positions=model.full_positions(prefix, position, 1))
        unconditional = model.backbone(start, prefix=null, positions=model.full_positions(null, position, 1))
    guided = (unconditional + 2.0 * (conditional - unconditional))[0, :, 0] / 0.8  # [Q, V]
    for q in range(2):
        assert total_variation(codes[:, q, 0], guided[q].softmax(-1)) < 0.04


def test_pairs_are_reproducible_from_a_seed_and_a_rerun_writes_only_missing_shards(teacher, tmp_path):
    options = dict(count=10, shard_size=4, batch_size=3, vector_dim=4, flow_steps=8, progress=False)
    first, again = build_pairs(str(teacher), tmp_path / "a", **options), build_pairs(str(teacher), tmp_path / "b",
                                                                                     **options)
    shards = [shard_path(first, j) for j in range(3)]
    assert [p.name for p in sorted(first.glob("shard_*"))] == [p.name for p in shards]
    for j in range(3):
        a, b = load_file(str(shard_path(first, j))), load_file(str(shard_path(again, j)))
        assert torch.equal(a["codes"], b["codes"]) and torch.equal(a["noise"], b["noise"])
    assert load_file(str(shards[2]))["codes"].shape == (4, 2, 16) and load_file(str(shards[2]))["noise"].shape == (
        4, 16, 2, 4)
    kept = shards[0].stat().st_mtime_ns
    before = load_file(str(shards[1]))
    shards[1].unlink()
    build_pairs(str(teacher), first, **options)
    assert shards[0].stat().st_mtime_ns == kept, "a complete shard is not redone"
    assert torch.equal(load_file(str(shards[1]))["codes"], before["codes"])
    other = build_pairs(str(teacher), tmp_path / "c", **{**options, "count": 4}, seed=1)
    assert not torch.equal(load_file(str(shard_path(other, 0)))["noise"], load_file(str(shards[0]))["noise"])
    with pytest.raises(UsageError, match="made with other settings \\(vector_dim differ"):
        build_pairs(str(teacher), first, **{**options, "vector_dim": 3})


def test_pairs_and_student_record_the_teachers_weights_and_refuse_a_replaced_teacher(teacher, tmp_path):
    """A teacher replaced under the same folder name must not resume, or train from, the old one's pairs."""
    options = dict(count=4, shard_size=4, batch_size=4, vector_dim=4, flow_steps=8, progress=False)
    replaced = tmp_path / "teacher"
    model = load_pretrained(teacher)
    model.save_pretrained(replaced)
    pairs = build_pairs(str(replaced), tmp_path / "pairs", **options)
    digest = weights_digest(replaced)
    assert json.loads((pairs / "info.json").read_text())["teacher_weights"] == digest == weights_digest(teacher)
    student = DistilledGenerator.from_teacher(str(replaced), vector_dim=4)
    student.save_pretrained(tmp_path / "student")
    assert load_pretrained(tmp_path / "student").teacher_weights == digest
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    model.save_pretrained(replaced)
    assert weights_digest(replaced) != digest
    with pytest.raises(UsageError, match="made with other settings \\(teacher_weights differ"):
        build_pairs(str(replaced), pairs, **options)


def test_the_student_starts_as_the_teacher_where_their_inputs_agree(teacher):
    model = load_pretrained(teacher)
    student = DistilledGenerator.from_teacher(str(teacher), vector_dim=4).eval()
    assert [c.dropout for c in student.conditioner.conditions] == [0.0], "no condition dropout: no guidance"
    torch.manual_seed(1)
    codes = torch.randint(0, 16, (3, 2, 16))
    noise = torch.randn(3, 16, 2, 4)
    conditions = {"label": ["1", "4", "7"]}
    steps, _ = model.pattern.build(codes, fill=model.backbone.special_ids)
    with torch.no_grad():
        prefix = model.prefix(conditions, batch_size=3)
        positions = model.full_positions(prefix, model.coordinates(torch.arange(16)), 3)
        taught = model.backbone(model.backbone.shift_right(steps), prefix=prefix, positions=positions)
        known = torch.tensor([16, 5, 0])
        learned = student.student_logits(steps, known, noise, conditions)
    for item, k in enumerate(known.tolist()):
        # slots before k read what the teacher reads (the tokens before them); from k on, noise
        assert torch.allclose(learned[item, :, :k], taught[item, :, :k], atol=1e-5)
        if k < 16:
            assert not torch.allclose(learned[item, :, k:], taught[item, :, k:], atol=1e-3)


@pytest.mark.parametrize("passes", [1, 2])
def test_a_step_is_exactly_one_backbone_call(teacher, passes):
    student = DistilledGenerator.from_teacher(str(teacher), vector_dim=4).eval()
    calls = []
    student.backbone.register_forward_hook(lambda *_: calls.append(1))
    tokens = student.generate({"label": ["2", "5"]}, lengths=torch.tensor([16, 16]), steps=passes,
                              rng=torch.Generator().manual_seed(0))
    assert len(calls) == passes and student.last_stats == {"denoiser_calls": passes}
    assert tokens.codes.shape == (2, 2, 16) and tokens.grid == (4, 4)
    with pytest.raises(UsageError, match="steps 3: a distilled student samples in 1 or 2 steps"):
        student.generate({"label": ["2"]}, lengths=torch.tensor([16]), steps=3)
    with pytest.raises(UsageError, match="cfg_scale 2.0: the student learned the teacher's guided sampling"):
        student.generate({"label": ["2"]}, lengths=torch.tensor([16]), cfg_scale=2.0)


def test_the_second_step_keeps_the_first_steps_early_tokens_and_reuses_the_noise(teacher):
    student = DistilledGenerator.from_teacher(str(teacher), vector_dim=4).eval()
    torch.manual_seed(0)
    for projection in student.noise_in:  # a student that reads its noise
        projection.weight.data.normal_(0, 1.0)
    one = student.generate({"label": ["2"] * 4}, lengths=torch.full((4,), 16), rng=torch.Generator().manual_seed(3))
    two = student.generate({"label": ["2"] * 4}, lengths=torch.full((4,), 16), steps=2,
                           rng=torch.Generator().manual_seed(3))
    known = student.known_steps(16)
    assert known == 8 and torch.equal(one.codes[:, :, :known], two.codes[:, :, :known])
    other = student.generate({"label": ["2"] * 4}, lengths=torch.full((4,), 16), rng=torch.Generator().manual_seed(4))
    assert not torch.equal(one.codes, other.codes), "the tokens are a function of the noise"


def test_hub_round_trip_gives_the_same_tokens(teacher, tmp_path):
    student = DistilledGenerator.from_teacher(str(teacher), vector_dim=4)
    torch.manual_seed(0)
    for projection in student.noise_in:
        projection.weight.data.normal_(0, 0.5)
    student.eval().save_pretrained(tmp_path / "student")
    loaded = load_pretrained(tmp_path / "student")
    assert isinstance(loaded, DistilledGenerator) and loaded.teacher == str(teacher)
    assert loaded.teacher_sampling == {"cfg_scale": 2.0, "temperature": 0.8}
    for steps in (1, 2):
        a, b = (model.generate({"label": ["0", "9"]}, lengths=torch.tensor([16, 16]), steps=steps,
                               rng=torch.Generator().manual_seed(1)) for model in (student, loaded))
        assert torch.equal(a.codes, b.codes)


def _fit_args(teacher: Path, pairs: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "-c", str(REPO / "recipes" / "distill" / "dd_digits.yaml"),
            "--model.init_args.teacher", str(teacher), "--model.init_args.vector_dim", "4",
            "--model.init_args.lr", "0.003", "--model.init_args.warmup_steps", "5",
            "--model.init_args.num_generated_examples", "4",
            "--data.init_args.pairs", str(pairs), "--data.init_args.teacher", str(teacher),
            "--data.init_args.count", "96", "--data.init_args.shard_size", "48", "--data.init_args.vector_dim", "4",
            "--data.init_args.flow_steps", "8", "--data.init_args.valid_count", "16",
            "--data.init_args.batch_size", "16", "--data.init_args.valid_batch_size", "8",
            "--trainer.max_steps", "60", "--trainer.val_check_interval", "60", "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(run),
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "csv", *extra]


def _losses(run: Path) -> list[float]:
    rows = list(csv.DictReader(open(next(run.glob("csv/*/metrics.csv")))))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.slow
def test_the_recipe_draws_pairs_trains_the_student_exports_and_writes_pngs(teacher, tmp_path, capsys):
    pairs, run, hub = tmp_path / "pairs", tmp_path / "run", tmp_path / "hub"
    main(["distill-pairs", str(teacher), str(pairs), "--count", "48", "--shard-size", "48", "--vector-dim", "4",
          "--flow-steps", "8"])
    main(_fit_args(teacher, pairs, run))  # draws the second shard, then trains
    assert sorted(p.name for p in pairs.glob("shard_*")) == ["shard_00000.safetensors", "shard_00001.safetensors"]
    losses = _losses(run)
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5, "the student's loss goes down (2.88 -> 2.46 measured)"
    assert list(run.glob("media/step_*/generated.png")), "validation wrote the student's samples next to the pairs"
    main(["export", str(run / "checkpoints" / "last.ckpt"), str(hub)])
    config = json.loads((hub / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.distill.model.DistilledGenerator" and config["teacher"] == str(teacher)
    assert config["sampling"] == {"sampler": "distilled", "steps": 1}
    for steps in ("1", "2"):
        main(["generate", str(hub), "--class", "7", "--num-samples", "3", "--steps", steps,
              "--out", str(tmp_path / f"steps{steps}")])
        assert sorted(p.name for p in (tmp_path / f"steps{steps}").glob("*.png")) == [
            "class7_000.png", "class7_001.png", "class7_002.png", "grid.png"]
    code, line = cli_error(["generate", str(hub), "--steps", "3", "--out", str(tmp_path / "x")], capsys)
    assert (code, line) == (2, "mmtok generate: steps 3: a distilled student samples in 1 or 2 steps")
    code, line = cli_error(_fit_args(teacher, pairs, tmp_path / "bad", "--model.init_args.vector_dim", "3"), capsys)
    assert (code, line) == (1, f"mmtok fit: {pairs}: pairs drawn with {{'vector_dim': 4}}, but the student distils "
                               "{'vector_dim': 3}")

    naive = tmp_path / "naive"
    main(_fit_args(teacher, pairs, naive, "--model.init_args.inputs", "condition"))
    main(["export", str(naive / "checkpoints" / "last.ckpt"), str(tmp_path / "naive_hub")])
    main(["generate", str(tmp_path / "naive_hub"), "--class", "1", "--num-samples", "2",
          "--out", str(tmp_path / "n")])
    assert (tmp_path / "n" / "class1_001.png").is_file()
