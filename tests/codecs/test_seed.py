"""SEED (mmtok/codecs/seed.py, mmtok/training/seed.py): causal queries, the contrastive loss by hand,
straight-through gradients, a de-tokenizer that learns, the Hub round trip, the transformers vision path,
and the recipes end to end: stage 1 -> stage 2 -> de-tokenizer -> export -> class and caption AR generators
over SEED tokens -> `mmtok generate`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmtok.cli import main
from mmtok.codecs.seed import CausalQFormer, HFVisionEncoder, SeedTokenizer, contrastive_loss
from mmtok.data.images import build_digits_corpus
from mmtok.hub import load_pretrained
from mmtok.tokens import Tokens
from mmtok.training.seed import SeedModule, retrieval_recall

REPO = Path(__file__).resolve().parents[2]
TINY = {"vit_dim": 32, "vit_layers": 1, "vit_heads": 2, "num_queries": 4, "dim": 32, "qformer_layers": 1,
        "num_heads": 2, "embed_dim": 16, "codebook_size": 16, "codebook_dim": 8, "reconstruction_layers": 1,
        "unet_channels": [16, 16], "unet_attention": [False, True], "unet_head_dim": 8, "unet_norm_groups": 8,
        "decode_steps": 3}


def tiny(**overrides) -> SeedTokenizer:
    torch.manual_seed(0)
    return SeedTokenizer(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """sklearn's real digits upscaled to 32 x 32, 12 per class, with captions."""
    out = tmp_path_factory.mktemp("digits")
    build_digits_corpus(out, source="sklearn", image_size=32, resize="upscale", max_per_class=12, progress=False)
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_a_query_never_sees_a_later_one(causal):
    torch.manual_seed(0)
    qformer = CausalQFormer(num_queries=6, dim=16, context_dim=8, num_layers=2, num_heads=2, causal=causal).eval()
    context, queries = torch.randn(2, 5, 8), torch.randn(2, 6, 16)
    changed = queries.clone()
    changed[:, 4] += torch.randn(2, 16)  # a later query's input
    before, after = qformer(context, queries=queries), qformer(context, queries=changed)
    if causal:
        torch.testing.assert_close(before[:, :4], after[:, :4])
    else:  # BLIP-2's bidirectional queries: every output moves
        assert (before[:, :4] - after[:, :4]).abs().max() > 1e-3
    assert (before[:, 4:] - after[:, 4:]).abs().max() > 1e-3


def test_contrastive_loss_by_hand():
    torch.manual_seed(0)
    image, text, temperature, smoothing = torch.randn(4, 3), torch.randn(4, 3), torch.tensor(0.07), 0.1
    logits = [[float(F.cosine_similarity(image[i], text[j], dim=0)) / 0.07 for j in range(4)] for i in range(4)]

    def smoothed_ce(rows):
        total = 0.0
        for i, row in enumerate(rows):
            log_p = [x - math.log(sum(math.exp(y) for y in row)) for x in row]
            total += -(1 - smoothing) * log_p[i] - smoothing * sum(log_p) / len(row)
        return total / len(rows)

    columns = [[logits[i][j] for i in range(4)] for j in range(4)]
    expected = (smoothed_ce(logits) + smoothed_ce(columns)) / 2
    loss = contrastive_loss(image, text, temperature, label_smoothing=smoothing)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # the temperature is clamped as in the reference code
    assert float(contrastive_loss(image, text, torch.tensor(1e-6))) == pytest.approx(
        float(contrastive_loss(image, text, torch.tensor(0.001))))


def test_straight_through_gradients_reach_the_qformer():
    model = tiny().train()
    images = torch.rand(4, 1, 32, 32)
    _, queries, target = model.image_features(images)
    quantized, codes, commitment = model.quantize(queries)
    reconstructed, global_embedding = model.reconstruct(quantized)
    loss = (1 - F.cosine_similarity(reconstructed, queries.detach(), dim=-1).mean()
            + F.mse_loss(global_embedding, target.detach()))
    loss.backward()
    assert model.qformer.queries.grad is not None and model.qformer.queries.grad.abs().sum() > 0
    assert model.encoder.patch.weight.grad.abs().sum() > 0 and model.down[0].weight.grad.abs().sum() > 0
    assert codes.shape == (4, 4) and int(codes.max()) < 16


