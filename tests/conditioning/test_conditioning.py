"""Conditions and the conditioner: packing, null conditions, dropout, and a frozen text encoder."""

from __future__ import annotations

import pytest
import torch

from mmtok.conditioning import (AudioPromptCondition, ClassCondition, Conditioner, PhonemeCondition, Prefix,
                                TextEncoderCondition, build_condition)


def test_left_packing_moves_valid_positions_to_the_end_in_order_and_drops_unused_columns():
    x = torch.arange(8.0).reshape(2, 4, 1)
    valid = torch.tensor([[True, False, True, False], [False, False, True, False]])
    packed = Prefix(x, valid, torch.arange(8.0).reshape(2, 4)).left_packed()
    assert packed.valid.tolist() == [[True, True], [False, True]]
    assert packed.embeddings[0, :, 0].tolist() == [0.0, 2.0] and packed.embeddings[1, 1, 0] == 6.0
    assert packed.positions.tolist() == [[0.0, 2.0], [7.0, 6.0]], "positions are packed alike"
    padded = packed.padded_left(4)
    assert padded.valid.tolist() == [[False, False, True, True], [False, False, False, True]]
    assert padded.embeddings.shape == (2, 4, 1) and padded.positions[:, :2].eq(0).all()
    with pytest.raises(ValueError, match="cannot pad a prefix of 2 positions to 1"):
        packed.padded_left(1)
    with pytest.raises(ValueError, match="valid and positions of shape"):
        Prefix(x, valid[:, :3], torch.zeros(2, 4))


def conditioner(dim=8, **dropouts):
    torch.manual_seed(0)
    return Conditioner([
        PhonemeCondition(dim=dim, phonemes=["a", "b", "k"], dropout=dropouts.get("phonemes", 0.0)),
        ClassCondition(dim=dim, key="speaker", classes=["x", "y"], dropout=dropouts.get("speaker", 0.0)),
        AudioPromptCondition(dim=dim, codebook_sizes=[4, 4], dropout=dropouts.get("prompt", 0.0)),
    ]).eval()


def batch():
    return {"phonemes": ["a b", "k"], "speaker": ["y", "x"],
            "prompt": {"codes": torch.tensor([[[1, 2, 3], [0, 0, 1]], [[3, 0, 0], [2, 0, 0]]]),
                       "lengths": torch.tensor([3, 1])}}


def test_the_prefix_is_each_items_embeddings_in_condition_order_left_padded():
    model = conditioner()
    packed = model(batch(), batch_size=2, device=torch.device("cpu"))
    prefix, valid, positions = packed.embeddings, packed.valid, packed.positions
    assert positions[0, -6:].tolist() == [0.0, 1.0, -1.0, -3.0, -2.0, -1.0], "phonemes from 0, the rest before 0"
    assert valid.sum(1).tolist() == [2 + 1 + 3, 1 + 1 + 1]
    phonemes, speakers, prompt = model.conditions
    expected_second = torch.stack([phonemes.embedding.weight[3], speakers.embedding.weight[0],
                                   prompt.embeddings[0].weight[3] + prompt.embeddings[1].weight[2]])
    torch.testing.assert_close(prefix[1, -3:], expected_second)
    assert not valid[1, :-3].any()


def test_the_null_condition_is_one_learned_vector_per_condition_and_dropout_one_gives_it():
    model = conditioner()
    empty = model({}, batch_size=2, device=torch.device("cpu"), null=True)
    null, null_valid = empty.embeddings, empty.valid
    assert null.shape == (2, 3, 8) and null_valid.all()
    torch.testing.assert_close(null[0], torch.stack([c.null for c in model.conditions]))
    dropped = conditioner(phonemes=1.0, speaker=1.0, prompt=1.0).train()
    dropped_prefix = dropped(batch(), batch_size=2, device=torch.device("cpu"))
    torch.testing.assert_close(dropped_prefix.embeddings[dropped_prefix.valid].reshape(2, 3, 8), null)


