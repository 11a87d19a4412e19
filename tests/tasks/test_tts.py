"""TTS helpers: per-item voice prompts and the intelligibility evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
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
    encoder = load_pretrained(REPO / "checkpoints" / "speaker-encoder")
    result = evaluate_tts(tiny_tts, codec, judge, tiny_corpus, mode=mode, split="valid", batch_size=2,
                          speaker_encoder=encoder)
    assert result["utterances"] == count and result["per"] >= 0.9, "a random model speaks nothing recognisable"
    assert len(result["references"]) == len(result["hypotheses"]) == count
    assert 0 <= result["ended"] <= 1 and result["duration_ratio"] > 0
    assert result["duration_error"] >= abs(result["duration_ratio"] - 1) - 1e-9, "a mean of |r - 1| bounds |mean r - 1|"
    assert result["real_similarity"] > 0.8, "two real utterances of a speaker, by the shipped speaker encoder"
    assert result["speaker_similarity"] < result["real_similarity"] - 0.2, "a random model's noise is nobody's voice"
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate_tts(tiny_tts, codec, judge, tiny_corpus, mode="both")


SYMBOLS = ["k", "æ", "t", "ð", "ə", "s"]


def aligned_mdm(folder, tokenizer, *, frames_per_phoneme: float = 4.0):
    """A tiny masked diffusion TTS whose duration predictor says ``frames_per_phoneme`` for every
    phoneme (its output layer set by hand), saved as a Hub folder."""
    import math

    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=[32], dim=16, num_layers=1, num_heads=2)
    generator = MaskedDiffusionGenerator(tokenizer=str(tokenizer), backbone=backbone, task=TTS_TASK, conditions=[
        {"type": "phonemes", "phonemes": SYMBOLS, "placement": "frames", "durations": "durations",
         "duration_predictor": {"speakers": ["us-m1"], "dim": 8}},
        {"type": "class", "key": "speaker", "classes": ["us-m1"]}])
    predictor = generator.conditioner.conditions[0].duration_predictor
    with torch.no_grad():
        predictor.out.weight.zero_()
        predictor.out.bias.fill_(math.log1p(frames_per_phoneme))
    generator.record_token_facts(load_pretrained(tokenizer))
    generator.save_pretrained(folder)
    return generator.eval()


def test_pace_scales_the_predicted_durations_and_so_the_generated_length(tiny_codec_folder, tmp_path, capsys):
    from mmtok.cli import main
    from mmtok.data.speech import phonemize

    generator = aligned_mdm(tmp_path / "gen", tiny_codec_folder)
    task = build_task(generator.task)
    assert task.durations(generator, ["k æ t", "ð ə"], speakers=["us-m1", "us-m1"]) == [[4, 4, 4], [4, 4]]
    assert task.durations(generator, ["k æ t"], pace=1.5) == [[6, 6, 6]], "no speaker: the null speaker's"
    assert task.durations(generator, ["k æ t"], pace=1.25) == [[5, 5, 5]], "ends 5, 10, 15"
    count = len(phonemize("The cat.", voice="en-us").split())
    frames = {}
    for pace in ("1", "1.5", "0.5"):
        out = tmp_path / f"pace{pace}"
        main(["generate", str(tmp_path / "gen"), "--text", "The cat.", "--speaker", "us-m1", "--pace", pace,
              "--max-seconds", "2", "--sampler", "maskgit", "--steps", "2", "--out", str(out)])
        line = json.loads((out / "generated.jsonl").read_text())
        frames[pace] = line["frames"]
        assert line["pace"] == float(pace) and line["seconds"] == pytest.approx(line["frames"] / 50, abs=0.02)
    assert frames == {"1": 4 * count, "1.5": 6 * count, "0.5": 2 * count}, "pace > 1: longer speech"


def test_pace_scales_the_measured_length_of_a_generator_without_a_predictor(tiny_codec_folder):
    task = TextToSpeech(frames_per_phoneme=4.5, max_seconds=10.0)
    mdm = MaskedDiffusionGenerator(tokenizer=str(tiny_codec_folder), backbone={
        "class_path": "mmtok.codebook_transformer.CodebookTransformer",
        "init_args": {"codebook_sizes": [32], "dim": 16, "num_layers": 1, "num_heads": 2}})
    assert task.durations(mdm, ["a b c"]) is None
    assert task.lengths(mdm, ["a b c", "a"], frame_rate=50, pace=2.0).tolist() == [27, 9]
    assert task.lengths(mdm, ["a b"], frame_rate=50, durations=[[3, 4]]).tolist() == [7]


@pytest.mark.parametrize("pace, message", [
    ("0", "--pace 0.0: must be > 0 (1: the predicted pace; 1.2: 20 % longer speech)"),
    ("-1", "--pace -1.0: must be > 0"),
    ("1.2", "--pace 1.2: this generator ends its utterances itself (an end token) and is given no length"),
])
def test_a_pace_that_cannot_be_used_is_refused_in_one_line(pace, message, tiny_codec_folder, tmp_path, capsys):
    from conftest import cli_error

    backbone = CodebookTransformer(codebook_sizes=[32], dim=16, num_layers=1, num_heads=2, end_token=True)
    ARGenerator(tokenizer=str(tiny_codec_folder), backbone=backbone, task=TTS_TASK,
                conditions=[{"type": "phonemes", "phonemes": SYMBOLS}]).save_pretrained(tmp_path / "gen")
    code, line = cli_error(["generate", str(tmp_path / "gen"), "--text", "the cat", "--pace", pace,
                            "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and line.startswith(f"mmtok generate: {message}"), line


def test_a_tokenizer_that_takes_a_voice_prompt_speaks_in_it(tiny_corpus, tmp_path):
    """Vec-Tok's tokens carry the words and its decoder the voice: the TTS task hands the prompt to the
    tokenizer (the generator, which has no prompt condition, draws the same tokens either way)."""
    from mmtok.codecs.vectok import SpeechSSL, VecTok
    from mmtok.data.audio import load_audio
    from mmtok.tasks.tts import synthesize

    torch.manual_seed(0)
    SpeechSSL(dim=16, num_layers=1, num_heads=2, num_targets=4).save_pretrained(tmp_path / "ssl")
    vectok = VecTok(vectors={"type": "ssl", "path": str(tmp_path / "ssl"), "layer": 1}, num_units=32,
                    bpe_vocab_size=40, prompt_seconds=0.5, vocoder_channels=16, vocoder_latent_dim=8, inverse_dim=16,
                    inverse_layers=1, inverse_heads=2)
    wavs = sorted((tiny_corpus / "wavs").glob("*.wav"))
    audio = [load_audio(w, sample_rate=16000) for w in wavs[:6]]
    vectok.fit_units([{"audio": a[None], "lengths": torch.tensor([a.shape[-1]])} for a in audio], max_frames=500)
    vectok.eval().save_pretrained(tmp_path / "vectok")
    generator = aligned_mdm(tmp_path / "gen", tmp_path / "vectok")
    first, second = audio[0], audio[3]
    outputs = [synthesize(generator, vectok, ["k æ t"], prompts=[prompt], prompt_seconds=0.5,
                          rng=torch.Generator().manual_seed(0), sampler="maskgit", steps=2)
               for prompt in (first, second)]
    (speech_a, tokens_a), (speech_b, tokens_b) = outputs
    assert torch.equal(tokens_a.codes, tokens_b.codes)
    torch.testing.assert_close(speech_a[0], vectok.decode(tokens_a[0], prompt=first[None, :, :8000])[0])
    assert not torch.allclose(speech_a[0], speech_b[0])