def test_eval_quantize_is_the_pure_nearest_code_search():
    model = tiny().train()
    _, queries, _ = model.image_features(torch.rand(8, 1, 32, 32))
    model.quantize(queries)  # initialises the codebook (k-means) in training mode
    model.eval()
    codebook = model.vq.codebooks.clone()
    _, codes, _ = model.quantize(queries)
    assert torch.equal(codes, model.nearest_codes(queries)) and torch.equal(codebook, model.vq.codebooks)
    distances = torch.cdist(model.down(queries), model.vq.codebooks[0])
    assert torch.equal(codes, distances.argmin(-1))


def test_encode_gives_1d_tokens_and_decode_is_deterministic_per_seed():
    model = tiny().eval()
    images = torch.rand(3, 1, 32, 32)
    tokens = model.encode(images)
    assert tokens.codes.shape == (3, 1, 4) and tokens.grid == (4,) and model.grid == (4,)
    first, again = model.decode(tokens), model.decode(tokens)
    assert first.shape == images.shape and torch.equal(first, again) and 0 <= first.min() and first.max() <= 1
    assert not torch.equal(first, model.decode(tokens, seed=1))
    assert model.decode(tokens, sampler="dpm", steps=2, guidance=2.0).shape == images.shape
    with pytest.raises(ValueError, match="steps must be"):
        model.decode(tokens, steps=0)
    with pytest.raises(ValueError, match="images must be"):
        model.encode(torch.rand(2, 3, 32, 32))
    from mmtok.errors import DataError

    with pytest.raises(DataError, match="5 steps.*grid has 4"):
        model.decode(Tokens(codes=torch.zeros(1, 1, 5, dtype=torch.long)))
    with pytest.raises(DataError, match="holds 16"):
        model.decode(Tokens(codes=torch.full((1, 1, 4), 16)))


def test_detokenizer_loss_falls(tmp_path, digits):
    from mmtok.data.images import ImageDataModule

    tiny().save_pretrained(tmp_path / "seed")
    module = SeedModule(stage="detokenizer", init_from=str(tmp_path / "seed"), lr=3e-3, condition_dropout=0.0)
    assert module.tokenizer.unet.training and not module.tokenizer.qformer.training and not module.tokenizer.vq.training
    trainable = [p for p in module.tokenizer.parameters() if p.requires_grad]
    assert trainable and all(p is q for p, q in zip(trainable, module.tokenizer.unet.parameters()))
    data = ImageDataModule(path=str(digits), channels=1, image_size=32, batch_size=32)
    data.setup()
    images = next(iter(data.train_dataloader()))["image"]
    optimizer = torch.optim.Adam(trainable, lr=3e-3)
    module.train()
    torch.manual_seed(0)
    losses = []
    for _ in range(40):
        loss, _ = module.detokenizer_loss(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon", "sample"])
def test_diffusion_target_by_hand_and_recorded_by_the_detokenizer_stage(tmp_path, prediction):
    tiny().save_pretrained(tmp_path / "seed")
    module = SeedModule(stage="detokenizer", init_from=str(tmp_path / "seed"), prediction=prediction)
    tokenizer, scheduler = module.tokenizer, module.tokenizer.noise_scheduler()
    x0, noise, t = torch.rand(3, 1, 32, 32) * 2 - 1, torch.randn(3, 1, 32, 32), torch.tensor([0, 500, 999])
    alpha_bar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"epsilon": noise, "sample": x0,  # v = √ᾱ·ε − √(1−ᾱ)·x₀ (Salimans & Ho 2022, §4)
                "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0}[prediction]
    assert torch.allclose(tokenizer.diffusion_target(x0, noise, t, scheduler), expected, atol=1e-5)
    assert tokenizer.hub_config["prediction"] == prediction == scheduler.config.prediction_type
    tokenizer.save_pretrained(tmp_path / "out")
    assert load_pretrained(tmp_path / "out").schedule["prediction_type"] == prediction
    with pytest.raises(ValueError, match="stage 'detokenizer'"):
        SeedModule(stage="tokens", init_from=str(tmp_path / "seed"), prediction=prediction)


def test_recorded_decoding_settings_are_the_loaded_defaults(tmp_path):
    tokenizer = tiny()
    tokenizer.record_decoding(sampler="dpm", steps=2)
    tokenizer.save_pretrained(tmp_path / "seed")
    loaded = load_pretrained(tmp_path / "seed")
    assert loaded.decode_defaults == {"sampler": "dpm", "steps": 2, "guidance": 1.0, "seed": 0}
    tokens = loaded.encode(torch.rand(2, 1, 32, 32))
    assert torch.equal(loaded.decode(tokens), loaded.decode(tokens, sampler="dpm", steps=2, seed=0))
    for bad, match in [({"temperature": 1}, "unknown decoding settings"), ({"sampler": "euler"}, "sampler"),
                       ({"steps": 0}, "steps")]:
        with pytest.raises(ValueError, match=match):
            tokenizer.record_decoding(**bad)


def test_hub_round_trip_decodes_the_same_images(tmp_path):
    model = tiny().train()
    model.quantize(model.image_features(torch.rand(8, 1, 32, 32))[1])  # a k-means initialised codebook
    model.eval()
    model.save_pretrained(tmp_path / "seed")
    loaded = load_pretrained(tmp_path / "seed")
    images = torch.rand(2, 1, 32, 32)
    tokens = model.encode(images)
    assert torch.equal(tokens.codes, loaded.encode(images).codes)
    assert torch.equal(model.decode(tokens, seed=3), loaded.decode(tokens, seed=3))


def test_retrieval_recall_counts_an_image_of_the_captions_class():
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[0.9, 0.1], [0.0, 1.0], [1.0, 0.05]])
    labels = torch.tensor([0, 1, 1])  # image 2 points like caption 0 but is a 1
    recall = retrieval_recall(texts, images, torch.tensor([0, 1]), labels, ks=(1, 2))
    assert recall == {"recall@1": 0.5, "recall@2": 1.0}  # caption 0's nearest is image 2 (a 1), then image 0


