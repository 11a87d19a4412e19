"""The released masked diffusion TTS: a small Hub folder that names its tokenizer, reads its
phonemes (its loss rises without them), and speaks with the first-hitting sampler."""

from __future__ import annotations

import torch

from conftest import REPO, released_generator_config
from mmtok.data.audio import load_audio
from mmtok.data.manifest import read_manifest
from mmtok.diffusion.model import MaskedDiffusionGenerator
from mmtok.hub import load_pretrained
from mmtok.tasks import build_task
from mmtok.media import pad_audio
from mmtok.tasks.tts import synthesize

MDM = REPO / "checkpoints" / "tts-mdm-xcodec"


def test_the_mdm_release_is_small_and_names_its_tokenizer():
    config = released_generator_config(MDM)
    assert config["time_conditioning"] is False
    assert config["conditions"][0]["placement"] == "frames"
    assert config["task"]["class_path"] == "mmtok.tasks.tts.TextToSpeech"
    assert 3 < config["task"]["init_args"]["frames_per_phoneme"] < 7


def test_the_mdm_release_reads_its_phonemes_and_speaks_with_the_first_hitting_sampler(tiny_corpus):
    model = load_pretrained(MDM)
    assert isinstance(model, MaskedDiffusionGenerator)
    tokenizer = model.load_tokenizer(near=MDM)
    entries = read_manifest(tiny_corpus / "manifest.jsonl", key="audio")[:4]
    audio, lengths = pad_audio([load_audio(e["audio"], sample_rate=tokenizer.sample_rate) for e in entries])
    with torch.no_grad():
        tokens = tokenizer.encode(audio, lengths)
    batch = {"codes": tokens.codes, "lengths": tokens.lengths, "phonemes": [e["phonemes"] for e in entries],
             "speaker": [e["speaker"] for e in entries]}
    every_token_masked = torch.ones(len(entries))
    with torch.no_grad():
        reading = float(model.loss(batch, t=every_token_masked)[0])
        blind = float(model.loss({**batch, "phonemes": None}, t=every_token_masked)[0])
    assert blind - reading > 0.1, f"the phonemes gain only {blind - reading:.3f} nats per token"

    phonemes = [e["phonemes"] for e in entries[:2]]
    audio, generated = synthesize(model, tokenizer, phonemes, speakers=[e["speaker"] for e in entries[:2]],
                                  sampler="fhs", rng=torch.Generator().manual_seed(0))
    expected = build_task(model.task).lengths(model, phonemes, frame_rate=tokenizer.frame_rate)
    assert torch.equal(generated.lengths, expected)
    assert (generated.codes < model.mask_id).all(), "no mask token left"
    assert all(wave.abs().max() > 0.05 for wave in audio), "not silence"