def test_phonemes_placed_on_frames_share_each_utterances_frames_equally_and_leave_the_prefix():
    torch.manual_seed(0)
    phonemes = PhonemeCondition(dim=4, phonemes=["a", "b", "k"], placement="frames")
    model = Conditioner([phonemes, ClassCondition(dim=4, key="speaker", classes=["x", "y"])]).eval()
    values = {"phonemes": ["a b k", "k a"], "speaker": ["y", "x"]}
    prefix = model(values, batch_size=2, device=torch.device("cpu"))
    assert prefix.length == 1 and prefix.valid.all(), "only the speaker is a prefix"
    frames = model.frames(values, lengths=torch.tensor([6, 5]), num_frames=6, device=torch.device("cpu"))
    table = phonemes.embedding.weight
    # 3 phonemes over 6 frames: two frames each; 2 over 5: frames 0-2 speak "k" (⌊t·2/5⌋ = 0 for t < 3)
    torch.testing.assert_close(frames[0], table[[1, 1, 2, 2, 3, 3]])
    torch.testing.assert_close(frames[1, :5], table[[3, 3, 3, 1, 1]])
    assert not frames[1, 5].any(), "nothing past an item's length"
    null = model.frames({}, lengths=torch.tensor([6, 5]), num_frames=6, device=torch.device("cpu"), null=True)
    torch.testing.assert_close(null[1, :5], phonemes.null.expand(5, -1))
    assert phonemes.spec()["placement"] == "frames"
    with pytest.raises(ValueError, match="placement must be 'prefix' or 'frames'"):
        PhonemeCondition(dim=4, phonemes=["a"], placement="middle")


def test_bad_condition_values_are_named():
    model = conditioner()
    with pytest.raises(ValueError, match=r"phonemes \['z'\] are not in the inventory"):
        model({**batch(), "phonemes": ["a z", "b"]}, batch_size=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"unknown classes \['w'\]"):
        model({**batch(), "speaker": ["w", "x"]}, batch_size=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="needs 'type'"):
        build_condition({"type": "colour"}, dim=4)
    with pytest.raises(ValueError, match="distinct batch fields"):
        Conditioner([ClassCondition(dim=4, classes=2), ClassCondition(dim=4, classes=3)])


def test_class_names_are_read_from_a_corpus_manifest(tiny_corpus):
    condition = build_condition({"type": "class", "key": "speaker", "classes": str(tiny_corpus)}, dim=4)
    assert len(condition.classes) > 1 and condition.spec()["classes"] == condition.classes


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A 2-layer randomly initialised BERT with a word-piece tokenizer, saved with transformers."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    return folder


def test_a_text_encoder_from_a_local_folder_conditions_through_a_trained_projection_only(bert_folder):
    from transformers import AutoModel, AutoTokenizer

    tokens = TextEncoderCondition(dim=8, path=str(bert_folder), pooling="tokens")
    mean = TextEncoderCondition(dim=8, path=str(bert_folder), pooling="mean")
    texts = ["the cat sat on the mat", "a dog"]
    embedded, valid = tokens.embed(texts, torch.device("cpu"))
    assert valid.sum(1).tolist() == [6 + 2, 2 + 2], "one position per word piece, plus [CLS] and [SEP]"
    model, tokenizer = AutoModel.from_pretrained(bert_folder).eval(), AutoTokenizer.from_pretrained(bert_folder)
    inputs = tokenizer(["a dog"], return_tensors="pt")
    with torch.no_grad():
        states = model(**inputs).last_hidden_state
    pooled, pooled_valid = mean.embed(["a dog"], torch.device("cpu"))
    torch.testing.assert_close(pooled[0, 0], mean.projection(states.mean(1))[0])
    assert pooled_valid.tolist() == [[True]]
    assert all(name.startswith(("null", "projection")) for name in tokens.state_dict()), "the encoder is not saved"
    assert not any(p.requires_grad for p in tokens._encoder[0].parameters())
    assert build_condition(tokens.spec(), dim=8).spec() == tokens.spec()
    with pytest.raises(FileNotFoundError, match="not a transformers model folder"):
        TextEncoderCondition(dim=8, path=str(bert_folder / "missing"))
