"""Vec-Tok: k-means units, BPE, the embedded SSL model, the tokenizer contract, Hub round trips."""

from __future__ import annotations

import pytest
import torch

from mmtok.codecs.semantic import build_semantic_encoder
from mmtok.codecs.vectok import (SpeechSSL, UnitBPE, VecTok, fit_kmeans, mfcc_frames, nearest_centroid,
                                 span_mask)
from mmtok.data.audio import AudioDataModule
from mmtok.errors import DataError, UsageError
from mmtok.hub import load_pretrained


def speech_batches(corpus, *, batch_size=4, crop_seconds=1.5):
    module = AudioDataModule(path=str(corpus), crop_seconds=crop_seconds, batch_size=batch_size, seed=0)
    module.setup("fit")
    return list(module.train_dataloader())


def tiny_vectok(vectors: dict) -> VecTok:
    return VecTok(vectors=vectors, num_units=16, bpe_vocab_size=48, prompt_seconds=0.5, vocoder_channels=16,
                  vocoder_latent_dim=8, inverse_dim=32, inverse_layers=1, inverse_heads=2,
                  train_prompt_seconds=(0.2, 0.4))


@pytest.fixture(scope="module")
def ssl_model() -> SpeechSSL:
    torch.manual_seed(0)
    return SpeechSSL(dim=32, num_layers=2, num_heads=2, num_targets=8).eval()


@pytest.fixture(scope="module")
def fitted(tiny_corpus, ssl_model, tmp_path_factory) -> tuple[VecTok, list[dict]]:
    folder = tmp_path_factory.mktemp("ssl")
    ssl_model.save_pretrained(folder)
    torch.manual_seed(0)
    model = tiny_vectok({"type": "ssl", "path": str(folder), "layer": 1})
    batches = speech_batches(tiny_corpus)
    model.fit_units(batches, max_frames=2000)
    return model.eval(), batches


def test_nearest_centroid_is_the_closest_centroid_by_hand():
    g = torch.Generator().manual_seed(0)
    vectors, centroids = torch.randn(3, 7, 5, generator=g), torch.randn(6, 5, generator=g)
    by_hand = [[min(range(6), key=lambda k: float((v - centroids[k]).pow(2).sum())) for v in row] for row in vectors]
    assert nearest_centroid(vectors, centroids).tolist() == by_hand


def test_fit_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([m + 0.1 * torch.randn(200, 2, generator=g) for m in means])
    centroids = fit_kmeans(points, 3)
    distance = torch.cdist(means, centroids).min(-1).values
    assert distance.max() < 0.1
    with pytest.raises(ValueError, match="at least as many vectors"):
        fit_kmeans(points[:2], 3)


def test_bpe_round_trip_is_exact_and_shortens_runs_of_units():
    g = torch.Generator().manual_seed(0)

    def utterance():  # units held for 1-5 frames, as 50 Hz units of speech are
        units = torch.randint(0, 20, (40,), generator=g).tolist()
        holds = torch.randint(1, 6, (40,), generator=g).tolist()
        return [u for u, n in zip(units, holds) for _ in range(n)]

    bpe = UnitBPE.train([utterance() for _ in range(200)], num_units=20, vocab_size=120)
    assert bpe.vocab_size == 120
    held_out = [utterance() for _ in range(20)] + [[19, 0, 19], list(range(20))]
    ids = [bpe.encode(units) for units in held_out]
    assert [bpe.decode(i) for i in ids] == held_out
    assert sum(map(len, ids[:20])) < 0.75 * sum(map(len, held_out[:20]))
    assert bpe.encode([]) == [] and bpe.decode([]) == []
    assert UnitBPE(bpe.serialize()).encode(held_out[0]) == ids[0]
    with pytest.raises(ValueError, match="at least the number of units"):
        UnitBPE.train([[0, 1]], num_units=20, vocab_size=10)


def test_span_mask_covers_the_expected_fraction_of_valid_frames_only():
    valid = torch.arange(400)[None, :] < torch.randint(200, 401, (64, 1), generator=torch.Generator().manual_seed(1))
    mask = span_mask(valid, start_prob=0.08, span=10, generator=torch.Generator().manual_seed(0))
    assert not mask[~valid].any()
    assert abs(mask[valid].float().mean().item() - (1 - 0.92 ** 10)) < 0.04  # HuBERT's ~57 %


