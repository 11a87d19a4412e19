"""Shared fixtures: a tiny real speech corpus, the arguments of a tiny codec recipe, the digits' test split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmtok.data.speech import build_speech_corpus

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "codec" / "rvq_speech.yaml"


def released_generator_config(folder: Path, tokenizer: str = "checkpoints/xcodec-speech-16k") -> dict:
    """Check what every released TTS generator folder promises (three files, ≤ 20 MiB, the shipped
    codec named as its tokenizer, a measured intelligibility section) and return its config."""
    import json

    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20
    assert "## Intelligibility (bench/tts_intelligibility.py)" in (folder / "README.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["tokenizer"] == tokenizer
    return config


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """The tests' models are tiny: one thread is faster, and much faster when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digit_test_split() -> tuple[torch.Tensor, torch.Tensor]:
    """The test split of the digits corpus (`mmtok data digits --image-size 32`: MNIST padded to 32 x 32,
    seed 0), built in memory: images [500, 1, 32, 32] in [0, 1] and labels [500]."""
    import numpy as np

    from mmtok.data.images import digit_splits, fit_size, load_digit_source

    images, labels = load_digit_source("mnist")
    test = [i for i, split in enumerate(digit_splits(labels, seed=0)) if split == "test"]
    pixels = np.stack([fit_size(images[i], size=32, mode="pad") for i in test]).astype(np.float32) / 255.0
    return torch.from_numpy(pixels)[:, None], torch.from_numpy(labels[test].copy())


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """24 espeak-ng utterances at 16 kHz, built once per test session."""
    out = tmp_path_factory.mktemp("tiny_speech")
    build_speech_corpus(out, num_utterances=24, seed=0, num_workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def recognizer_folder(tmp_path_factory) -> Path:
    """A tiny randomly initialised phoneme recognizer saved as a Hub folder (a semantic teacher)."""
    from mmtok.asr import PhonemeRecognizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_recognizer")
    PhonemeRecognizer(phonemes=["a", "b", "k"], dim=24, num_layers=1, num_heads=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hubert_folder(tmp_path_factory) -> Path:
    """A 2-layer randomly initialised HuBERT saved with transformers, with a 2-stage conv front-end
    (hop 320 at 16 kHz, like the real one): an offline stand-in for a Hub speech SSL model."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16, 16), conv_stride=(5, 64), conv_kernel=(10, 64),
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    folder = tmp_path_factory.mktemp("tiny_hubert")
    HubertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_codec_folder(tmp_path_factory) -> Path:
    """A tiny randomly initialised RVQ codec (4 codebooks of 32 codes, 50 frames/s) as a Hub folder."""
    from mmtok.codecs.rvq import RVQCodec

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_codec")
    RVQCodec(encoder_channels=4, decoder_channels=16, latent_dim=16, codebook_size=32, num_quantizers=4,
             kmeans_init=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokens(tiny_corpus, tiny_codec_folder, tmp_path_factory) -> Path:
    """The tiny corpus tokenized by the tiny codec (a token cache folder)."""
    from mmtok.data.tokens import tokenize_corpus

    return tokenize_corpus(str(tiny_codec_folder), tiny_corpus, tmp_path_factory.mktemp("tiny_tokens"),
                           progress=False)


def tiny_codec_args(corpus: Path, run_dir: Path, *, max_steps: int, adversarial_start_step: int = 0,
                    val_check_interval: int = 10, recipe: Path = RECIPE) -> list[str]:
    """`mmtok fit` arguments: a real speech codec recipe shrunk to a model that trains in seconds."""
    codec = "--model.init_args.codec.init_args."
    return [
        "fit", "-c", str(recipe),
        "--data.init_args.path", str(corpus), "--data.init_args.build_embedded", "false",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
        "--data.init_args.crop_seconds", "0.25", "--data.init_args.max_valid_items", "2",
        codec + "encoder_channels", "4", codec + "decoder_channels", "32", codec + "latent_dim", "16",
        codec + "codebook_size", "32", codec + "num_quantizers", "4",
        "--model.init_args.eval_quantizers", "[1, 4]",
        "--model.init_args.discriminator", "mmtok.codecs.discriminators.MultiPeriodDiscriminator",
        "--model.init_args.discriminator.init_args.channels", "[4, 8, 16, 16]",
        "--model.init_args.discriminator.init_args.max_channels", "16",
        "--model.init_args.adversarial_start_step", str(adversarial_start_step),
        "--model.init_args.num_logged_examples", "1", "--model.init_args.lr", "0.003",
        "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(val_check_interval),
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.name", "csv",
    ]


def cli_error(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``mmtok argv`` expecting it to fail: (exit status, its one line on stderr), checking that
    the error is one line and no traceback."""
    from mmtok.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("mmtok ")]
    assert len(lines) == 1 and "Traceback" not in err, err  # progress bars of loaders may precede it
    return exit_info.value.code, lines[0]


def tiny_moving_digits(folder: Path) -> tuple[Path, Path]:
    """(24 one-digit clips of 5-9 frames at 32 x 32, a tiny random digit judge's Hub folder) under ``folder``."""
    from mmtok.data.video import build_moving_digits
    from mmtok.judges.digits import DigitClassifier

    torch.manual_seed(0)
    corpus = folder / "clips"
    build_moving_digits(corpus, num_clips=24, frame_size=32, min_frames=5, max_frames=9, max_digits=1,
                        video_format="npz", source="sklearn", progress=False)
    DigitClassifier(widths=[4, 8]).save_pretrained(folder / "judge")
    return corpus, folder / "judge"


def fit_tiny_cvivit(corpus: Path, judge: Path, run: Path, *, max_steps: int, lr: float = 0.003,
                    overrides: tuple[str, ...] = ()) -> None:
    """`mmtok fit` of the C-ViViT recipe at tiny size on :func:`tiny_moving_digits`, CSV-logged to ``run``
    (``overrides``: more command-line arguments)."""
    from mmtok.cli import main

    tokenizer = "--model.init_args.tokenizer.init_args."
    main(["fit", "-c", str(REPO / "recipes" / "codec" / "cvivit_moving_digits.yaml"),
          "--data.init_args.path", str(corpus), "--data.init_args.build_embedded", "false",
          "--data.init_args.frame_size", "32", "--data.init_args.num_frames", "9", "--data.init_args.batch_size", "4",
          "--data.init_args.valid_batch_size", "4", "--data.init_args.max_valid_items", "4",
          tokenizer + "frame_size", "32", tokenizer + "patch_size", "8", tokenizer + "dim", "32",
          tokenizer + "num_heads", "2", tokenizer + "spatial_layers", "1", tokenizer + "temporal_layers", "1",
          tokenizer + "fsq_levels", "[4, 4, 2]", "--model.init_args.perceptual_network", str(judge),
          "--model.init_args.perceptual_frames", "8", "--model.init_args.warmup_steps", "2",
          "--model.init_args.lr_decay_steps", str(max_steps), "--model.init_args.lr", str(lr),
          "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(max(1, max_steps // 2)),
          "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.default_root_dir", str(run), "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "csv", *overrides])


@pytest.fixture(scope="session")
def digits16(tmp_path_factory) -> Path:
    """200 real digits (scikit-learn's, upscaled to 16 x 16) with labels and captions."""
    from mmtok.data.images import build_digits_corpus

    folder = tmp_path_factory.mktemp("tiny_digits")
    build_digits_corpus(folder, source="sklearn", image_size=16, resize="upscale", max_per_class=20, progress=False)
    return folder


@pytest.fixture(scope="session")
def grid_tokenizer(digits16, tmp_path_factory) -> Path:
    """A tiny VQ image tokenizer (16 x 16 -> a 4 x 4 grid, 2 codebooks of 16), its codebooks
    k-means-initialised on real digits, as a Hub folder."""
    from mmtok.codecs.vq_image import VQImageTokenizer
    from mmtok.data.images import ImageDataModule

    torch.manual_seed(0)
    model = VQImageTokenizer(image_size=16, channels=1, block_channels=(8, 8, 8), norm_groups=4, latent_dim=8,
                             num_quantizers=2, codebook_size=16)
    module = ImageDataModule(path=str(digits16), channels=1, image_size=16, batch_size=64)
    module.setup("fit")
    with torch.no_grad():
        model.train()(next(iter(module.train_dataloader()))["image"])
    folder = tmp_path_factory.mktemp("tiny_vq")
    model.eval().save_pretrained(folder)
    return folder


def grid_generator(tokenizer: Path, **overrides):
    """A tiny class-conditional AR generator over ``grid_tokenizer``'s 4 x 4 grid of 2 codebooks of 16."""
    from mmtok.ar.model import ARGenerator
    from mmtok.codebook_transformer import CodebookTransformer

    torch.manual_seed(0)
    backbone = CodebookTransformer(codebook_sizes=[16, 16], dim=32, num_layers=2, num_heads=2, position_axes=2)
    options = dict(tokenizer=str(tokenizer), backbone=backbone, pattern="parallel", positions="aligned", grid=(4, 4),
                   conditions=[{"type": "class", "key": "label", "classes": 10}],
                   task={"class_path": "mmtok.tasks.images.ClassToImage"})
    return ARGenerator(**{**options, **overrides})
