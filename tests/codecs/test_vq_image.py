"""VQ image tokenizer: the image contract (shapes, raster order, prefixes), purity of encode, losses,
Hub round trip, and `mmtok fit` of the digits recipe followed by `mmtok export`."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmtok.cli import main
from mmtok.codecs.vq_image import (QUANTIZERS, PatchDiscriminator, PerceptualLoss, VQImageTokenizer,
                                   evaluate_image_tokenizer)
from mmtok.data.images import build_digits_corpus
from mmtok.hub import load_pretrained
from mmtok.tokens import Tokens

REPO = Path(__file__).resolve().parents[2]
SIZES = {"vq": 16, "fsq": 27, "lfq": 16}  # fsq_levels (3, 3, 3)


def tiny(quantizer: str = "vq", *, image_size=16, block_channels=(8, 16, 16), **kwargs) -> VQImageTokenizer:
    torch.manual_seed(0)
    args = dict(image_size=image_size, channels=1, block_channels=block_channels, layers_per_block=1, norm_groups=4,
                latent_dim=8, quantizer=quantizer, num_quantizers=3, codebook_size=16, fsq_levels=(3, 3, 3))
    return VQImageTokenizer(**{**args, **kwargs})


def initialised(model: VQImageTokenizer, images: torch.Tensor) -> VQImageTokenizer:
    """One training forward pass (k-means-initialises VQ codebooks), then eval mode."""
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


class TinyFeatures(nn.Module):
    """A stand-in perceptual network: two conv blocks with ``feature_maps``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Dropout(0.5), nn.ReLU()),
                                     nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())])

    def feature_maps(self, images):
        maps, x = [], images
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A tiny real corpus: sklearn's digits upscaled to 32 x 32, 12 per class."""
    out = tmp_path_factory.mktemp("digits")
    build_digits_corpus(out, source="sklearn", image_size=32, resize="upscale", max_per_class=12, progress=False)
    return out


@pytest.fixture(scope="module")
def digit_images(digits) -> torch.Tensor:
    from mmtok.data.images import ImageDataModule

    module = ImageDataModule(path=str(digits), channels=1, image_size=32, batch_size=96)
    module.setup("fit")
    return next(iter(module.train_dataloader()))["image"]  # [96, 1, 32, 32], a shuffle drawn from seed 0


def random_images(batch: int, size=16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, *((size, size) if isinstance(size, int) else size),
                      generator=torch.Generator().manual_seed(seed))


# -- the contract ------------------------------------------------------------------------------

@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
@pytest.mark.parametrize("image_size, block_channels, grid", [
    (16, (8, 16, 16), (4, 4)), (32, (8, 16, 16), (8, 8)), (16, (8, 16), (8, 8)), ((16, 24), (8, 16, 16), (4, 6))])
def test_round_trip_shapes_codes_and_grid(quantizer, image_size, block_channels, grid):
    model = tiny(quantizer, image_size=image_size, block_channels=block_channels)
    images = random_images(3, image_size)
    model = initialised(model, images)
    assert model.modality == "image" and model.grid == grid
    assert model.frame_rate is None and model.sample_rate is None
    assert model.codebook_sizes == [SIZES[quantizer]] * 3
    tokens = model.encode(images)
    assert tokens.codes.shape == (3, 3, grid[0] * grid[1]) and tokens.codes.dtype == torch.long
    assert tokens.grid == grid and tokens.lengths is None
    assert 0 <= int(tokens.codes.min()) and int(tokens.codes.max()) < SIZES[quantizer]
    decoded = model.decode(tokens)
    assert decoded.shape == images.shape
    assert 0.0 <= float(decoded.min()) and float(decoded.max()) <= 1.0


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_codes_are_the_quantizers_own_and_dequantize_is_its_output(quantizer):
    model = initialised(tiny(quantizer), random_images(4, seed=1))
    images = random_images(2, seed=2)
    with torch.no_grad():
        latent = model._latent(images)  # [B, D, h, w]
        library = getattr(model.quantizer, "module", None) or model.quantizer.rvq
        library.eval()
        quantized, indices, *_ = library(rearrange(latent, "b d h w -> b (h w) d"))
    codes = model.encode(images).codes
    assert torch.equal(codes, rearrange(indices.long(), "b n q -> b q n"))
    assert torch.allclose(model.dequantize(codes), rearrange(quantized, "b (h w) d -> b d h w", h=4), atol=1e-5)


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_prefix_codebooks_encode_decode_and_sum_by_hand(quantizer):
    model = initialised(tiny(quantizer), random_images(8, seed=6))
    images = random_images(2, seed=7)
    full = model.encode(images).codes  # [2, 3, 16]
    for n in (1, 2, 3):
        tokens = model.encode(images, num_quantizers=n)
        assert torch.equal(tokens.codes, full[:, :n])
        decoded = model.decode(tokens)
        assert decoded.shape == images.shape
        assert torch.allclose(decoded, model.decode(Tokens(codes=full, grid=(4, 4)), num_quantizers=n))
    # the latent of a prefix is the sum of its codewords (scaled per level for FSQ), projected out
    library = getattr(model.quantizer, "module", None) or model.quantizer.rvq
    codes = rearrange(full, "b q n -> b n q")
    books = library.codebooks
    scales = library.scales if quantizer == "fsq" else torch.ones(3, 1)
    by_hand = books[0][codes[..., 0]] * scales[0] + books[1][codes[..., 1]] * scales[1]
    assert torch.allclose(model.dequantize(full[:, :2]),
                          rearrange(library.project_out(by_hand), "b (h w) d -> b d h w", h=4), atol=1e-6)
    dropped = full.clone()
    dropped[:, 2] = -1
    assert torch.equal(model.dequantize(dropped), model.dequantize(full[:, :2]))
    with pytest.raises(ValueError, match="num_quantizers must be in 1..3"):
        model.encode(images, num_quantizers=4)
    with pytest.raises(ValueError, match="4 codebooks, the model has 3"):
        model.dequantize(torch.zeros(1, 4, 16, dtype=torch.long))


