"""The released image tokenizer in checkpoints/vq-digits: a small Hub folder whose reconstructions of
real test digits the digit classifier still reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REPO
from mmtok.data.images import digit_splits, fit_size, load_digit_source
from mmtok.hub import load_pretrained

CHECKPOINT = REPO / "checkpoints" / "vq-digits"
JUDGE = REPO / "checkpoints" / "digit-classifier"


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def test_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of the digits corpus (`mmtok data digits --image-size 32`: MNIST padded to 32 x 32,
    seed 0), built in memory: images [500, 1, 32, 32] in [0, 1] and labels [500]."""
    images, labels = load_digit_source("mnist")
    test = [i for i, split in enumerate(digit_splits(labels, seed=0)) if split == "test"]
    pixels = np.stack([fit_size(images[i], size=32, mode="pad") for i in test]).astype(np.float32) / 255.0
    return torch.from_numpy(pixels)[:, None], torch.from_numpy(labels[test].copy())


def test_the_release_is_a_small_self_describing_hub_folder(shipped):
    assert {p.name for p in CHECKPOINT.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (CHECKPOINT / "model.safetensors").stat().st_size <= 20 * 2**20
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.codecs.vq_image.VQImageTokenizer"
    assert shipped.modality == "image" and shipped.grid == (8, 8) and shipped.image_size == (32, 32)
    card = (CHECKPOINT / "README.md").read_text()
    assert "## Measured metrics" in card and "## Quality (bench/image_tokenizer_quality.py)" in card


def test_round_trip_keeps_the_digits_readable(shipped, test_digits):
    images, labels = test_digits
    judge = load_pretrained(JUDGE)
    tokens = shipped.encode(images)
    assert tokens.codes.shape == (500, shipped.num_codebooks, 64) and tokens.grid == (8, 8)
    reconstruction = shipped.decode(tokens)
    assert reconstruction.shape == images.shape
    real = float((judge.classify(images) == labels).float().mean())
    recon = float((judge.classify(reconstruction) == labels).float().mean())
    assert real > 0.95 and recon >= real - 0.03, f"judge accuracy {recon:.3f} on reconstructions, {real:.3f} on real"
    assert float((reconstruction - images).abs().mean()) < 0.05
