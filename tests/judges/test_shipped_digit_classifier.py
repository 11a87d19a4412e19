"""The released digit classifier (checkpoints/digit-classifier): a small Hub folder that reads held-out digits."""

import json

from conftest import REPO
from mmtok.data.images import build_digits_corpus
from mmtok.hub import load_pretrained
from mmtok.judges import DigitClassifier
from mmtok.judges.digits import evaluate_classifier

FOLDER = REPO / "checkpoints" / "digit-classifier"


def test_shipped_folder_is_small_and_documented():
    assert {p.name for p in FOLDER.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (FOLDER / "model.safetensors").stat().st_size <= 2 * 2**20
    assert json.loads((FOLDER / "config.json").read_text())["mmtok_class"] == "mmtok.judges.digits.DigitClassifier"
    card = (FOLDER / "README.md").read_text()
    assert "| accuracy | images |" in card and "## Judge quality (bench/digit_judge.py)" in card


def test_shipped_classifier_reads_the_held_out_digits(tmp_path):
    """The whole corpus is built (the same split as training, ~2 s) and only its test digits are read:
    a smaller build would split differently and test on digits the classifier was trained on."""
    build_digits_corpus(tmp_path, image_size=32, max_per_class=None, progress=False)
    model = load_pretrained(FOLDER)
    assert isinstance(model, DigitClassifier) and not model.training
    scored = evaluate_classifier(model, tmp_path, split="test")
    assert scored["images"] == 500
    assert scored["accuracy"] >= 0.95, scored
    assert min(scored["per_class"]) >= 0.9, scored["per_class"]
