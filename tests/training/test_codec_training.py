"""End to end: `mmtok fit` of a tiny codec through LightningCLI, resume, export, encode/decode, DDP."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_codec_args
from mmtok.cli import main
from mmtok.codecs.discriminators import MultiPeriodDiscriminator
from mmtok.codecs.rvq import RVQCodec
from mmtok.data.audio import load_audio
from mmtok.data.manifest import read_manifest
from mmtok.export import export_checkpoint, load_model_from_checkpoint
from mmtok.hub import load_pretrained, round_to_half
from mmtok.tokens import Tokens
from mmtok.training.codec import CodecModule
from mmtok.training.loggers import wandb_credentials_available


def _metrics(run_dir: Path) -> list[dict]:
    files = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    assert files, f"no CSV metrics under {run_dir}"
    with open(files[-1]) as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.fixture(scope="module")
def trained_run(tiny_corpus, tmp_path_factory) -> Path:
    """A tiny codec fitted for 40 generator steps: 10 on the mel loss alone, then 30 with the GAN on."""
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("fit")
    main(tiny_codec_args(tiny_corpus, run_dir, max_steps=70, adversarial_start_step=10))
    return run_dir


def test_fit_lowers_the_mel_loss_and_runs_the_gan(trained_run):
    rows = _metrics(trained_run)
    mel = _series(rows, "train/mel_loss")
    assert len(mel) == 40, f"expected one mel loss per generator step, got {len(mel)}"
    first, last = sum(mel[:5]) / 5, sum(mel[-10:]) / 10  # random crops make single steps noisy
    assert last < 0.9 * first, f"mel loss did not fall: first steps {first:.3f}, last steps {last:.3f}"
    assert len(_series(rows, "train/d_loss")) == 30, "the discriminator trains once adversarial_start_step is passed"
    assert _series(rows, "val/mel_distance@4q"), "validation metrics at 4 quantizers are logged"
    samples, seconds = _series(rows, "train/samples_per_s"), _series(rows, "train/audio_seconds_per_s")
    assert len(samples) == 40 and all(value > 0 for value in samples), "every step logs its throughput"
    assert all(abs(s / n - 0.25) < 1e-9 for n, s in zip(samples, seconds)), "0.25 s crops: audio s/s = 0.25 x items/s"
    media = list((trained_run / "media").rglob("*.wav"))
    assert media and list((trained_run / "media").rglob("*.png")), "validation writes wavs and spectrograms"
    assert list(trained_run.rglob("config.yaml")), "LightningCLI saves the resolved recipe in the run folder"


def test_resume_continues_the_same_run(trained_run, tiny_corpus):
    last = trained_run / "checkpoints" / "last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    assert int(before["state_dict"]["generator_steps"]) == 40
    main(tiny_codec_args(tiny_corpus, trained_run, max_steps=80, adversarial_start_step=10)
         + ["--ckpt_path", str(last)])
    after = torch.load(last, map_location="cpu", weights_only=True)
    assert after["global_step"] == 80
    assert int(after["state_dict"]["generator_steps"]) == 45, "5 more batches after the resume, none repeated"


def test_export_gives_a_hub_folder_with_measured_metrics(trained_run, tiny_corpus, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    folder = export_checkpoint(ckpt, tmp_path / "hub", data=str(tiny_corpus), max_items=2)
    card = (folder / "README.md").read_text()
    assert "## Measured metrics" in card and "mel_distance" in card and "```yaml" in card
    from_ckpt, _ = load_model_from_checkpoint(ckpt)
    from_hub = load_pretrained(folder)
    audio = load_audio(read_manifest(tiny_corpus / "manifest.jsonl", key="audio")[0]["audio"], sample_rate=16000)[None]
    assert torch.equal(from_ckpt.encode(audio).codes, from_hub.encode(audio).codes)
    assert torch.equal(from_ckpt.decode(from_ckpt.encode(audio)), from_hub.decode(from_hub.encode(audio)))


def test_half_export_stores_float16_and_loads_the_measured_weights(trained_run, tiny_corpus, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    full = export_checkpoint(ckpt, tmp_path / "full")
    half = export_checkpoint(ckpt, tmp_path / "half", half=True)
    stored = load_file(str(half / "model.safetensors"))
    assert {t.dtype for t in stored.values()} >= {torch.float16}
    assert not any(t.dtype == torch.float32 and t.abs().max() <= 65504 for t in stored.values())
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    rounded, _ = load_model_from_checkpoint(ckpt)
    round_to_half(rounded)
    loaded = load_pretrained(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    audio = load_audio(read_manifest(tiny_corpus / "manifest.jsonl", key="audio")[0]["audio"], sample_rate=16000)[None]
    tokens = rounded.encode(audio)
    assert torch.equal(loaded.encode(audio).codes, tokens.codes)
    assert torch.equal(loaded.decode(tokens), rounded.decode(tokens))
    assert "stored in float16" in (half / "README.md").read_text()


def test_export_refuses_a_checkpoint_without_mmtok_metadata(tmp_path):
    ckpt = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ValueError, match="plain.ckpt: no 'mmtok' entry"):
        export_checkpoint(ckpt, tmp_path / "out")


def test_encode_decode_commands_on_a_folder(trained_run, tiny_corpus, tmp_path):
    hub = export_checkpoint(trained_run / "checkpoints" / "last.ckpt", tmp_path / "hub")
    main(["encode", str(hub), str(tiny_corpus / "wavs"), str(tmp_path / "tokens"), "--num-quantizers", "2",
          "--chunk-seconds", "0.5"])
    token_files = sorted((tmp_path / "tokens").glob("*.safetensors"))
    assert len(token_files) == len(list((tiny_corpus / "wavs").glob("*.wav")))
    tokens = Tokens.load(token_files[0])
    assert tokens.num_codebooks == 2 and tokens.frame_rate == 50
    main(["decode", str(hub), str(tmp_path / "tokens"), str(tmp_path / "wavs"), "--spectrogram"])
    original = load_audio(tiny_corpus / "wavs" / (token_files[0].stem + ".wav"), sample_rate=16000)
    decoded = load_audio(tmp_path / "wavs" / (token_files[0].stem + ".wav"), sample_rate=16000)
    assert decoded.shape == original.shape, "decoding restores the original number of samples"
    assert (tmp_path / "wavs" / (token_files[0].stem + ".png")).is_file()


def test_print_config_shows_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", "recipes/codec/rvq_speech.yaml", "--print_config"])
    printed = capsys.readouterr().out
    for option in ("dead_code_threshold: 2.0", "ema_decay: 0.99", "kmeans_init: true", "quantizer_dropout: 0.5"):
        assert option in printed


def test_wandb_goes_online_only_with_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not wandb_credentials_available()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    assert wandb_credentials_available()


@pytest.mark.slow
@pytest.mark.slow
def test_validation_media_reach_wandb_offline(tiny_corpus, tmp_path, monkeypatch):
    """The recipe's logger: wandb, offline without credentials, gets audio and spectrogram images."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    args = tiny_codec_args(tiny_corpus, tmp_path, max_steps=2, val_check_interval=2) + [
        "--trainer.logger", "mmtok.training.loggers.RunLogger",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "wandb_runs"),
        "--trainer.logger.init_args.name", "media-test",
    ]
    main(args)
    run = next((tmp_path / "wandb_runs" / "wandb").glob("offline-run-*"))
    logged = [p.suffix for p in (run / "files" / "media").rglob("*") if p.is_file()]
    assert ".wav" in logged and ".png" in logged, f"wandb media found: {logged}"


def _tiny_codec(**overrides) -> RVQCodec:
    args = dict(encoder_channels=4, decoder_channels=32, latent_dim=16, codebook_size=32, num_quantizers=4)
    return RVQCodec(**{**args, **overrides})


def test_init_from_a_hub_folder_loads_its_weights(tmp_path):
    torch.manual_seed(0)
    released = _tiny_codec()
    released.save_pretrained(tmp_path / "released")
    module = CodecModule(codec=_tiny_codec(), init_from=str(tmp_path / "released"),
                         discriminator=MultiPeriodDiscriminator(channels=(4, 8), max_channels=8),
                         eval_quantizers=(1, 4))
    for name, tensor in released.state_dict().items():
        assert torch.equal(module.codec.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="shape of quantizer"):
        CodecModule(codec=_tiny_codec(codebook_size=64), init_from=str(tmp_path / "released"))
