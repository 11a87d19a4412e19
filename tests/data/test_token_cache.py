"""The token cache: equal to encoding each item, reused when fresh, and the TTS items built from it."""

from __future__ import annotations

import pytest
import torch

from mmtok.data.audio import load_audio
from mmtok.data.manifest import read_manifest
from mmtok.data.tokens import TokenCorpus, TokenDataModule, collate_tokens, tokenize_corpus
from mmtok.hub import load_pretrained


def test_the_cache_holds_exactly_each_items_codes(tiny_tokens, tiny_corpus, tiny_codec_folder):
    corpus = TokenCorpus(tiny_tokens)
    entries = read_manifest(tiny_corpus / "manifest.jsonl", key="audio")
    codec = load_pretrained(tiny_codec_folder)
    assert len(corpus) == len(entries) and corpus.info["codebook_sizes"] == [32] * 4
    for index in (0, len(entries) - 1):
        audio = load_audio(entries[index]["audio"], sample_rate=16000)[None]
        assert torch.equal(corpus.codes(index), codec.encode(audio).codes[0])
        assert corpus.entries[index]["phonemes"] == entries[index]["phonemes"]


def test_a_fresh_cache_is_reused(tiny_tokens, tiny_corpus, tiny_codec_folder):
    stamp = (tiny_tokens / "tokens.safetensors").stat().st_mtime_ns
    tokenize_corpus(str(tiny_codec_folder), tiny_corpus, tiny_tokens, progress=False)
    assert (tiny_tokens / "tokens.safetensors").stat().st_mtime_ns == stamp


def test_items_get_a_prompt_from_another_utterance_of_their_speaker(tiny_tokens):
    data = TokenDataModule(tokens=str(tiny_tokens), prompt_seconds=0.2, batch_size=4)
    data.setup("fit")
    dataset, corpus = data.datasets["train"], data.corpus
    for position in range(len(dataset)):
        item, index = dataset[position], dataset.indices[position]
        speaker = corpus.entries[index]["speaker"]
        sources = [i for i in dataset.by_speaker[speaker] if i != index] or [index]
        assert item["prompt"].shape[1] <= 10, "0.2 s at 50 frames/s"
        assert any(_contains(corpus.codes(i), item["prompt"]) for i in sources)
    held_out = next(data.datasets[split] for split in ("valid", "test") if len(data.datasets[split]))
    assert torch.equal(held_out[0]["prompt"], held_out[0]["prompt"]), "evaluation prompts are fixed"
    batch = collate_tokens([dataset[0], dataset[1]])
    assert batch["codes"].shape[:2] == (2, 4)
    assert batch["lengths"].tolist() == [dataset[0]["codes"].shape[1], dataset[1]["codes"].shape[1]]
    assert batch["prompt"]["codes"].shape[0] == 2 and len(batch["phonemes"]) == 2


def _contains(codes: torch.Tensor, piece: torch.Tensor) -> bool:
    return any(torch.equal(codes[:, s:s + piece.shape[1]], piece) for s in range(codes.shape[1] - piece.shape[1] + 1))


def test_a_missing_cache_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="mmtok tokenize"):
        TokenDataModule(tokens=str(tmp_path / "none")).setup("fit")
    with pytest.raises(ValueError, match="both `tokenizer` and `data`"):
        TokenDataModule(tokens=str(tmp_path), tokenizer="x")


def test_a_cache_made_by_other_weights_under_the_same_name_is_rebuilt(tiny_corpus, tiny_codec_folder, tmp_path):
    import shutil

    from mmtok.codecs.rvq import RVQCodec
    from mmtok.data.tokens import TokenCorpus, tokenize_corpus

    folder = tmp_path / "codec"
    shutil.copytree(tiny_codec_folder, folder)
    tokenize_corpus(str(folder), tiny_corpus, tmp_path / "tokens", progress=False)
    first = TokenCorpus(tmp_path / "tokens").codes(0).clone()
    torch.manual_seed(5)
    RVQCodec(encoder_channels=4, decoder_channels=16, latent_dim=16, codebook_size=32, num_quantizers=4,
             kmeans_init=False).save_pretrained(folder)  # other weights, same folder
    tokenize_corpus(str(folder), tiny_corpus, tmp_path / "tokens", progress=False)
    assert not torch.equal(TokenCorpus(tmp_path / "tokens").codes(0), first)
