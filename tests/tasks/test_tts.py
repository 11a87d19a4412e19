"""TTS helpers: per-item voice prompts and the intelligibility evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from mmtok.ar.model import ARGenerator
from mmtok.codebook_transformer import CodebookTransformer
from mmtok.diffusion.model import MaskedDiffusionGenerator
from mmtok.hub import load_pretrained
from mmtok.tasks import build_task
from mmtok.tasks.tts import TextToSpeech, _other_utterance, encode_prompts, evaluate_tts

CONDITIONS = [{"type": "class", "key": "speaker", "classes": ["a", "b"]}]
TTS_TASK = {"class_path": "mmtok.tasks.tts.TextToSpeech", "init_args": {"max_seconds": 0.4}}


@pytest.fixture(scope="module")
def tiny_tts(tiny_codec_folder, tiny_corpus):
    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=[32, 32], dim=16, num_layers=1, num_heads=2, end_token=True)
    return ARGenerator(tokenizer=str(tiny_codec_folder), backbone=backbone, task=TTS_TASK, conditions=[
        {"type": "phonemes", "phonemes": str(tiny_corpus)},
        {"type": "class", "key": "speaker", "classes": str(tiny_corpus)},
        {"type": "audio_prompt", "codebook_sizes": [32, 32]}]).eval()


def test_the_length_of_speech_is_the_limit_for_a_generator_that_stops_and_the_phoneme_count_otherwise(
        tiny_codec_folder):
    task = TextToSpeech(frames_per_phoneme=4.5, max_seconds=1.0)
    backbone = {"class_path": "mmtok.codebook_transformer.CodebookTransformer",
                "init_args": {"codebook_sizes": [32], "dim": 16, "num_layers": 1, "num_heads": 2}}
    mdm = MaskedDiffusionGenerator(tokenizer=str(tiny_codec_folder), backbone=backbone)
    ar = ARGenerator(tokenizer=str(tiny_codec_folder), backbone={**backbone, "init_args": {
        **backbone["init_args"], "end_token": True}})
    phonemes = ["a b c", "a", " ".join(["a"] * 30)]
    assert task.lengths(mdm, phonemes, frame_rate=50).tolist() == [14, 4, 50], "4.5 per phoneme, at most 1 s"
    assert task.lengths(ar, phonemes, frame_rate=50).tolist() == [50, 50, 50]
    assert build_task(task.spec()).init_args == {"frames_per_phoneme": 4.5, "max_seconds": 1.0}
    with pytest.raises(ValueError, match="records no task"):
        build_task(None)


def test_prompts_are_each_waveforms_first_seconds_encoded(tiny_tts, tiny_codec_folder):
    codec = load_pretrained(tiny_codec_folder)
    long, short = torch.randn(1, 16000) * 0.1, torch.randn(1, 3200) * 0.1
    prompt = encode_prompts(tiny_tts, codec, [long, short], seconds=0.5)
    assert prompt["lengths"].tolist() == [25, 10], "0.5 s and 0.2 s at 50 frames/s"
    assert torch.equal(prompt["codes"][0], codec.encode(long[None, :, :8000]).codes[0, :2])


def test_the_prompt_comes_from_another_utterance_of_the_same_speaker():
    entries = [{"speaker": "a", "id": 0}, {"speaker": "b", "id": 1}, {"speaker": "a", "id": 2}]
    assert _other_utterance(entries, entries[0])["id"] == 2 and _other_utterance(entries, entries[2])["id"] == 0
    assert _other_utterance(entries, entries[1])["id"] == 1, "a speaker with one utterance prompts itself"


@pytest.mark.parametrize("mode", ["speaker", "prompt"])
def test_evaluate_tts_scores_every_held_out_sentence(mode, tiny_tts, tiny_codec_folder, tiny_corpus,
                                                     recognizer_folder):
    codec, judge = load_pretrained(tiny_codec_folder), load_pretrained(recognizer_folder)
    tests = [json.loads(line) for line in (tiny_corpus / "manifest.jsonl").read_text().splitlines()]
    count = sum(e["split"] == "valid" for e in tests)
    result = evaluate_tts(tiny_tts, codec, judge, tiny_corpus, mode=mode, split="valid", batch_size=2)
    assert result["utterances"] == count and result["per"] >= 0.9, "a random model speaks nothing recognisable"
    assert 0 <= result["ended"] <= 1 and result["duration_ratio"] > 0
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate_tts(tiny_tts, codec, judge, tiny_corpus, mode="both")
