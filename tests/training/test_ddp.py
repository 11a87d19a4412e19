"""Every training module under DDP on CPU: two processes (gloo) through the installed `mmtok` script,
each seeing its own share of the data and ending with the same weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_codec_args
from test_generator_training import tiny_ar_folder, tiny_tts_args

TESTS = Path(__file__).resolve().parents[1]


def short_run(run: Path, steps: int) -> list[str]:
    """`steps` training steps into ``run``, no validation, no logger."""
    return ["--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--trainer.default_root_dir",
            str(run), "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger", "false"]


def run_ddp(args: list[str], probe: Path) -> list[dict]:
    """`mmtok fit ARGS` on 2 CPU processes; what each rank saw (see ddp_probe.py)."""
    probe.mkdir(parents=True, exist_ok=True)
    script = shutil.which("mmtok", path=os.path.dirname(sys.executable))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMTOK_DDP_PROBE": str(probe),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    ddp = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy",
           "ddp_find_unused_parameters_true", "--trainer.callbacks+=ddp_probe.RecordRank"]
    done = subprocess.run([script, *args, *ddp], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((probe / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def assert_shared_out_and_in_step(ranks: list[dict]) -> None:
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    first, second = (set(rank["items"]) for rank in ranks)
    assert first and second and not first & second, "the two processes saw different items"
    assert ranks[0]["weights"] == ranks[1]["weights"], "gradients were averaged: both end with the same parameters"


def test_codec(tiny_corpus, tmp_path):
    # 2 batches (the second with the GAN: 2 optimizer steps); a third would reach the item that
    # DistributedSampler repeats to give both processes as many
    ranks = run_ddp(tiny_codec_args(tiny_corpus, tmp_path, max_steps=3, adversarial_start_step=1), tmp_path / "probe")
    assert_shared_out_and_in_step(ranks)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_codec_from_shards(tiny_corpus, tmp_path):
    from mmtok.data.shards import write_shards

    shards = write_shards(tiny_corpus, tmp_path / "shards")
    ranks = run_ddp(tiny_codec_args(shards, tmp_path, max_steps=3, adversarial_start_step=1), tmp_path / "probe")
    assert_shared_out_and_in_step(ranks)
    assert len(ranks[0]["items"]) == len(ranks[1]["items"]) == 8, "litdata: equal batches on every rank"


@pytest.mark.parametrize("recipe", ["ar_rvq_speech.yaml", "mdm_xcodec_speech.yaml"])
def test_generators(recipe, tiny_corpus, tiny_codec_folder, tiny_tokens, tmp_path):
    adapt_from = tiny_ar_folder(tiny_corpus, tiny_codec_folder, tmp_path / "ar") if recipe.startswith("mdm") else None
    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_tokens, tokens)  # the processes read the cache, none builds it
    args = tiny_tts_args(REPO / "recipes" / "tts" / recipe, tiny_corpus, tiny_codec_folder, tokens, tmp_path,
                         max_steps=2, adapt_from=adapt_from)
    assert_shared_out_and_in_step(run_ddp(args, tmp_path / "probe"))


def test_image_tokenizer(digits16, tmp_path):
    from mmtok.judges.digits import DigitClassifier

    torch.manual_seed(0)
    DigitClassifier(widths=[4, 8]).save_pretrained(tmp_path / "judge")
    tokenizer = "--model.init_args.tokenizer.init_args."
    args = ["fit", "-c", str(REPO / "recipes" / "codec" / "vq_digits.yaml"),
            "--data.init_args.path", str(digits16), "--data.init_args.build_embedded", "false",
            "--data.init_args.image_size", "16", "--data.init_args.batch_size", "8",
            "--data.init_args.num_workers", "0", tokenizer + "image_size", "16",
            tokenizer + "block_channels", "[8, 16, 16]", tokenizer + "norm_groups", "4",
            tokenizer + "latent_dim", "8", tokenizer + "codebook_size", "32",
            "--model.init_args.perceptual_network", str(tmp_path / "judge"),
            "--model.init_args.discriminator.init_args.channels", "8", "--model.init_args.adversarial_start_step", "1",
            "--model.init_args.warmup_steps", "1", "--model.init_args.lr_decay_steps", "4",
            *short_run(tmp_path, 3)]
    assert_shared_out_and_in_step(run_ddp(args, tmp_path / "probe"))


def test_phoneme_recognizer(tiny_corpus, tmp_path):
    recognizer = "--model.init_args.recognizer.init_args."
    args = ["fit", "-c", str(REPO / "recipes/asr/phonemes_speech.yaml"),
            "--data.init_args.path", str(tiny_corpus), "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", "4", "--data.init_args.build_embedded", "false",
            recognizer + "phonemes", str(tiny_corpus), recognizer + "dim", "32", recognizer + "num_layers", "1",
            recognizer + "num_heads", "2", "--model.init_args.warmup_steps", "1",
            *short_run(tmp_path, 2)]
    assert_shared_out_and_in_step(run_ddp(args, tmp_path / "probe"))


def test_speaker_encoder(tiny_corpus, tmp_path):
    encoder = "--model.init_args.encoder.init_args."
    args = ["fit", "-c", str(REPO / "recipes/judges/speaker_encoder.yaml"),
            "--data.init_args.path", str(tiny_corpus), "--data.init_args.build_embedded", "false",
            "--data.init_args.batch_size", "4", "--data.init_args.crop_seconds", "1.0",
            "--data.init_args.num_workers", "0",
            encoder + "speakers", str(tiny_corpus), encoder + "channels", "16", encoder + "dilations", "[2]",
            encoder + "pool_channels", "16", encoder + "embedding_dim", "8", encoder + "n_mels", "16",
            "--model.init_args.warmup_steps", "1", "--model.init_args.min_crop_seconds", "0.5",
            "--model.init_args.max_crop_seconds", "1.0", "--model.init_args.margin_warmup_steps", "1",
            *short_run(tmp_path, 2)]
    assert_shared_out_and_in_step(run_ddp(args, tmp_path / "probe"))


def test_digit_classifier(digits16, tmp_path):
    classifier = "--model.init_args.classifier.init_args."
    args = ["fit", "-c", str(REPO / "recipes/judges/digit_classifier.yaml"),
            "--data.init_args.path", str(digits16), "--data.init_args.build_embedded", "false",
            "--data.init_args.image_size", "16", "--data.init_args.num_workers", "0", "--data.init_args.batch_size",
            "16", classifier + "widths", "[8, 16]", "--model.init_args.warmup_steps", "1",
            *short_run(tmp_path, 2)]
    assert_shared_out_and_in_step(run_ddp(args, tmp_path / "probe"))


def test_seed_tokenizer(tmp_path):
    from mmtok.data.images import build_digits_corpus

    digits = build_digits_corpus(tmp_path / "digits", source="sklearn", image_size=32, resize="upscale",
                                 max_per_class=4, progress=False).parent
    tiny = {"vit_dim": 32, "vit_layers": 1, "vit_heads": 2, "num_queries": 4, "dim": 32, "qformer_layers": 1,
            "num_heads": 2, "embed_dim": 16, "codebook_size": 16, "codebook_dim": 8, "unet_channels": [16, 16],
            "unet_attention": [False, True], "unet_head_dim": 8, "unet_norm_groups": 8}
    tokenizer = [f"--model.init_args.tokenizer.init_args.{key}={json.dumps(value)}" for key, value in tiny.items()]
    args = ["fit", "-c", str(REPO / "recipes/codec/seed_digits_stage1.yaml"), "--data.init_args.path", str(digits),
            "--data.init_args.build_embedded", "false", "--data.init_args.batch_size", "8", *tokenizer,
            *short_run(tmp_path, 2)]
    assert_shared_out_and_in_step(run_ddp(args, tmp_path / "probe"))


def test_distilled_decoding_student(grid_tokenizer, tmp_path):
    from conftest import grid_generator
    from mmtok.hub import load_pretrained

    teacher = grid_generator(grid_tokenizer).eval()
    teacher.record_token_facts(load_pretrained(grid_tokenizer))
    teacher.save_pretrained(tmp_path / "teacher")
    args = ["fit", "-c", str(REPO / "recipes" / "distill" / "dd_digits.yaml"),
            "--model.init_args.teacher", str(tmp_path / "teacher"), "--model.init_args.vector_dim", "4",
            "--model.init_args.warmup_steps", "1", "--data.init_args.pairs", str(tmp_path / "pairs"),
            "--data.init_args.teacher", str(tmp_path / "teacher"), "--data.init_args.count", "96",
            "--data.init_args.shard_size", "48", "--data.init_args.vector_dim", "4", "--data.init_args.flow_steps", "8",
            "--data.init_args.valid_count", "16", "--data.init_args.batch_size", "8", *short_run(tmp_path, 2)]
    assert_shared_out_and_in_step(run_ddp(args, tmp_path / "probe"))
