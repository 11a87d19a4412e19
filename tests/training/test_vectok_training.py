"""The Vec-Tok recipes end to end at tiny size: SSL pre-training -> export -> units (k-means + BPE),
vocoder and inverse k-means -> export -> `mmtok convert` on a folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mmtok.cli import main

REPO = Path(__file__).resolve().parents[2]


def common(corpus: Path, run: Path, *, max_steps: int, crop: float, val_every: int) -> list[str]:
    return ["--data.init_args.path", str(corpus), "--data.init_args.build_embedded", "false",
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
            "--data.init_args.max_valid_items", "2", "--data.init_args.crop_seconds", str(crop),
            "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(val_every),
            "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(run), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "csv"]


def metrics(run: Path) -> list[dict]:
    with next(run.glob("csv/version_*/metrics.csv")).open() as f:
        return list(csv.DictReader(f))


def vectok_args(corpus: Path, codec_folder: Path, root: Path, *, run: Path, max_steps: int) -> list[str]:
    """`mmtok fit` of the Vec-Tok recipe at tiny size over the SSL model exported under ``root``."""
    codec = "--model.init_args.codec.init_args."
    vectors = json.dumps({"type": "ssl", "path": str(root / "ssl/export"), "layer": 1})
    return ["fit", "-c", str(REPO / "recipes/vectok/vectok_speech.yaml"),
            *common(corpus, run, max_steps=max_steps, crop=1.5, val_every=7),
            codec + "vectors", vectors, codec + "num_units", "16", codec + "bpe_vocab_size", "40",
            codec + "prompt_seconds", "0.5", codec + "vocoder_channels", "16", codec + "vocoder_latent_dim", "16",
            codec + "inverse_dim", "32", codec + "inverse_layers", "1", codec + "inverse_heads", "2",
            codec + "train_prompt_seconds", "[0.2, 0.5]", codec + "vocoder_window_seconds", "0.5",
            "--model.init_args.init_vocoder_from", str(codec_folder), "--model.init_args.fit_frames", "800",
            "--model.init_args.adversarial_start_step", "12", "--model.init_args.lr", "0.003",
            "--model.init_args.discriminator", "mmtok.codecs.discriminators.MultiPeriodDiscriminator",
            "--model.init_args.discriminator.init_args.channels", "[4, 8, 16, 16]",
            "--model.init_args.discriminator.init_args.max_channels", "16"]


@pytest.fixture(scope="module")
def trained(tiny_corpus, tiny_codec_folder, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vectok")
    ssl = "--model.init_args.ssl.init_args."
    main(["fit", "-c", str(REPO / "recipes/vectok/ssl_speech.yaml"),
          *common(tiny_corpus, root / "ssl", max_steps=4, crop=1.0, val_every=4),
          ssl + "dim", "32", ssl + "num_layers", "2", ssl + "num_heads", "2", ssl + "num_targets", "8",
          "--model.init_args.kmeans_frames", "400", "--model.init_args.warmup_steps", "1"])
    main(["export", str(root / "ssl/checkpoints/last.ckpt"), str(root / "ssl/export")])
    main(vectok_args(tiny_corpus, tiny_codec_folder, root, run=root / "vectok", max_steps=16))
    main(["export", str(root / "vectok/checkpoints/last.ckpt"), str(root / "vectok/export")])
    return root, root / "vectok/export"


def test_ssl_recipe_fits_mfcc_targets_and_exports(trained):
    root, _ = trained
    rows = [r for r in metrics(root / "ssl") if r.get("train/masked_loss")]
    assert len(rows) == 4
    ssl = json.loads((root / "ssl/export/config.json").read_text())
    assert ssl["mmtok_class"] == "mmtok.codecs.vectok.SpeechSSL" and ssl["num_targets"] == 8


def test_vocoder_starts_from_the_codec_decoder_and_its_loss_falls(trained, tiny_codec_folder):
    root, export = trained
    mel = [float(r["train/mel_loss"]) for r in metrics(root / "vectok") if r.get("train/mel_loss")]
    assert len(mel) == 14  # 12 generator steps alone, then 2 with the discriminator (2 optimizer steps each)
    assert sum(mel[-4:]) < sum(mel[:4])
    assert any(r.get("train/d_loss") for r in metrics(root / "vectok"))
    validation = [r for r in metrics(root / "vectok") if r.get("val/resynthesis_mel_distance")]
    assert validation and float(validation[-1]["val/vocoder_mel_distance"]) > 0


def test_exported_model_holds_units_bpe_and_a_card(trained):
    _, export = trained
    config = json.loads((export / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.codecs.vectok.VecTok" and config["vectors"]["type"] == "ssl"
    assert "config" in config["vectors"] and "path" not in config["vectors"]  # self-contained
    from mmtok.hub import load_pretrained

    model = load_pretrained(export)
    assert model.units_fitted and model.bpe.vocab_size == 40
    assert "Vec-Tok" in (export / "README.md").read_text()
    tokens = model.encode(torch.randn(1, 1, 16000) * 0.1, bpe=True)
    assert tokens.frame_rate is None


def test_convert_command_mirrors_a_folder_and_reports_a_bad_file(trained, tiny_corpus, tmp_path, capsys):
    _, export = trained
    source = tmp_path / "source"
    (source / "a" / "b").mkdir(parents=True)
    wavs = sorted((tiny_corpus / "wavs").glob("*.wav"))
    for i, wav in enumerate(wavs[:3]):
        (source / ("a/b" if i else "a") / wav.name).write_bytes(wav.read_bytes())
    (source / "broken.wav").write_bytes(b"not audio")
    with pytest.raises(SystemExit):
        main(["convert", str(export), str(source), "--prompt", str(wavs[5]), "--out", str(tmp_path / "out")])
    assert "broken.wav" in capsys.readouterr().err
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.wav"))
    assert written == [f"a/b/{wavs[1].name}", f"a/b/{wavs[2].name}", f"a/{wavs[0].name}"]
    from mmtok.media import load_audio

    assert load_audio(tmp_path / "out" / "a" / wavs[0].name, sample_rate=16000).shape == \
        load_audio(wavs[0], sample_rate=16000).shape
    main(["convert", str(export), str(wavs[0]), "--prompt", str(wavs[5]), "--out", str(tmp_path / "one")])
    assert (tmp_path / "one" / wavs[0].name).is_file()


def test_a_resumed_run_keeps_its_units_and_bpe(trained, tiny_corpus, tiny_codec_folder, tmp_path):
    root, export = trained
    main([*vectok_args(tiny_corpus, tiny_codec_folder, root, run=tmp_path / "resumed", max_steps=18),
          "--ckpt_path", str(root / "vectok/checkpoints/last.ckpt")])
    main(["export", str(tmp_path / "resumed/checkpoints/last.ckpt"), str(tmp_path / "export")])
    before = json.loads((export / "config.json").read_text())
    after = json.loads((tmp_path / "export" / "config.json").read_text())
    assert after["bpe"] == before["bpe"]
    from mmtok.hub import load_pretrained

    assert torch.equal(load_pretrained(tmp_path / "export").centroids, load_pretrained(export).centroids)