def test_residual_levels_bring_the_latent_closer():
    model = initialised(tiny("vq"), random_images(32, seed=8))
    images = random_images(4, seed=9)
    with torch.no_grad():
        latent, codes = model._latent(images), model.encode(images).codes
    errors = [float((latent - model.dequantize(codes[:, :n])).norm()) for n in (1, 2, 3)]
    assert errors[2] < errors[1] < errors[0] < float(latent.norm()), errors


def test_invalid_inputs_and_arguments():
    model = tiny()
    with pytest.raises(ValueError, match=r"images must be \[B, 1, 16, 16\]"):
        model.encode(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="images have no lengths"):
        model.encode(torch.rand(1, 1, 16, 16), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"tokens of grid \(8, 8\), this tokenizer's is \(4, 4\)"):
        model.decode(Tokens(codes=torch.zeros(1, 3, 64, dtype=torch.long), grid=(8, 8)))
    with pytest.raises(ValueError, match=r"64 steps, this tokenizer's \(4, 4\) grid has 16"):
        model.decode(Tokens(codes=torch.zeros(1, 3, 64, dtype=torch.long)))
    codes = torch.zeros(1, 3, 16, dtype=torch.long)
    codes[0, 1, 5] = 16
    with pytest.raises(ValueError, match=r"codebook 1 holds 16, expected 0\.\.15 or -1"):
        model.decode(Tokens(codes=codes))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
        tiny(image_size=18)
    with pytest.raises(ValueError, match="quantizer must be one of"):
        tiny("kmeans")
    with pytest.raises(ValueError, match="power of 2"):
        tiny("lfq", codebook_size=12)


# -- purity --------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_eval_encode_and_forward_change_no_buffer_and_training_initialises(quantizer):
    """vector-quantize-pytorch k-means-initialises codebooks on the first call in any mode; a Lightning
    sanity check would initialise them from validation images. Only training batches may."""
    model = tiny(quantizer).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode(random_images(2, seed=10))
    with torch.no_grad():
        model(random_images(2, seed=11))
    model.train()
    model.encode(random_images(2, seed=12))  # encode is the pure search in train mode too
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])] == []
    assert model.training
    if quantizer == "vq":
        train = random_images(8, seed=13)
        with torch.no_grad():
            model(train)
        first = model.quantizer.rvq.codebooks[0]
        assert first.abs().sum() > 0, "the first training batch initialises the codebooks"
        latent = rearrange(model._latent(train), "b d h w -> (b h w) d")
        assert float(first.norm(dim=-1).max()) <= float(latent.norm(dim=-1).max()) + 1e-4  # k-means of those


# -- losses and training -------------------------------------------------------------------------

def test_perceptual_loss_values_and_frozen_network():
    network = TinyFeatures()
    loss = PerceptualLoss(network)
    loss.train()  # a LightningModule.train() must not switch the network's dropout on
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    x, y = random_images(3, seed=14), random_images(3, seed=15)
    assert float(loss(x, x)) == 0.0 and float(loss(x, y)) > 0
    by_hand = 0
    for a, b in zip(network.feature_maps(x), network.feature_maps(y)):
        a, b = a / a.norm(dim=1, keepdim=True).clamp(min=1e-10), b / b.norm(dim=1, keepdim=True).clamp(min=1e-10)
        by_hand = by_hand + ((a - b) ** 2).sum(1).mean((1, 2))
    assert torch.allclose(loss(x, y, reduce=False), by_hand / 2, atol=1e-6)
    x.requires_grad_(True)
    loss(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="feature_maps"):
        PerceptualLoss(nn.Linear(2, 2))


