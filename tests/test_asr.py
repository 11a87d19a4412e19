"""The CTC phoneme recognizer: frame alignment with the codecs, decoding, learning, CLI, Hub folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from mmtok.asr import BLANK, PhonemeRecognizer, evaluate_recognizer, phoneme_inventory
from mmtok.cli import main
from mmtok.data.audio import AudioDataModule, collate_audio
from mmtok.export import export_checkpoint
from mmtok.hub import load_pretrained
from mmtok.metrics import error_rate

PHONEMES = ["a", "b", "k", "ð", "ə"]


def tiny(phonemes=PHONEMES, **overrides) -> PhonemeRecognizer:
    return PhonemeRecognizer(phonemes=phonemes, **{**dict(dim=32, num_layers=1, num_heads=2, dropout=0.0), **overrides})


@pytest.mark.parametrize("num_samples", [320, 321, 4000, 15999, 16000, 23456])
def test_features_run_at_the_codec_frame_rate(num_samples):
    model = tiny().eval()
    features, frames = model.features(torch.randn(1, 1, num_samples))
    assert model.frame_rate == 50
    assert features.shape == (1, 32, math.ceil(num_samples / 320)) and int(frames[0]) == features.shape[-1]


def test_padding_does_not_leak_into_valid_frames():
    torch.manual_seed(0)
    model = tiny().eval()
    short, long = torch.randn(1, 1, 5000), torch.randn(1, 1, 9000)
    batch = torch.cat([F.pad(short, (0, 4000)), long])
    features, frames = model.features(batch, torch.tensor([5000, 9000]))
    alone, _ = model.features(short)
    assert frames.tolist() == [16, 29]
    torch.testing.assert_close(features[:1, :, :16], alone, atol=1e-4, rtol=1e-4)


def test_greedy_ctc_decoding_merges_repeats_and_drops_blanks():
    model = tiny()
    path = [BLANK, 1, 1, BLANK, 2, 2, 1, BLANK, BLANK, 1]  # a a _ b b a _ _ a  ->  a b a a
    log_probs = F.one_hot(torch.tensor(path), len(PHONEMES) + 1).float().log_softmax(-1)[None]
    assert model.greedy_decode(log_probs, torch.tensor([10])) == ["a b a a"]
    assert model.greedy_decode(log_probs, torch.tensor([6])) == ["a b"], "frames past the length are ignored"


def test_phoneme_ids_and_unknown_symbols():
    model = tiny()
    assert model.encode_phonemes("ð ə k a").tolist() == [4, 5, 3, 1]
    with pytest.raises(ValueError, match=r"\['x', 'z'\] are not in this recognizer's inventory"):
        model.encode_phonemes("a x z")
    with pytest.raises(ValueError, match="distinct"):
        tiny(phonemes=["a", "a"])


def test_inventory_from_a_corpus_is_saved_as_a_list(tiny_corpus, tmp_path):
    inventory = phoneme_inventory(tiny_corpus)
    manifest = [json.loads(line) for line in (tiny_corpus / "manifest.jsonl").read_text().splitlines()]
    assert set(inventory) == {p for entry in manifest for p in entry["phonemes"].split()}
    model = tiny(phonemes=str(tiny_corpus))
    model.save_pretrained(tmp_path / "asr")
    assert json.loads((tmp_path / "asr" / "config.json").read_text())["phonemes"] == inventory
    reloaded = load_pretrained(tmp_path / "asr")
    audio = torch.randn(1, 1, 8000)
    assert torch.equal(model.eval()(audio)[0], reloaded(audio)[0])
    with pytest.raises(FileNotFoundError, match="mmtok data speech"):
        phoneme_inventory(tmp_path / "nothing")


def test_a_tiny_recognizer_learns_to_transcribe_its_training_utterances(tiny_corpus):
    """CTC training end to end: a few utterances memorised to a low phoneme error rate."""
    torch.manual_seed(0)
    module = AudioDataModule(path=str(tiny_corpus), crop_seconds=None)
    module.setup("fit")
    items = [module.datasets["train"][i] for i in range(3)]
    batch = collate_audio(items)
    model = tiny(phonemes=str(tiny_corpus), dim=64, num_layers=2, num_heads=4, freq_mask=0, time_mask=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    targets = [model.encode_phonemes(p) for p in batch["phonemes"]]
    for _ in range(150):
        log_probs, frames = model(batch["audio"], batch["lengths"])
        loss = F.ctc_loss(log_probs.transpose(0, 1), torch.cat(targets), frames,
                          torch.tensor([len(t) for t in targets]), blank=BLANK)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    hypotheses = model.transcribe(batch["audio"], batch["lengths"])
    per = error_rate([p.split() for p in batch["phonemes"]], [h.split() for h in hypotheses])
    assert per < 0.2, f"PER on memorised utterances {per:.3f}; loss {loss.item():.3f}"


@pytest.mark.slow
def test_recipe_fit_export_evaluate_and_transcribe(tiny_corpus, tmp_path, capsys):
    recognizer = "--model.init_args.recognizer.init_args."
    main(["fit", "-c", str(REPO / "recipes/asr/phonemes_speech.yaml"),
          "--data.init_args.path", str(tiny_corpus), "--data.init_args.num_workers", "0",
          "--data.init_args.batch_size", "4", "--data.init_args.build_embedded", "false",
          recognizer + "phonemes", str(tiny_corpus), recognizer + "dim", "32", recognizer + "num_layers", "1",
          recognizer + "num_heads", "2", "--model.init_args.warmup_steps", "2",
          "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
          "--trainer.logger", "false"])
    folder = export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hub", data=str(tiny_corpus))
    card = (folder / "README.md").read_text()
    assert "| per | utterances |" in card
    scored = evaluate_recognizer(load_pretrained(folder), tiny_corpus, split="test")
    assert 0 <= scored["per"] and scored["utterances"] >= 1
    main(["transcribe", str(folder), str(tiny_corpus / "wavs"), "--out", str(tmp_path / "transcripts.jsonl")])
    lines = (tmp_path / "transcripts.jsonl").read_text().splitlines()
    assert len(lines) == len(list((tiny_corpus / "wavs").glob("*.wav")))
    assert "phonemes" in json.loads(lines[0])


def test_local_attention_bounds_the_features_context_and_makes_them_shift_equivariant():
    torch.manual_seed(0)
    model = tiny(num_layers=2).eval()
    window = 3
    context = model.context_frames(window)
    assert context == 2 + 2 * window and model.context_frames(None) is None
    audio = torch.randn(1, 1, 160 * 320)
    features, _ = model.features(audio, attention_window=window)
    t = 60
    far = audio.clone()
    far[..., (t + context + 1) * 320:] = torch.randn(far[..., (t + context + 1) * 320:].shape)
    far[..., : (t - context - 1) * 320] = 0
    changed, _ = model.features(far, attention_window=window)
    torch.testing.assert_close(changed[..., t], features[..., t], atol=1e-5, rtol=1e-5)
    near = audio.clone()
    near[..., (t + 2) * 320: (t + 3) * 320] += 0.5
    assert not torch.allclose(model.features(near, attention_window=window)[0][..., t], features[..., t], atol=1e-4)
    # Cut on a frame boundary: frames away from the cut are the same function of the audio.
    shifted, _ = model.features(audio[..., 40 * 320:], attention_window=window)
    torch.testing.assert_close(shifted[..., context + 1: 100], features[..., 40 + context + 1: 140], atol=1e-5,
                               rtol=1e-5)
    # Full attention has no such bound.
    full, _ = model.features(audio)
    assert not torch.allclose(model.features(far)[0][..., t], full[..., t], atol=1e-4)
