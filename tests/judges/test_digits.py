"""The digit classifier: shapes and channels, the feature-map contract, learning, Hub folder, recipe and export."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from mmtok.cli import main
from mmtok.data.images import build_digits_corpus
from mmtok.hub import load_pretrained
from mmtok.judges import DigitClassifier
from mmtok.judges.digits import evaluate_classifier, labelled_images
from mmtok.training.classifier import random_shift

PER_CLASS = 30  # 24 train, 3 valid, 3 test per class


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """300 scikit-learn digits upscaled from 8 x 8 to 32 x 32 (a tiny stand-in for the MNIST corpus)."""
    out = tmp_path_factory.mktemp("sklearn_digits")
    build_digits_corpus(out, source="sklearn", image_size=32, resize="upscale", max_per_class=PER_CLASS,
                        progress=False)
    return out


def tiny(**overrides) -> DigitClassifier:
    return DigitClassifier(**{"widths": [8, 16, 32], **overrides})


def test_shapes_and_channel_conversion():
    torch.manual_seed(0)
    model = tiny().eval()
    gray = torch.rand(4, 1, 32, 32)
    maps = model.feature_maps(gray)
    assert [tuple(m.shape) for m in maps] == [(4, 8, 32, 32), (4, 16, 16, 16), (4, 32, 8, 8)]
    assert model.features(gray).shape == (4, model.feature_dim) == (4, 32)
    assert model(gray).shape == (4, 10)
    predicted = model.classify(gray)
    assert predicted.dtype == torch.long and predicted.shape == (4,)
    # RGB -> gray by the channel mean; a gray model reads a gray image repeated on 3 channels identically
    torch.testing.assert_close(model(gray.expand(-1, 3, -1, -1)), model(gray))
    rgb = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(rgb), model(rgb.mean(1, keepdim=True)))
    color = tiny(channels=3).eval()
    torch.testing.assert_close(color(gray), color(gray.expand(-1, 3, -1, -1)))
    assert model.features(torch.rand(1, 1, 28, 28)).shape == (1, 32), "any size works (global pooling)"
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] with C = 1 or 3"):
        model(torch.rand(2, 2, 32, 32))
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        DigitClassifier(channels=2)


def test_feature_maps_are_differentiable_for_a_perceptual_loss():
    torch.manual_seed(0)
    model = tiny().eval().requires_grad_(False)
    images = torch.rand(2, 1, 32, 32, requires_grad=True)
    target = torch.rand(2, 1, 32, 32)
    loss = sum(F.mse_loss(a, b) for a, b in zip(model.feature_maps(images), model.feature_maps(target)))
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    torch.testing.assert_close(model.features(images), model.feature_maps(images)[-1].mean(dim=(-2, -1)))


def test_random_shift_moves_each_image_by_at_most_max_shift():
    image = torch.zeros(1, 1, 12, 12)
    image[..., 5:7, 4:8] = torch.arange(1.0, 9.0).reshape(2, 4)
    batch = image.expand(64, -1, -1, -1)
    shifted = random_shift(batch, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(random_shift(batch, 0), batch)
    translations = set()
    for item in shifted:
        rows, cols = torch.nonzero(item[0], as_tuple=True)
        dy, dx = int(rows.min()) - 5, int(cols.min()) - 4
        assert abs(dy) <= 2 and abs(dx) <= 2
        assert torch.equal(item[0, 5 + dy:7 + dy, 4 + dx:8 + dx], image[0, 0, 5:7, 4:8]), "content kept"
        translations.add((dy, dx))
    assert len(translations) > 10


def test_a_tiny_classifier_learns_the_digits(digits):
    """80 steps on 240 training digits: held-out accuracy far above chance (0.1)."""
    torch.manual_seed(0)
    images, labels = labelled_images(digits, split="train")
    assert images.shape == (10 * 24, 1, 32, 32) and labels.bincount().tolist() == [24] * 10
    model = tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(80):
        index = torch.randint(0, len(images), (32,))
        loss = F.cross_entropy(model(random_shift(images[index], 2)), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scored = evaluate_classifier(model, digits, split="test")
    assert scored["images"] == 30 and len(scored["per_class"]) == 10
    assert scored["accuracy"] >= 0.6, f"test accuracy {scored['accuracy']:.2f}; loss {loss.item():.3f}"
    assert scored["accuracy"] == pytest.approx(sum(scored["per_class"]) / 10), "3 test digits per class"
    assert model.training, "evaluation restores the training mode"


def test_save_load_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = tiny(dropout=0.3)
    model.train()(torch.rand(8, 1, 32, 32))  # move the BatchNorm running statistics away from their init
    model.eval()
    model.save_pretrained(tmp_path / "judge")
    config = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert config["mmtok_class"] == "mmtok.judges.digits.DigitClassifier" and config["widths"] == [8, 16, 32]
    reloaded = load_pretrained(tmp_path / "judge")
    assert isinstance(reloaded, DigitClassifier) and not reloaded.training
    images = torch.rand(3, 1, 32, 32)
    assert torch.equal(model(images), reloaded(images))
    assert all(torch.equal(a, b) for a, b in zip(model.feature_maps(images), reloaded.feature_maps(images)))


@pytest.mark.slow
def test_recipe_fit_then_export_with_the_measured_accuracy(digits, tmp_path):
    classifier = "--model.init_args.classifier.init_args."
    main(["fit", "-c", str(REPO / "recipes/judges/digit_classifier.yaml"),
          "--data.init_args.path", str(digits), "--data.init_args.build_embedded", "false",
          "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16",
          classifier + "widths", "[8, 16]", "--model.init_args.warmup_steps", "2",
          "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"])
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    main(["export", str(checkpoint), str(tmp_path / "hub"), "--data", str(digits)])
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "| accuracy | images |" in card and "optimizer steps" in card and "ClassifierModule" in card
    model = load_pretrained(tmp_path / "hub")
    assert isinstance(model, DigitClassifier) and [block[0].out_channels for block in model.blocks] == [8, 16]
    scored = evaluate_classifier(model, digits, split="test")
    assert f"| {scored['accuracy']:.4g} | 30 |" in card, "the card holds the accuracy of the exported weights"