def test_mfcc_frames_are_standardised_over_valid_frames(tiny_corpus):
    batch = speech_batches(tiny_corpus, crop_seconds=None)[0]
    features = mfcc_frames(batch["audio"], batch["lengths"])
    assert features.shape == (4, 39, -(-batch["audio"].shape[-1] // 320))
    for item, length in zip(features, batch["lengths"]):
        frames = -(-int(length) // 320)
        torch.testing.assert_close(item[:, :frames].mean(-1), torch.zeros(39), atol=1e-4, rtol=0)
        torch.testing.assert_close(item[:, :frames].std(-1, unbiased=False), torch.ones(39), atol=1e-3, rtol=0)
        assert not item[:, frames:].any()


def test_ssl_masked_prediction_loss_falls(tiny_corpus):
    torch.manual_seed(0)
    model = SpeechSSL(dim=32, num_layers=2, num_heads=2, num_targets=8, dropout=0.0)
    batch = speech_batches(tiny_corpus)[0]
    mfcc = mfcc_frames(batch["audio"], batch["lengths"])
    model.target_centroids.copy_(fit_kmeans(mfcc.transpose(1, 2).reshape(-1, 39), 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(len(losses) % 3)  # the same three masks again and again
        loss, _ = model.masked_prediction_loss(batch["audio"], batch["lengths"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3])


def test_ssl_encoder_gives_a_layer_and_rebuilds_from_a_hub_folder(ssl_model, tmp_path):
    audio = torch.randn(2, 1, 8000)
    ssl_model.save_pretrained(tmp_path)
    encoder = build_semantic_encoder({"type": "ssl", "path": str(tmp_path), "layer": 1})
    expected = ssl_model(audio, num_layers=1).transpose(1, 2)
    torch.testing.assert_close(encoder.features(audio, num_frames=25), expected)
    assert encoder.model.num_layers == 1 and encoder.spec()["config"]["num_layers"] == 1  # layer 2 never runs
    rebuilt = build_semantic_encoder(encoder.spec())
    rebuilt.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(rebuilt.features(audio, num_frames=25), expected)
    with pytest.raises(ValueError, match="layer must be in 0..2"):
        build_semantic_encoder({"type": "ssl", "path": str(tmp_path), "layer": 3})


def test_units_are_the_nearest_centroids_of_the_standardised_vectors(fitted):
    model, batches = fitted
    audio, lengths = batches[0]["audio"], batches[0]["lengths"]
    tokens = model.encode(audio, lengths)
    assert tokens.codes.shape == (4, 1, 75) and tokens.frame_rate == 50 and tokens.sample_rate == 16000
    raw = model.vectors.features(audio, lengths, num_frames=75)
    standardised = (raw - model.vector_mean[:, None]) / model.vector_std[:, None]
    assert torch.equal(tokens.codes[:, 0], nearest_centroid(standardised.transpose(1, 2), model.centroids))
    assert len(set(tokens.codes.flatten().tolist())) > 4  # the centroids spread over the data


def test_bpe_tokens_decode_to_the_units_exactly(fitted):
    model, batches = fitted
    units = model.encode(batches[1]["audio"], batches[1]["lengths"])
    bpe = model.encode(batches[1]["audio"], batches[1]["lengths"], bpe=True)
    assert bpe.frame_rate is None and int(bpe.lengths.max()) == bpe.num_steps
    assert int(bpe.lengths.sum()) < int(units.lengths.sum())
    back = model.from_bpe(bpe)
    for i in range(units.batch_size):
        assert torch.equal(back[i].codes, units[i].codes)
    torch.testing.assert_close(model.decode(bpe), model.decode(units))
    with pytest.raises(DataError, match="expected ids in 0..47"):
        model.decode(bpe.__class__(codes=torch.full((1, 1, 3), 48), sample_rate=16000))


def test_decode_restores_the_length_and_the_prompt_sets_the_voice(fitted):
    model, batches = fitted
    audio, lengths = batches[0]["audio"], batches[0]["lengths"]
    lengths = lengths - torch.tensor([0, 100, 1000, 5000])
    default = model.decode(model.encode(audio, lengths))
    assert default.shape == audio.shape
    assert all(not item[0, n:].any() for item, n in zip(default, lengths.tolist()))
    prompted = model.decode(model.encode(audio, lengths), prompt=batches[1]["audio"][:1])
    assert prompted.shape == audio.shape and not torch.allclose(prompted, default)
    converted = model.convert(audio, batches[1]["audio"][:1], source_lengths=lengths)
    torch.testing.assert_close(converted, prompted)


def test_a_hub_round_trip_keeps_units_bpe_and_audio(fitted, tmp_path):
    model, batches = fitted
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    audio = batches[2]["audio"]
    assert torch.equal(loaded.encode(audio, bpe=True).codes, model.encode(audio, bpe=True).codes)
    tokens = model.encode(audio)
    torch.testing.assert_close(loaded.decode(tokens, prompt=audio[:1]), model.decode(tokens, prompt=audio[:1]))


def test_training_pass_gives_a_vocoder_window_and_an_inverse_loss(fitted):
    model, batches = fitted
    model.train()
    try:
        out = model(batches[0]["audio"], batches[0]["lengths"])
    finally:
        model.eval()
    assert out.audio.shape == out.target.shape == (4, 1, 25 * 320)
    assert out.semantic_loss.requires_grad and torch.isfinite(out.semantic_loss)
    assert out.codes.shape == (4, 1, 75)


def test_real_ssl_weights_from_a_transformers_folder(hubert_folder, tiny_corpus):
    model = tiny_vectok({"type": "hf", "path": str(hubert_folder), "layer": 1})
    batches = speech_batches(tiny_corpus)
    model.fit_units(batches, max_frames=2000)
    tokens = model.eval().encode(batches[0]["audio"], batches[0]["lengths"])
    assert tokens.codes.shape == (4, 1, 75)
    assert model.decode(tokens).shape == batches[0]["audio"].shape


def test_an_unfitted_model_says_how_to_fit_it(ssl_model):
    model = tiny_vectok({"type": "ssl", "config": ssl_model.hub_config, "layer": 1})
    with pytest.raises(UsageError, match="recipes/vectok/vectok_speech.yaml"):
        model.encode(torch.randn(1, 1, 3200))


def test_utterance_norm_units_ignore_each_items_channel_offsets_and_its_padding(tiny_corpus, ssl_model, tmp_path):
    ssl_model.save_pretrained(tmp_path)
    model = VecTok(vectors={"type": "ssl", "path": str(tmp_path), "layer": 1}, num_units=16, bpe_vocab_size=48,
                   prompt_seconds=0.5, vocoder_channels=16, vocoder_latent_dim=8, inverse_dim=32, inverse_layers=1,
                   inverse_heads=2, utterance_norm=True)
    batches = speech_batches(tiny_corpus)
    model.fit_units(batches, max_frames=2000)
    vectors, valid = model.eval().speech_vectors(batches[0]["audio"], batches[0]["lengths"])
    g = torch.Generator().manual_seed(0)
    channels = (4, vectors.shape[1], 1)
    shifted = vectors * (torch.rand(channels, generator=g) + 0.5) + torch.randn(channels, generator=g)
    assert torch.equal(model.units(shifted, valid)[valid], model.units(vectors, valid)[valid])
    features = model.unit_features(vectors, valid)
    by_hand = [(v[:, m] - v[:, m].mean(1, keepdim=True)) / (v[:, m].std(1, unbiased=False, keepdim=True) + 1e-5)
               for v, m in zip(vectors, valid)]
    for item, expected, m in zip(features, by_hand, valid):
        torch.testing.assert_close(item[:, m], expected)
    alone = model.encode(batches[0]["audio"][3:4, :, :int(batches[0]["lengths"][3])])
    assert torch.equal(alone.codes[0, 0], model.encode(batches[0]["audio"], batches[0]["lengths"])[3].codes[0, 0])


def test_vectors_at_another_frame_rate_than_the_vocoder_are_refused():
    ssl = SpeechSSL(sample_rate=8000, dim=16, num_layers=1, num_heads=2, num_targets=4)
    with pytest.raises(ValueError, match="160 samples per frame, the vocoder upsamples by 320"):
        tiny_vectok({"type": "ssl", "config": ssl.hub_config, "layer": 1})
