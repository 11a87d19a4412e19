"""The released speaker encoder (checkpoints/speaker-encoder): a small Hub folder that tells new utterances'
speakers apart."""

import json

import pytest
import torch

from conftest import REPO
from mmtok.data.speech import build_speech_corpus
from mmtok.hub import load_pretrained
from mmtok.judges import SpeakerEncoder
from mmtok.judges.speakers import speaker_embeddings, verification_scores

FOLDER = REPO / "checkpoints" / "speaker-encoder"


def test_shipped_folder_is_small_and_documented():
    assert {p.name for p in FOLDER.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (FOLDER / "model.safetensors").stat().st_size <= 2 * 2**20
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.judges.speakers.SpeakerEncoder"
    assert len(config["speakers"]) == 12 and config["sample_rate"] == 16000
    card = (FOLDER / "README.md").read_text()
    assert "| accuracy | same_cosine | different_cosine | eer | utterances |" in card
    assert "## Judge quality (bench/speaker_encoder.py)" in card


@pytest.fixture(scope="module")
def new_sentences(tmp_path_factory):
    """24 sentences the encoder never heard (seed 7; the corpus it was trained on is seed 0), 2 per
    speaker, spoken by espeak-ng."""
    out = tmp_path_factory.mktemp("new_sentences")
    build_speech_corpus(out, num_utterances=24, seed=7, num_workers=2, progress=False)
    return out


def test_shipped_encoder_tells_speakers_apart_on_new_sentences(new_sentences):
    model = load_pretrained(FOLDER)
    assert isinstance(model, SpeakerEncoder) and not model.training
    embeddings, speakers = [], []
    for split in ("train", "valid", "test"):  # all 24 utterances, whichever split the small build put them in
        found, names = speaker_embeddings(model, new_sentences, split=split)
        embeddings.append(found)
        speakers += names
    embeddings = torch.cat(embeddings)
    assert len(speakers) == 24 and len(set(speakers)) == 12
    predicted = [model.speakers[i] for i in model.cosines(embeddings).argmax(-1).tolist()]
    accuracy = sum(p == s for p, s in zip(predicted, speakers)) / len(speakers)
    assert accuracy >= 0.9, list(zip(speakers, predicted))
    scores = verification_scores(embeddings, speakers)
    assert scores["same_pairs"] == 12
    assert scores["same_cosine"] > scores["different_cosine"] + 0.3 and scores["eer"] <= 0.1, scores
