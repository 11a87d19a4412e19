"""The speaker encoder: padding invariance, unit norm, bad input, learning, the EER, Hub folder, recipe and export."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchaudio

from conftest import REPO
from mmtok.cli import main
from mmtok.errors import DataError
from mmtok.hub import load_pretrained
from mmtok.judges import SpeakerEncoder
from mmtok.judges.speakers import evaluate_speaker_encoder, verification_scores
from mmtok.metrics import equal_error_rate, speaker_similarity
from mmtok.training.speakers import angular_margin_logits, random_crops

RATE = 16000


def tiny(**overrides) -> SpeakerEncoder:
    return SpeakerEncoder(**{"speakers": ["low", "high"], "n_mels": 16, "channels": 16, "dilations": [2, 3],
                             "se_channels": 4, "pool_channels": 16, "attention_dim": 8, "embedding_dim": 8,
                             **overrides})


def voice(speaker: int, seconds: float, generator: torch.Generator) -> torch.Tensor:
    """A synthetic "speaker" [N]: a harmonic tone whose pitch (about 110 Hz or 230 Hz) wobbles per
    utterance, with a bright (1/k) or dark (1/k^2) spectrum, and a little noise."""
    t = torch.arange(int(seconds * RATE)) / RATE
    f0 = (110.0 if speaker == 0 else 230.0) * (1 + 0.1 * (torch.rand((), generator=generator) - 0.5))
    vibrato = 1 + 0.02 * torch.sin(2 * math.pi * (3 + 2 * torch.rand((), generator=generator)) * t)
    phase = 2 * math.pi * torch.cumsum(f0 * vibrato, 0) / RATE
    wave = sum(torch.sin(k * phase) / (k if speaker == 0 else k ** 2) for k in range(1, 12))
    return 0.2 * wave / wave.abs().max() + 0.01 * torch.randn(len(t), generator=generator)


def synthetic_set(count: int, seed: int, seconds: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    return torch.stack([voice(int(s), seconds, generator) for s in labels]), labels


def test_padding_does_not_change_an_utterance_s_embedding():
    torch.manual_seed(0)
    model = tiny()
    model.train()(torch.randn(4, 8000))  # BatchNorm running statistics away from their init
    model.eval()
    utterances = [torch.randn(n) for n in (3200, 8000, 5555, 161)]
    alone = torch.cat([model.embed(u[None]) for u in utterances])
    batch = torch.randn(4, 9000)  # garbage past each length: it must be ignored, like zeros
    for row, u in enumerate(utterances):
        batch[row, : len(u)] = u
    lengths = torch.tensor([len(u) for u in utterances])
    torch.testing.assert_close(model.embed(batch, lengths), alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.embed(batch[:, None], lengths), alone, atol=1e-5, rtol=1e-4)
    assert model.embed(batch, lengths).norm(dim=-1).sub(1).abs().max() < 1e-5, "unit norm"
    assert model(batch, lengths).shape == (4, 2) and model.classify(batch, lengths).shape == (4,)
    similarity = model.similarity(batch, lengths, batch.flip(0), lengths.flip(0))
    torch.testing.assert_close(similarity, (alone * alone.flip(0)).sum(-1), atol=1e-5, rtol=1e-4)


def test_embeddings_are_unit_norm_and_gain_invariant():
    torch.manual_seed(0)
    model = tiny().eval()
    audio = torch.randn(3, 4000) * 0.1
    embeddings = model.embed(audio)
    assert embeddings.shape == (3, 8)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(model.embed(4 * audio), embeddings, atol=1e-5, rtol=1e-4)


def test_bad_input_raises_named_errors():
    model = tiny().eval()
    with pytest.raises(DataError, match=r"audio must be \[B, N\] or \[B, 1, N\]"):
        model.embed(torch.randn(2, 2, 100))
    with pytest.raises(DataError, match=r"lengths must be \[B=2\] with values in \[1, 100\]"):
        model.embed(torch.randn(2, 100), torch.tensor([100, 101]))
    with pytest.raises(DataError, match="audio at 8000 Hz, the encoder reads 16000 Hz"):
        model.embed(torch.randn(1, 100), sample_rate=8000)
    with pytest.raises(DataError, match="pairs needed"):
        model.similarity(torch.randn(2, 100), None, torch.randn(3, 100), None)
    with pytest.raises(DataError, match=r"speakers \['nobody'\] are not among"):
        model.speaker_ids(["low", "nobody"])
    with pytest.raises(DataError, match="equally long, non-empty lists"):
        speaker_similarity(model, [torch.randn(100)], [], RATE)
    with pytest.raises(DataError, match=r"mono waveform \[N\] or \[1, N\], got \(2, 100\)"):
        speaker_similarity(model, [torch.randn(2, 100)], [torch.randn(100)], RATE)
    with pytest.raises(ValueError, match="at least 2 distinct names"):
        SpeakerEncoder(speakers=["only"])


def test_speaker_similarity_resamples_and_batches():
    torch.manual_seed(0)
    model = tiny().eval()
    a = [torch.randn(1, n) for n in (4000, 2400, 3100)]
    b = [torch.randn(n) for n in (1800, 4000, 2000)]
    at_8k = speaker_similarity(model, a, b, 8000, batch_size=2)
    resampled = [torchaudio.functional.resample(x.reshape(1, -1), 8000, RATE) for x in a + b]
    expected = torch.stack([model.similarity(x, None, y, None)[0] for x, y in zip(resampled[:3], resampled[3:])])
    torch.testing.assert_close(at_8k, expected, atol=1e-5, rtol=1e-4)
    assert model.training is False
    model.train()
    speaker_similarity(model, a, b, RATE)
    assert model.training, "the encoder's mode is restored"


def test_equal_error_rate_and_verification_scores():
    same = torch.tensor([True, True, False, False])
    assert equal_error_rate(torch.tensor([0.9, 0.8, 0.2, 0.1]), same) == 0.0, "separable"
    assert equal_error_rate(torch.tensor([0.1, 0.2, 0.8, 0.9]), same) == 1.0, "reversed"
    # one different pair (0.85) above one same pair (0.7): a threshold of 0.8 gives FAR 1/2, FRR 1/2
    assert equal_error_rate(torch.tensor([0.9, 0.7, 0.85, 0.1]), same) == pytest.approx(0.5)
    assert equal_error_rate(torch.tensor([0.5, 0.5, 0.5, 0.5]), same) == pytest.approx(0.5), "all tied"
    with pytest.raises(DataError, match="both same and different pairs"):
        equal_error_rate(torch.tensor([0.1, 0.2]), torch.tensor([True, True]))
    embeddings = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 1.0]]), dim=-1)
    scores = verification_scores(embeddings, ["a", "a", "b", "b"])
    assert scores["same_pairs"] == 2 and scores["different_pairs"] == 4 and scores["eer"] == 0.0
    assert scores["same_cosine"] == pytest.approx((0.8 + 1.0) / 2)
    assert scores["different_cosine"] == pytest.approx((0.0 + 0.0 + 0.6 + 0.6) / 4)


def test_angular_margin_logits_and_random_crops():
    cosines = torch.tensor([[0.5, 0.1], [-0.99, 0.3]])
    labels = torch.tensor([0, 0])
    torch.testing.assert_close(angular_margin_logits(cosines, labels, margin=0.0, scale=10.0), 10 * cosines)
    logits = angular_margin_logits(cosines, labels, margin=0.2, scale=10.0)
    assert logits[0, 0] == pytest.approx(10 * math.cos(math.acos(0.5) + 0.2), rel=1e-5)
    assert logits[1, 0] == pytest.approx(10 * (-0.99 - 0.2 * math.sin(0.2)), rel=1e-5), "past pi: the fallback"
    torch.testing.assert_close(logits[:, 1], 10 * cosines[:, 1])
    audio = torch.arange(2 * 100.0).reshape(2, 1, 100)
    audio[1, :, 40:] = 0
    cropped, lengths = random_crops(audio, torch.tensor([100, 40]), min_samples=50, max_samples=60,
                                    generator=torch.Generator().manual_seed(0))
    assert 50 <= lengths[0] <= 60 and lengths[1] == 40 and cropped.shape[-1] == lengths[0]
    start = int(cropped[0, 0, 0])
    torch.testing.assert_close(cropped[0, 0, : lengths[0]], audio[0, 0, start:start + int(lengths[0])])
    torch.testing.assert_close(cropped[1, 0, :40], audio[1, 0, :40])


def test_the_loss_falls_and_two_synthetic_speakers_separate():
    torch.manual_seed(0)
    train, labels = synthetic_set(16, seed=0)
    model = tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        audio, lengths = random_crops(train[:, None], torch.full((16,), train.shape[-1]), min_samples=8000,
                                      max_samples=12000)
        cosines = model(audio, lengths)
        loss = F.cross_entropy(angular_margin_logits(cosines, labels, margin=0.2, scale=30.0), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5, losses
    model.eval()
    test, test_labels = synthetic_set(8, seed=1, seconds=1.5)
    assert torch.equal(model.classify(test), test_labels)
    scores = verification_scores(model.embed(test), [str(int(s)) for s in test_labels])
    # 30 steps on two voices: same-speaker pairs near 1, different ones about 0.5 (measured 0.999 vs 0.504)
    assert scores["same_cosine"] > scores["different_cosine"] + 0.3 and scores["eer"] == 0.0, scores


def test_save_load_gives_equal_embeddings(tmp_path, tiny_corpus):
    torch.manual_seed(0)
    model = tiny(speakers=str(tiny_corpus))
    assert len(model.speakers) == 12 and model.speakers == sorted(model.speakers)
    model.train()(torch.randn(4, 6000))  # BatchNorm running statistics away from their init
    model.eval()
    model.save_pretrained(tmp_path / "judge")
    config = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.judges.speakers.SpeakerEncoder"
    assert config["speakers"] == model.speakers and config["sample_rate"] == RATE, "the names, not the corpus path"
    reloaded = load_pretrained(tmp_path / "judge")
    assert isinstance(reloaded, SpeakerEncoder) and not reloaded.training
    audio, lengths = torch.randn(3, 7000), torch.tensor([7000, 5000, 3000])
    assert torch.equal(model.embed(audio, lengths), reloaded.embed(audio, lengths))
    assert torch.equal(model(audio, lengths), reloaded(audio, lengths))


@pytest.mark.slow
def test_recipe_fit_then_export_with_the_measured_scores(tiny_corpus, tmp_path):
    encoder = "--model.init_args.encoder.init_args."
    main(["fit", "-c", str(REPO / "recipes/judges/speaker_encoder.yaml"),
          "--data.init_args.path", str(tiny_corpus), "--data.init_args.build_embedded", "false",
          "--data.init_args.batch_size", "8", "--data.init_args.crop_seconds", "1.0",
          encoder + "speakers", str(tiny_corpus), encoder + "channels", "16", encoder + "dilations", "[2]",
          encoder + "pool_channels", "16", encoder + "embedding_dim", "8", encoder + "n_mels", "16",
          "--model.init_args.warmup_steps", "2", "--model.init_args.min_crop_seconds", "0.5",
          "--model.init_args.max_crop_seconds", "1.0", "--model.init_args.margin_warmup_steps", "2",
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    # the tiny corpus' test split holds 1 utterance: the train split has pairs to score
    main(["export", str(checkpoint), str(tmp_path / "hub"), "--data", str(tiny_corpus), "--split", "train", "--half"])
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "| accuracy | same_cosine | different_cosine | eer | utterances |" in card and "SpeakerEncoderModule" in card
    model = load_pretrained(tmp_path / "hub")
    assert isinstance(model, SpeakerEncoder) and model.embedding_dim == 8 and len(model.blocks) == 1
    scored = evaluate_speaker_encoder(model, tiny_corpus, split="train")
    assert f"| {scored['eer']:.4g} | {scored['utterances']} |" in card, "the card holds the exported weights' scores"