def test_transformers_vision_encoder_from_a_local_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8, projection_dim=16)
    CLIPVisionModel(config).save_pretrained(tmp_path / "clip")
    encoder = HFVisionEncoder(str(tmp_path / "clip"))
    pooled, patches = encoder(torch.rand(2, 1, 32, 32))
    assert pooled.shape == (2, 32) and patches.shape == (2, 4, 32)
    model = tiny(vision_encoder=str(tmp_path / "clip"))
    assert not any(name.startswith("encoder.") for name in model.state_dict()), "the frozen encoder is not saved"
    assert model.encode(torch.rand(2, 1, 32, 32)).codes.shape == (2, 1, 4)
    module = SeedModule(stage="contrastive", tokenizer=model)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert model.qformer.queries.requires_grad and not model.unet.conv_in.weight.requires_grad
    del module
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFVisionEncoder(str(tmp_path))


def _rows(run: Path) -> list[dict]:
    (metrics,) = run.glob("csv/*/metrics.csv")
    with open(metrics) as handle:
        return list(csv.DictReader(handle))


def _fit(recipe: str, run: Path, digits: Path, *extra: str) -> None:
    main(["fit", "-c", str(REPO / "recipes" / recipe), "--data.init_args.build_embedded", "false",
          "--data.init_args.batch_size", "16", "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
          "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.default_root_dir", str(run), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "csv", *extra])