def test_patch_discriminator_judges_patches():
    disc = PatchDiscriminator(in_channels=1, channels=8, num_layers=2)
    assert disc(torch.rand(2, 1, 32, 32)).shape == (2, 1, 6, 6)


@pytest.fixture(scope="module")
def trained(digit_images) -> tuple[VQImageTokenizer, list[float]]:
    """A tiny VQ tokenizer trained for 30 steps on real digits with L1 + a perceptual loss + commitment."""
    model = tiny("vq", image_size=32, num_quantizers=2, codebook_size=32).train()
    perceptual = PerceptualLoss(TinyFeatures())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        images = digit_images[(step % 4) * 24:(step % 4 + 1) * 24]
        out = model(images)
        loss = F.l1_loss(out.images, images) + perceptual(out.images, images) + out.quantizer_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_loss_falls_on_real_digits(trained, digit_images):
    model, losses = trained
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, f"loss went from {first:.4f} to {last:.4f}"
    black = float(digit_images.mean())  # the L1 of guessing black images
    l1 = float((model.decode(model.encode(digit_images)) - digit_images).abs().mean())
    assert l1 < 0.7 * black, f"reconstruction L1 {l1:.4f} vs {black:.4f} for black images"


def test_raster_order_a_code_depends_on_its_own_cell(trained, digit_images):
    """Redrawing the pixels of grid cell (i, j) of real digits changes the first-level codes at and next
    to step i · w + j far more often than the codes of cells two or more cells away, and the changes
    centre on (i, j), not on (j, i) (8 x 8 grid, 4 x 4 cells; the encoder sees past a cell's edges)."""
    model, _ = trained
    base = digit_images[:48]
    codes = model.encode(base).codes[:, 0]  # [48, 64]
    cells = torch.cartesian_prod(torch.arange(8), torch.arange(8))  # (i, j) in raster order
    for i, j in [(0, 0), (2, 5), (7, 7), (4, 1), (6, 3)]:
        changed_image = base.clone()
        changed_image[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = random_images(48, 4, seed=5 + i * 8 + j)
        changed = (model.encode(changed_image).codes[:, 0] != codes).float().mean(0)  # [64] per step
        distance = (cells - torch.tensor([i, j])).abs().amax(-1)
        near, far = float(changed[distance <= 1].mean()), float(changed[distance >= 2].mean())
        local = F.avg_pool2d(changed.view(1, 8, 8), 3, stride=1, padding=1, count_include_pad=False).flatten()
        centre = cells[int(local.argmax())]  # where the changes are densest
        assert near > 4 * far, f"cell {(i, j)}: {changed.view(8, 8)}"
        assert (centre - torch.tensor([i, j])).abs().max() <= 1, f"cell {(i, j)}: changes centre on {centre}"


# -- Hub -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_hub_round_trip_same_codes_and_images(quantizer, tmp_path):
    model = initialised(tiny(quantizer), random_images(8, seed=16))
    model.save_pretrained(tmp_path / "hub")
    loaded = load_pretrained(tmp_path / "hub")
    assert isinstance(loaded, VQImageTokenizer) and not loaded.training
    images = random_images(3, seed=17)
    tokens = model.encode(images)
    assert torch.equal(loaded.encode(images).codes, tokens.codes)
    assert torch.equal(loaded.decode(tokens), model.decode(tokens))
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["quantizer"] == quantizer and config["mmtok_class"] == "mmtok.codecs.vq_image.VQImageTokenizer"


# -- the recipe --------------------------------------------------------------------------------

def _rows(run_dir: Path) -> list[dict]:
    (metrics,) = run_dir.glob("csv/*/metrics.csv")
    with open(metrics) as handle:
        return list(csv.DictReader(handle))


def test_recipe_fit_logs_media_and_exports(digits, tmp_path):
    from mmtok.judges.digits import DigitClassifier

    torch.manual_seed(0)
    DigitClassifier(widths=[4, 8]).save_pretrained(tmp_path / "judge")  # a tiny perceptual network
    tokenizer = "--model.init_args.tokenizer.init_args."
    run = tmp_path / "run"
    main(["fit", "-c", str(REPO / "recipes" / "codec" / "vq_digits.yaml"),
          "--data.init_args.path", str(digits), "--data.init_args.build_embedded", "false",
          "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
          "--data.init_args.max_valid_items", "8",
          tokenizer + "block_channels", "[8, 16, 16]", tokenizer + "norm_groups", "4", tokenizer + "latent_dim", "8",
          tokenizer + "codebook_size", "32",
          "--model.init_args.perceptual_network", str(tmp_path / "judge"),
          "--model.init_args.discriminator.init_args.channels", "8",
          "--model.init_args.adversarial_start_step", "4", "--model.init_args.num_logged_examples", "4",
          "--model.init_args.warmup_steps", "2", "--model.init_args.lr_decay_steps", "8",
          "--trainer.max_steps", "12", "--trainer.val_check_interval", "8", "--trainer.limit_val_batches", "1",
          "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(run),
          "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "csv"])
    rows = _rows(run)
    assert len([r for r in rows if r.get("train/l1")]) == 8, "4 generator steps alone, then 4 with the GAN"
    assert len([r for r in rows if r.get("train/d_loss")]) == 4
    assert all(float(r["train/perceptual"]) > 0 for r in rows if r.get("train/l1"))
    assert all(float(r["train/adv_weight"]) > 0 for r in rows if r.get("train/adv_weight"))
    assert any(r.get("val/psnr@1q") for r in rows) and any(r.get("val/usage@q1") for r in rows)
    grids = sorted((run / "media").rglob("reconstructions.png"))
    assert grids, "validation writes a png grid of originals over reconstructions"
    from mmtok.media import read_image

    assert read_image(grids[-1], channels=1).shape == (1, 3 * 34 + 2, 4 * 34 + 2)  # 3 rows (original, 1q, 2q)

    main(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "hub"), "--data", str(digits),
          "--judge", str(tmp_path / "judge")])
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "## Measured metrics" in card and "psnr" in card and "8x8" in card and "judge_accuracy" in card
    loaded = load_pretrained(tmp_path / "hub")
    assert isinstance(loaded, VQImageTokenizer) and loaded.grid == (8, 8)
    rows = evaluate_image_tokenizer(loaded, str(digits), split="test")
    assert [r["codebooks"] for r in rows] == [1, 2] and rows[0]["images"] == 10
    images = torch.rand(2, 1, 32, 32)
    assert loaded.decode(loaded.encode(images)).shape == images.shape


def test_eval_forward_matches_encode_decode():
    model = initialised(tiny("vq"), random_images(8, seed=18))
    images = random_images(2, seed=19)
    with torch.no_grad():
        out = copy.deepcopy(model).eval()(images)
    assert torch.allclose(out.images.clamp(0, 1), model.decode(model.encode(images)), atol=1e-6)
    assert torch.equal(out.codes, model.encode(images).codes)


def test_log_image_examples_writes_originals_over_reconstructions_and_logs_to_wandb(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from mmtok.media import read_image
    from mmtok.training.media import log_image_examples

    logger = WandbLogger(offline=True, save_dir=str(tmp_path))  # no run starts until it is used
    logged = []
    monkeypatch.setattr(logger, "log_image", lambda **kwargs: logged.append(kwargs))
    module = SimpleNamespace(trainer=SimpleNamespace(default_root_dir=str(tmp_path)), global_step=7, loggers=[logger])
    images = torch.zeros(5, 1, 8, 8)
    path = log_image_examples(module, images, [torch.ones(5, 1, 8, 8)], names=["2q"], count=3)
    assert path == tmp_path / "media" / "step_0000007" / "reconstructions.png"
    grid = read_image(path, channels=1)[0]  # 2 rows x 3 columns of 8 x 8 cells, 2 px padding
    assert grid.shape == (2 + 2 * 10, 2 + 3 * 10)
    assert float(grid[2:10, 2:10].max()) == 0.0 and float(grid[12:20, 2:10].min()) == 1.0
    assert logged[0]["key"] == "val_media/reconstructions" and logged[0]["step"] == 7
    assert logged[0]["images"][0].shape == (22, 32, 1) and logged[0]["caption"] == ["rows: original, 2q"]


def test_codebook_vectors_are_what_decoding_adds_up(grid_tokenizer):
    """Distilled Decoding's flow reads each codebook's vectors: their sum over the codebooks of a cell
    is the latent the decoder gets."""
    tokenizer = load_pretrained(grid_tokenizer)
    vectors = tokenizer.codebook_vectors()
    assert [tuple(v.shape) for v in vectors] == [(16, 8), (16, 8)]
    codes = torch.randint(0, 16, (2, 2, 16), generator=torch.Generator().manual_seed(0))
    summed = sum(vectors[q][codes[:, q]] for q in range(2))  # [B, h·w, D]
    latent = tokenizer.dequantize(codes)  # [B, D, h, w]
    assert torch.allclose(summed, latent.flatten(2).transpose(1, 2), atol=1e-6)


def test_decode_codes_is_decode_unclamped_and_carries_gradients():
    model = initialised(tiny("vq"), random_images(8, seed=3))
    tokens = model.encode(random_images(4, seed=4))
    decoded = model.decode_codes(tokens.codes)
    assert torch.equal(decoded.clamp(0, 1), model.decode(tokens))
    decoded.sum().backward()
    assert model.decoder.conv_out.weight.grad is not None and model.decoder_modules() == [model.decoder]
