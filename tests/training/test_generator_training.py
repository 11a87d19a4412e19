"""The TTS recipes (AR, masked diffusion, ResGen) end to end at tiny size: LightningCLI fit from the token
cache, export, `mmtok generate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import cli_error
from mmtok.cli import main

REPO = Path(__file__).resolve().parents[2]


def tiny_conditions(corpus: Path, placement: str = "prefix", aligned: bool = False) -> list[dict]:
    phonemes = {"type": "phonemes", "key": "phonemes", "phonemes": str(corpus), "dropout": 0.1, "placement": placement}
    if aligned:  # placed by the cache's durations, which a small predictor learns
        phonemes.update(placement="frames", durations="durations",
                        duration_predictor={"speakers": str(corpus), "dim": 16, "dropout": 0.0})
    return [phonemes,
            {"type": "class", "key": "speaker", "classes": str(corpus), "dropout": 0.5},
            {"type": "audio_prompt", "key": "prompt", "codebook_sizes": [32, 32], "dropout": 0.5}]


def tiny_ar_folder(corpus: Path, codec: Path, folder: Path) -> Path:
    """A tiny AR TTS generator with the tiny recipes' width (for the MDM recipe's ``adapt_from``)."""
    from mmtok.ar.model import ARGenerator

    from mmtok.codebook_transformer import CodebookTransformer

    backbone = CodebookTransformer(codebook_sizes=[32, 32], end_token=True, dim=32, num_layers=2, num_heads=2)
    ARGenerator(tokenizer=str(codec), backbone=backbone, pattern="delay",
                conditions=tiny_conditions(corpus)).save_pretrained(folder)
    return folder


def tiny_tts_args(recipe: Path, corpus: Path, codec: Path, tokens: Path, run_dir: Path, *, max_steps: int,
                  adapt_from: Path | None = None, aligned: bool = False):
    generator = "--model.init_args.generator.init_args."
    backbone = generator + "backbone.init_args."
    condition_specs = json.dumps(tiny_conditions(corpus, "frames" if adapt_from else "prefix", aligned=aligned))
    adapt = ["--model.init_args.adapt_from", str(adapt_from)] if adapt_from else []
    if aligned:
        adapt += ["--data.init_args.aligner", str(REPO / "checkpoints" / "phoneme-recognizer")]
    return [
        "fit", "-c", str(recipe),
        generator + "tokenizer", str(codec), backbone + "codebook_sizes", "[32, 32]",
        generator + "conditions", condition_specs, backbone + "dim", "32", backbone + "num_layers", "2",
        backbone + "num_heads", "2",
        "--model.init_args.lr", "0.003", "--model.init_args.warmup_steps", "5",
        "--model.init_args.num_generated_examples", "1",
        "--data.init_args.tokens", str(tokens), "--data.init_args.tokenizer", str(codec),
        "--data.init_args.data", str(corpus), "--data.init_args.batch_size", "4",
        "--data.init_args.valid_batch_size", "2", "--data.init_args.prompt_seconds", "0.3",
        "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(max_steps),
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.name", "csv", *adapt,
    ]


@pytest.mark.parametrize("recipe", ["ar_xcodec_speech.yaml", "ar_rvq_speech.yaml", "mdm_xcodec_speech.yaml",
                                    "ar_xcodec_speech_aligned.yaml", "ar_rvq_speech_aligned.yaml",
                                    "mdm_xcodec_speech_aligned.yaml", "resgen_xcodec_speech_aligned.yaml",
                                    "ar_xcodec8_speech_aligned.yaml"])
def test_the_tts_recipe_trains_from_the_cache_exports_and_speaks(recipe, tiny_corpus, tiny_codec_folder, tmp_path,
                                                                 capsys):
    run = tmp_path / "run"
    aligned = recipe.endswith("_aligned.yaml")
    bidirectional = recipe.startswith(("mdm", "resgen"))
    all_codebooks = recipe.startswith(("resgen", "ar_xcodec8"))  # over all 4 codebooks, from an AR over 2
    adapted = bidirectional or all_codebooks
    adapt_from = tiny_ar_folder(tiny_corpus, tiny_codec_folder, tmp_path / "ar") if adapted else None
    deeper = ["--model.init_args.generator.init_args.backbone.init_args.codebook_sizes", "[32, 32, 32, 32]"]
    main(tiny_tts_args(REPO / "recipes" / "tts" / recipe, tiny_corpus, tiny_codec_folder, tmp_path / "tokens", run,
                       max_steps=40, adapt_from=adapt_from, aligned=aligned) + (deeper if all_codebooks else []))
    assert (tmp_path / "tokens" / "tokens.safetensors").is_file(), "the recipe built the token cache"
    rows = list(csv.DictReader(open(next(run.glob("csv/*/metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < 0.8 * losses[0], f"training loss did not go down: {losses[0]:.3f} -> {losses[-1]:.3f}"
    if aligned:
        from mmtok.data.tokens import TokenCorpus

        assert all("durations" in e for e in TokenCorpus(tmp_path / "tokens").entries), "the recipe aligned the cache"
        durations = [float(r["train/duration_loss"]) for r in rows if r.get("train/duration_loss")]
        assert durations[-1] < 0.5 * durations[0], f"duration loss: {durations[0]:.3f} -> {durations[-1]:.3f}"
    assert list(run.glob("media/step_*/0_generated.wav")) and list(run.glob("media/step_*/0_generated.png"))

    main(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "hub")])
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "mmtok generate" in card and "TextToSpeech" in card
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert (config["frame_rate"], config["sample_rate"], config["grid"]) == (50.0, 16000, None), "the tokens' facts"
    if bidirectional:
        from mmtok.data.tokens import TokenCorpus
        from mmtok.tasks.tts import TextToSpeech

        measured = config["task"]["init_args"]["frames_per_phoneme"]
        task = TextToSpeech()
        task.measure(TokenCorpus(tmp_path / "tokens"))
        assert measured == pytest.approx(task.frames_per_phoneme) and measured != 5.0
    prompt = next((tiny_corpus / "wavs").glob("*.wav"))
    sampler = {"mdm": ["--sampler", "maskgit", "--steps", "4"], "resgen": ["--sampler", "resgen", "--steps", "4"]}
    sampler = sampler.get(recipe.split("_")[0], [])
    if aligned:
        assert "duration_predictor" in config["conditions"][0], "the predictor is part of the released generator"
        sampler += ["--pace", "1.5"]
    main(["generate", str(tmp_path / "hub"), "--text", "The cat sat.", "--text", "A dog ran home.",
          "--speaker", "us-m1", "--prompt", str(prompt), "--out", str(tmp_path / "out"), "--max-seconds", "0.6",
          *sampler])
    lines = [json.loads(line) for line in (tmp_path / "out" / "generated.jsonl").read_text().splitlines()]
    assert [line["text"] for line in lines] == ["The cat sat.", "A dog ran home."]
    for line in lines:
        assert (tmp_path / "out" / line["audio"]).is_file() and 0 < line["seconds"] <= 0.6
        assert (tmp_path / "out" / line["audio"]).with_suffix(".png").is_file()
    assert (tmp_path / "out" / "prompt.wav").is_file(), "the voice prompt is kept next to the results"
    assert "generated 2 utterance(s)" in capsys.readouterr().out


def test_generate_names_a_condition_the_model_does_not_have(tiny_codec_folder, tmp_path, capsys):
    from mmtok.ar.model import ARGenerator
    from mmtok.codebook_transformer import CodebookTransformer

    backbone = CodebookTransformer(codebook_sizes=[32], dim=16, num_layers=1, num_heads=2)
    ARGenerator(tokenizer=str(tiny_codec_folder), backbone=backbone,
                task={"class_path": "mmtok.tasks.tts.TextToSpeech"},
                conditions=[{"type": "phonemes", "phonemes": ["k", "æ", "t", "ð", "ə", "s"]}]).save_pretrained(
        tmp_path / "gen")
    code, line = cli_error(["generate", str(tmp_path / "gen"), "--text", "the cat", "--speaker", "us-m1", "--out",
                            str(tmp_path / "out")], capsys)
    assert code == 2 and line.startswith("mmtok generate: --speaker us-m1: this generator has no 'speaker' condition")


def test_grow_depth_starts_a_deeper_generator_at_the_shallower_ones_loss(tiny_codec_folder, tmp_path):
    import torch

    from mmtok.codebook_transformer import CodebookTransformer
    from mmtok.diffusion.model import MaskedDiffusionGenerator
    from mmtok.errors import DataError
    from mmtok.training.diffusion import MaskedDiffusionModule

    def generator(num_layers: int) -> MaskedDiffusionGenerator:
        torch.manual_seed(num_layers)
        backbone = CodebookTransformer(codebook_sizes=[32, 32], dim=32, num_layers=num_layers, num_heads=2)
        return MaskedDiffusionGenerator(tokenizer=str(tiny_codec_folder), backbone=backbone)

    generator(2).save_pretrained(tmp_path / "shallow")
    shallow = MaskedDiffusionModule(generator=generator(2), init_from=str(tmp_path / "shallow")).generator
    deep = MaskedDiffusionModule(generator=generator(3), init_from=str(tmp_path / "shallow"), grow_depth=True).generator
    batch = {"codes": torch.randint(0, 32, (3, 2, 20), generator=torch.Generator().manual_seed(0)),
             "lengths": torch.tensor([20, 14, 9])}
    losses = [model.loss(batch, rng=torch.Generator().manual_seed(1))[0] for model in (shallow, deep)]
    torch.testing.assert_close(losses[1], losses[0])
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in shallow.parameters())
    with pytest.raises(DataError, match=r"init_from .*shallow: the recipe's generator does not fit its weights:\n"
                                        r"  missing from weights: backbone.transformer.blocks.2"):
        MaskedDiffusionModule(generator=generator(3), init_from=str(tmp_path / "shallow"))
    with pytest.raises(ValueError, match="grow_depth: give init_from"):
        MaskedDiffusionModule(generator=generator(3), grow_depth=True)