@pytest.mark.slow
def test_recipes_end_to_end_stage1_stage2_detokenizer_export_ar_generate(digits, tmp_path):
    from mmtok.judges.digits import DigitClassifier

    torch.manual_seed(0)
    DigitClassifier(widths=[4, 8]).save_pretrained(tmp_path / "judge")
    tokenizer = [f"--model.init_args.tokenizer.init_args.{k}={json.dumps(v)}" for k, v in TINY.items()]
    data = ["--data.init_args.path", str(digits)]
    _fit("codec/seed_digits_stage1.yaml", tmp_path / "s1", digits, *data, *tokenizer)
    rows = _rows(tmp_path / "s1")
    assert any(r.get("val/zero_shot_accuracy") for r in rows) and any(r.get("train/query_itc") for r in rows)
    main(["export", str(tmp_path / "s1" / "checkpoints" / "last.ckpt"), str(tmp_path / "s1.hub")])
    _fit("codec/seed_digits_stage2.yaml", tmp_path / "s2", digits, *data,
         "--model.init_args.init_from", str(tmp_path / "s1.hub"))
    assert any(r.get("val/usage") for r in _rows(tmp_path / "s2"))
    stage1, stage2 = load_pretrained(tmp_path / "s1.hub"), None
    main(["export", str(tmp_path / "s2" / "checkpoints" / "last.ckpt"), str(tmp_path / "s2.hub")])
    stage2 = load_pretrained(tmp_path / "s2.hub")
    torch.testing.assert_close(stage1.qformer.queries, stage2.qformer.queries)  # stage 2 froze the Q-Former
    assert not torch.equal(stage1.down[0].weight, stage2.down[0].weight)
    _fit("codec/seed_digits_detokenizer.yaml", tmp_path / "s3", digits, *data,
         "--model.init_args.init_from", str(tmp_path / "s2.hub"), "--model.init_args.decode_steps", "2",
         "--model.init_args.num_logged_examples", "4")
    assert sorted((tmp_path / "s3" / "media").rglob("reconstructions.png"))
    seed = tmp_path / "seed"
    main(["export", str(tmp_path / "s3" / "checkpoints" / "last.ckpt"), str(seed), "--half", "--data", str(digits),
          "--judge", str(tmp_path / "judge")])
    card = (seed / "README.md").read_text()
    assert "zero_shot_accuracy" in card and "judge_accuracy" in card and "frechet_real" in card
    loaded = load_pretrained(seed)
    assert torch.equal(loaded.down[0].weight, stage2.down[0].weight.half().float())

    image = tmp_path / "digit.png"
    from mmtok.media import write_png

    write_png(image, torch.rand(1, 32, 32))
    main(["encode", str(seed), str(image), str(tmp_path / "tokens.safetensors")])
    main(["decode", str(seed), str(tmp_path / "tokens.safetensors"), str(tmp_path / "decoded.png"),
          "--steps", "2", "--sampler", "dpm", "--seed", "1"])
    assert (tmp_path / "decoded.png").is_file()

    run = tmp_path / "ar"
    generator = "--model.init_args.generator.init_args."
    main(["fit", "-c", str(REPO / "recipes" / "images" / "ar_digits_seed.yaml"),
          generator + "tokenizer", str(seed), generator + "backbone.init_args.codebook_sizes", "[16]",
          generator + "backbone.init_args.dim", "32", generator + "backbone.init_args.num_layers", "1",
          generator + "backbone.init_args.num_heads", "2", "--model.init_args.num_generated_examples", "2",
          "--data.init_args.tokenizer", str(seed), "--data.init_args.tokens", str(tmp_path / "tokens"),
          "--data.init_args.data", str(digits), "--data.init_args.batch_size", "16",
          "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.default_root_dir", str(run), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.init_args.save_dir", str(run)])
    main(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "ar.hub")])
    main(["generate", str(tmp_path / "ar.hub"), "--tokenizer", str(seed), "--class", "3", "--num-samples", "2",
          "--out", str(tmp_path / "generated")])
    written = sorted(p.name for p in (tmp_path / "generated").glob("*.png"))
    assert written == ["class3_000.png", "class3_001.png", "grid.png"]

    run = tmp_path / "captions"  # the caption recipe over the same SEED tokens: 1-D positions, the packaged MiniLM
    main(["fit", "-c", str(REPO / "recipes" / "images" / "ar_digit_captions.yaml"),
          generator + "tokenizer", str(seed), generator + "backbone.init_args.codebook_sizes", "[16]",
          generator + "backbone.init_args.position_axes", "1", generator + "backbone.init_args.dim", "32",
          generator + "backbone.init_args.num_layers", "1", generator + "backbone.init_args.num_heads", "2",
          "--model.init_args.num_generated_examples", "2", "--data.init_args.tokenizer", str(seed),
          "--data.init_args.tokens", str(tmp_path / "tokens"), "--data.init_args.data", str(digits),
          "--data.init_args.batch_size", "16", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
          "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(run),
          "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(run)])
    main(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "captions.hub")])
    main(["generate", str(tmp_path / "captions.hub"), "--tokenizer", str(seed), "--text", "a handwritten digit seven",
          "--num-samples", "2", "--out", str(tmp_path / "captioned")])
    written = sorted(p.name for p in (tmp_path / "captioned").glob("*.png"))
    assert written == ["grid.png", "text0_000.png", "text0_001.png"]


def test_decode_flags_are_refused_for_a_tokenizer_without_them(tmp_path, capsys):
    from mmtok.codecs.vq_image import VQImageTokenizer
    from conftest import cli_error

    VQImageTokenizer(image_size=16, block_channels=(8, 16), norm_groups=4, latent_dim=4, codebook_size=8,
                     num_quantizers=1).save_pretrained(tmp_path / "vq")
    Tokens(codes=torch.zeros(1, 1, 64, dtype=torch.long), grid=(8, 8)).save(tmp_path / "t.safetensors")
    status, message = cli_error(["decode", str(tmp_path / "vq"), str(tmp_path / "t.safetensors"),
                                 str(tmp_path / "x.png"), "--steps", "4"], capsys)
    assert status == 2 and "--steps" in message and "VQImageTokenizer" in message
