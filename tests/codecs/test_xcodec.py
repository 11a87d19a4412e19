"""X-Codec: fusion before the RVQ, semantic head and loss after it, decoding without the teacher."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from conftest import REPO, tiny_codec_args
from mmtok.cli import main
from mmtok.codecs.xcodec import XCodec, semantic_reconstruction_loss
from mmtok.data.audio import AudioDataModule
from mmtok.hub import load_pretrained


def tiny_xcodec(teacher_folder, **overrides) -> XCodec:
    options = dict(encoder_channels=4, decoder_channels=32, acoustic_dim=12, semantic_dim=6, semantic_channels=16,
                   latent_dim=16, num_quantizers=4, codebook_size=32, kmeans_init=False)
    return XCodec(teacher={"type": "recognizer", "path": str(teacher_folder)}, **{**options, **overrides})


def test_fused_dimensions_and_heads_are_consistent(recognizer_folder):
    codec = tiny_xcodec(recognizer_folder)
    assert codec.teacher.dim == 24
    assert codec.fc_prior.in_channels == 12 + 6 and codec.fc_prior.out_channels == 16
    assert codec.quantizer.layers[0].codebook.shape[-1] == 16
    audio = torch.randn(2, 1, 1000) * 0.1
    out = codec(audio, torch.tensor([1000, 700]))
    frames = math.ceil(1000 / 320)
    assert out.latent.shape == (2, 16, frames) and out.codes.shape == (2, 4, frames)
    assert out.audio.shape == audio.shape
    assert codec.semantic_decoder(out.latent).shape == (2, 24, frames)
    assert out.semantic_loss.ndim == 0 and out.semantic_loss > 0


def test_semantic_losses_against_hand_computation():
    predicted = torch.tensor([[[1.0, 0.0, 5.0], [0.0, 2.0, 5.0]]])  # [B=1, D=2, T=3]
    target = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])  # the third frame is padding
    # frame 0: ((0)² + (-1)²) / 2 = 0.5; frame 1: ((-1)² + (2)²) / 2 = 2.5
    assert semantic_reconstruction_loss(predicted, target, mask, "mse").item() == pytest.approx(1.5)
    # frame 0: cos((1, 0), (1, 1)) = 1/√2; frame 1: cos((0, 2), (1, 0)) = 0
    expected = ((1 - 1 / math.sqrt(2)) + 1) / 2
    assert semantic_reconstruction_loss(predicted, target, mask, "cosine").item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="semantic loss must be one of"):
        semantic_reconstruction_loss(predicted, target, mask, "l1")


def test_encode_uses_the_teacher_and_decode_does_not(recognizer_folder, monkeypatch):
    torch.manual_seed(0)
    codec = tiny_xcodec(recognizer_folder).eval()
    audio = torch.randn(2, 1, 1600) * 0.1
    tokens = codec.encode(audio)
    with torch.no_grad():
        codec.teacher.recognizer.frontend[0].bias.add_(1.0)
    assert not torch.equal(codec.encode(audio).codes, tokens.codes), "the teacher's features feed the codes"

    def no_teacher(*args, **kwargs):
        raise AssertionError("decode ran the teacher")

    monkeypatch.setattr(codec.teacher, "forward", no_teacher)
    monkeypatch.setattr(codec.teacher, "_features", no_teacher)
    decoded = codec.decode(tokens)
    with torch.no_grad():
        expected = codec.decoder(codec.dequantize(tokens.codes))
    torch.testing.assert_close(decoded, expected)
    assert decoded.shape == audio.shape


def test_hub_folder_is_self_contained(recognizer_folder, tmp_path):
    torch.manual_seed(0)
    codec = tiny_xcodec(recognizer_folder).eval()
    codec.save_pretrained(tmp_path / "xcodec")
    config = json.loads((tmp_path / "xcodec" / "config.json").read_text())
    assert config["teacher"]["type"] == "recognizer" and "path" not in config["teacher"]
    assert config["teacher"]["config"]["phonemes"] == ["a", "b", "k"]
    loaded = load_pretrained(tmp_path / "xcodec")
    assert isinstance(loaded, XCodec)
    audio = torch.randn(2, 1, 2000) * 0.1
    tokens = codec.encode(audio)
    assert torch.equal(loaded.encode(audio).codes, tokens.codes)
    torch.testing.assert_close(loaded.decode(tokens), codec.decode(tokens))


def test_the_semantic_loss_falls_in_a_few_steps(recognizer_folder, tiny_corpus):
    torch.manual_seed(0)
    codec = tiny_xcodec(recognizer_folder, quantizer_dropout=0.0)
    data = AudioDataModule(path=str(tiny_corpus), build_embedded=False, crop_seconds=0.5, batch_size=8, num_workers=0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    optimizer = torch.optim.Adam([p for p in codec.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        out = codec(batch["audio"], batch["lengths"])
        optimizer.zero_grad()
        (out.semantic_loss + out.commitment_loss).backward()
        optimizer.step()
        losses.append(out.semantic_loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert not any(p.grad is not None for p in codec.teacher.parameters()), "the teacher stays frozen"


def test_bad_arguments_are_named(recognizer_folder):
    with pytest.raises(ValueError, match="semantic_loss must be one of"):
        tiny_xcodec(recognizer_folder, semantic_loss="l1")
    with pytest.raises(FileNotFoundError, match="no-such-teacher"):
        tiny_xcodec(recognizer_folder.parent / "no-such-teacher")


@pytest.mark.parametrize("recipe", ["xcodec_speech", "xcodec_hubert"])
def test_recipe_fit_logs_the_semantic_loss_and_exports(recipe, recognizer_folder, hubert_folder, tiny_corpus, tmp_path):
    codec = "--model.init_args.codec.init_args."
    teacher = ({"type": "recognizer", "path": str(recognizer_folder)} if recipe == "xcodec_speech"
               else {"type": "hf", "path": str(hubert_folder), "layer": "mean"})
    args = tiny_codec_args(tiny_corpus, tmp_path / "run", max_steps=6, val_check_interval=6,
                           recipe=REPO / "recipes" / "codec" / f"{recipe}.yaml", adversarial_start_step=100)
    args += [codec + "teacher", json.dumps(teacher),
             codec + "acoustic_dim", "12", codec + "semantic_dim", "6", codec + "semantic_channels", "16"]
    main(args)
    assert any(row.get("train/semantic_loss") for row in _csv_rows(tmp_path / "run"))
    main(["export", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), str(tmp_path / "hub")])
    loaded = load_pretrained(tmp_path / "hub")
    assert isinstance(loaded, XCodec)
    saved_teacher = json.loads((tmp_path / "hub" / "config.json").read_text())["teacher"]
    assert saved_teacher["type"] == teacher["type"] and "path" not in saved_teacher
    audio = torch.randn(1, 1, 1000) * 0.1
    assert loaded.decode(loaded.encode(audio)).shape == audio.shape


def _csv_rows(run_dir):
    (metrics,) = run_dir.glob("csv/*/metrics.csv")
    with open(metrics) as handle:
        return list(csv.DictReader(handle))
