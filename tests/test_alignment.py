"""Forced alignment: known durations back from synthetic CTC posteriors, reconciliation with the
codec's frames, the bad alignments named, and an aligned token cache whose durations sum to each
utterance's frames."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mmtok.alignment import (Alignment, PhonemeAligner, align_one, ctc_frames_needed, durations_from_path,
                             phoneme_starts, reconcile)
from mmtok.data.tokens import TokenCorpus, TokenDataset, collate_tokens, crop_durations, tokenize_corpus
from mmtok.errors import DataError

RECOGNIZER = Path(__file__).resolve().parents[1] / "checkpoints" / "phoneme-recognizer"


def peaky_posteriors(ids: list[int], durations: list[int], *, vocabulary: int = 6, lead: int = 0) -> torch.Tensor:
    """CTC log-probabilities [T, V + 1] as a CTC model emits them: phoneme k peaks (p = 0.9) on the
    first frame of its span (phoneme 0 after ``lead`` blanks), blank (0) everywhere else."""
    frames = []
    for k, (symbol, duration) in enumerate(zip(ids, durations)):
        peak = lead if k == 0 else 0
        frames += [symbol if t == peak else 0 for t in range(duration)]
    probs = torch.full((len(frames), vocabulary + 1), 0.1 / vocabulary)
    probs[torch.arange(len(frames)), torch.tensor(frames)] = 0.9
    return probs.log()


@pytest.mark.parametrize("ids, durations, lead", [
    ([3, 1, 4, 2], [4, 3, 5, 2], 0),
    ([3, 1, 1, 2], [5, 2, 3, 6], 2),  # a repeated phoneme (a blank between), leading blanks to the first
    ([5], [7], 3),
])
def test_forced_alignment_recovers_known_durations_from_synthetic_posteriors(ids, durations, lead):
    log_probs = peaky_posteriors(ids, durations, lead=lead)
    alignment = align_one(log_probs, torch.tensor(ids), frames=sum(durations))
    assert alignment == Alignment(durations, None, 0)
    shifted = align_one(log_probs, torch.tensor(ids), frames=sum(durations) + 2)
    assert shifted.durations == durations[:-1] + [durations[-1] + 2] and shifted.shift == 2, "the codec's extra frames"


def test_blank_frames_go_to_the_phoneme_before_them_and_the_counts_sum_to_the_frames():
    path = torch.tensor([0, 0, 3, 3, 0, 1, 0, 0, 1, 2, 2, 0])  # leading blanks, "1 _ _ 1" is two phonemes
    assert phoneme_starts(path).tolist() == [2, 5, 8, 9]
    assert durations_from_path(path, 4) == [5, 3, 1, 3] and sum(durations_from_path(path, 4)) == len(path)
    with pytest.raises(ValueError, match="holds 4 symbols, expected 3"):
        durations_from_path(path, 3)


def test_reconciliation_moves_a_frame_or_two_onto_the_last_phoneme_and_refuses_more():
    assert reconcile([3, 2, 4], 10) == [3, 2, 5] and reconcile([3, 2, 4], 8) == [3, 2, 3]
    assert reconcile([3, 2, 1], 4) == [2, 1, 1], "the last phoneme keeps one frame, its left neighbours give"
    assert reconcile([3, 2, 4], 12) is None and reconcile([3, 2, 4], 6) is None
    assert reconcile([1, 1, 1], 2) is None, "fewer frames than phonemes"
    assert ctc_frames_needed([1, 1, 2, 2, 2]) == 8 and ctc_frames_needed([1, 2, 3]) == 3


def test_bad_alignments_say_why():
    log_probs = peaky_posteriors([1, 2], [2, 2])
    short = align_one(log_probs, torch.tensor([1, 1, 1]), frames=4)
    assert not short.ok and short.reason == "3 phonemes need 5 frames, the recognizer has 4"
    far = align_one(log_probs, torch.tensor([1, 2]), frames=9)
    assert not far.ok and "the codec has 9 frames, the recognizer 4" in far.reason


def test_the_aligner_names_a_phoneme_outside_its_inventory(recognizer_folder):
    aligner = PhonemeAligner.from_pretrained(str(recognizer_folder))  # inventory a, b, k
    audio = [torch.randn(1, 3200) * 0.1, torch.randn(1, 4800) * 0.1]
    first, second = aligner.align(audio, ["a b k", "a ʃ q"], [10, 15])
    assert first.ok and sum(first.durations) == 10 and len(first.durations) == 3
    assert not second.ok and second.reason == "phonemes q ʃ are not in the recognizer's inventory"
    with pytest.raises(ValueError, match="2 waveforms, 1 phoneme strings"):
        aligner.align(audio, ["a"], [10, 15])


@pytest.fixture(scope="module")
def aligned_tokens(tiny_corpus, tiny_codec_folder, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny corpus with one utterance given a phoneme the recognizer does not know, tokenized and
    aligned by the shipped recognizer: (the manifest, the cache)."""
    folder = tmp_path_factory.mktemp("aligned")
    lines = [json.loads(line) for line in (tiny_corpus / "manifest.jsonl").read_text().splitlines()]
    for entry in lines:
        entry["audio"] = str(tiny_corpus / entry["audio"])
    lines[1]["phonemes"] += " q"
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in lines))
    return manifest, tokenize_corpus(str(tiny_codec_folder), manifest, folder / "tokens", aligner=str(RECOGNIZER),
                                     progress=False)


