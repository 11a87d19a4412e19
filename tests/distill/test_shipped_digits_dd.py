"""The released Distilled Decoding student of the AR digits generator (checkpoints/digits-dd): a small Hub
folder naming its teacher and the shipped tokenizer, drawing in one or two network passes digits the shipped
judge reads as the class asked for."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from mmtok.hub import load_pretrained, weights_digest
from mmtok.tasks import build_task
from mmtok.tasks.images import generate_images

FOLDER = REPO / "checkpoints" / "digits-dd"
JUDGE = REPO / "checkpoints" / "digit-classifier"
# Below the judge's accuracy on 1,000 samples (docs/benchmarks.md: 0.999 in one pass, 1.0 in two), with room for 50.
MINIMUM_ACCURACY = {1: 0.9, 2: 0.9}


def test_the_release_is_a_small_hub_folder_naming_its_teacher():
    assert {p.name for p in FOLDER.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    # The teacher's width-256 backbone in float16: 10.5 MB, over the image releases' 10 MiB aim, within 20 MB.
    assert (FOLDER / "model.safetensors").stat().st_size <= 20 * 2**20
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.distill.model.DistilledGenerator"
    assert (config["teacher"], config["tokenizer"], config["grid"]) == ("checkpoints/digits-ar",
                                                                        "checkpoints/vq-digits", [8, 8])
    assert config["teacher_sampling"] == {"cfg_scale": 2, "temperature": 0.5} and config["inputs"] == "noise"
    assert config["teacher_weights"] == weights_digest(REPO / "checkpoints" / "digits-ar"), \
        "distilled from the shipped teacher's weights (a replaced teacher needs its student distilled again)"
    assert "## Distilled Decoding (bench/distilled_decoding.py)" in (FOLDER / "README.md").read_text()


@pytest.mark.parametrize("steps", [1, 2])
def test_the_release_draws_the_digit_asked_for_in_its_passes(steps):
    generator = load_pretrained(FOLDER)
    tokenizer = generator.load_tokenizer(near=FOLDER)
    classes, labels = build_task(generator.task).evaluation_requests(generator, None, 5)
    calls = []
    generator.backbone.register_forward_hook(lambda *_: calls.append(1))
    images = generate_images(generator, tokenizer, {"label": classes}, rng=torch.Generator().manual_seed(0),
                             steps=steps)
    assert len(calls) == steps, "one batch of 50, one backbone call per step"
    accuracy = float((load_pretrained(JUDGE).classify(images) == torch.tensor(labels)).float().mean())
    assert accuracy >= MINIMUM_ACCURACY[steps], f"the judge reads {accuracy:.2f} of the {steps}-step digits as asked"
