"""What runs at scale, checked where this machine allows: bf16 mixed precision on CPU, the FSDP recipe
(Lightning builds FSDP on CUDA only) and the one-shot GPU check script on CPU."""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from mmtok.cli import main
from test_generator_training import tiny_tts_args


def _losses(run: Path) -> list[float]:
    with open(next(run.glob("csv/*/metrics.csv"))) as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


def test_a_generator_recipe_trains_in_bf16_mixed_precision(tiny_corpus, tiny_codec_folder, tiny_tokens, tmp_path):
    tokens = tmp_path / "tokens"
    shutil.copytree(tiny_tokens, tokens)
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        run = tmp_path / precision
        main(tiny_tts_args(REPO / "recipes" / "tts" / "ar_rvq_speech.yaml", tiny_corpus, tiny_codec_folder, tokens,
                           run, max_steps=4) + ["--trainer.precision", precision])
        losses[precision] = _losses(run)
    assert all(math.isfinite(loss) for loss in losses["bf16-mixed"]) and len(losses["bf16-mixed"]) == 4
    assert losses["bf16-mixed"][0] == pytest.approx(losses["32-true"][0], rel=0.05), "the same model and batch"
    assert losses["bf16-mixed"] != losses["32-true"], "bf16 autocast changed the arithmetic"


def test_the_fsdp_recipe_parses_and_its_strategy_builds():
    from lightning.pytorch.strategies import FSDPStrategy

    from mmtok.codebook_transformer import CodebookTransformer
    from mmtok.nn import TransformerBlock

    script = shutil.which("mmtok", path=os.path.dirname(sys.executable))
    done = subprocess.run([script, "fit", "-c", str(REPO / "recipes/tts/ar_xcodec_speech.yaml"),
                           "-c", str(REPO / "recipes/scale/fsdp_bf16.yaml"), "--trainer.devices", "8",
                           "--print_config"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    trainer = yaml.safe_load(done.stdout)["trainer"]
    assert trainer["precision"] == "bf16-mixed" and str(trainer["devices"]) == "8"
    strategy = trainer["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    options = strategy["init_args"]
    assert options["auto_wrap_policy"] == options["activation_checkpointing_policy"] == ["mmtok.nn.TransformerBlock"]
    built = FSDPStrategy(auto_wrap_policy={TransformerBlock}, activation_checkpointing_policy={TransformerBlock},
                         sharding_strategy=options["sharding_strategy"], state_dict_type=options["state_dict_type"])
    assert built.sharding_strategy.name == "FULL_SHARD" and built._state_dict_type == "full"
    backbone = CodebookTransformer(codebook_sizes=[32, 32], dim=32, num_layers=3, num_heads=2)
    assert sum(isinstance(module, TransformerBlock) for module in backbone.modules()) == 3, "the units FSDP wraps"


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu(tiny_corpus, tmp_path):
    from mmtok.data.images import build_digits_corpus

    digits = build_digits_corpus(tmp_path / "digits", source="sklearn", image_size=32, resize="upscale",
                                 max_per_class=10, progress=False).parent
    table = tmp_path / "table.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu",
                           "--precision", "32-true", "--train-steps", "2", "--seconds", "2", "--batch", "2",
                           "--speech", str(tiny_corpus), "--digits", str(digits), "--tokens", str(tmp_path / "tokens"),
                           "--work", str(tmp_path / "work"), "--out", str(table)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 + 2 + 3 + 4, rows
    for name in ("real time", "tokens/s", "images/s", "samples/s"):
        assert any(name in row for row in rows), name
    assert all(float(row.split("|")[2].split()[0].rstrip("x")) > 0 for row in rows)