def test_an_aligned_cache_holds_durations_summing_to_each_utterances_frames(aligned_tokens, capsys):
    manifest, tokens = aligned_tokens
    corpus = TokenCorpus(tokens)
    total = len(manifest.read_text().splitlines())
    assert len(corpus) == total - 1 and corpus.info["written"] == total - 1 and corpus.info["count"] == total
    for index, entry in enumerate(corpus.entries):
        assert sum(entry["durations"]) == corpus.codes(index).shape[1]
        assert len(entry["durations"]) == len(entry["phonemes"].split()) and min(entry["durations"]) >= 1
    report = corpus.info["alignment"]
    assert report["aligned"] == total - 1 and report["bad"] == [
        {"audio": json.loads(manifest.read_text().splitlines()[1])["audio"],
         "reason": "phonemes q are not in the recognizer's inventory"}]
    assert 3 < report["frames_per_phoneme"] < 8 and report["exact"] == total - 1, "the codec's 50 frames/s"
    fpp = sum(sum(e["durations"]) for e in corpus.entries) / sum(len(e["durations"]) for e in corpus.entries)
    assert report["frames_per_phoneme"] == pytest.approx(fpp)
    batch = collate_tokens([TokenDataset(corpus, [0, 1], train=False)[i] for i in range(2)])
    assert batch["durations"] == [corpus.entries[0]["durations"], corpus.entries[1]["durations"]]


def test_the_aligner_is_part_of_the_cache_key(aligned_tokens, tiny_codec_folder, capsys):
    manifest, tokens = aligned_tokens
    stamp = (tokens / "tokens.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    tokenize_corpus(str(tiny_codec_folder), manifest, tokens, aligner=str(RECOGNIZER), progress=False)
    assert (tokens / "tokens.safetensors").stat().st_mtime_ns == stamp, "the same aligner: reused"
    assert "leaves out 1 bad alignment(s)" in capsys.readouterr().err
    plain = tokenize_corpus(str(tiny_codec_folder), manifest, tokens.parent / "copy", progress=False)
    tokenize_corpus(str(tiny_codec_folder), manifest, plain, aligner=str(RECOGNIZER), progress=False)
    assert "durations" in TokenCorpus(plain).entries[0], "an aligner where there was none: rebuilt"


def test_durations_that_do_not_sum_to_the_frames_are_refused(aligned_tokens, tmp_path):
    import shutil

    _, tokens = aligned_tokens
    shutil.copytree(tokens, tmp_path / "tokens")
    entries = [json.loads(line) for line in (tmp_path / "tokens" / "manifest.jsonl").read_text().splitlines()]
    entries[0]["durations"][0] += 1
    (tmp_path / "tokens" / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    with pytest.raises(DataError, match=r"durations \[.*\] must be .* summing to its \d+ frames"):
        TokenCorpus(tmp_path / "tokens")


def test_a_crop_keeps_the_phonemes_spoken_in_its_frames():
    assert crop_durations("a b k", [2, 3, 4], 4) == ("a b", [2, 2])
    assert crop_durations("a b k", [2, 3, 4], 5) == ("a b", [2, 3])
    assert crop_durations("a b k", [2, 3, 4], 9) == ("a b k", [2, 3, 4])
    assert math.isclose(sum(crop_durations("a b k", [2, 3, 4], 6)[1]), 6)
