"""Training throughput per recipe, two settings side by side in one run: ``--compare data`` (the default),
the map-style (manifest or token cache) and the streaming (litdata shards) data path; ``--compare
precision``, float32 and bf16 mixed precision (CPU autocast on a CPU: bf16 matrix products run on AMX
or AVX512-BF16 units where the CPU has them). Each recipe is fitted for ``--steps`` steps per setting
(`mmtok fit` in a subprocess, validation off) and the table gives the samples/s and batches/s that the
run itself logged (``train/samples_per_s`` of :class:`mmtok.training.callbacks.Throughput`, the mean of
the last half of the steps: data loading counted, start-up not) and their ratio to the first setting.

    python bench/training_throughput.py --steps 40 --threads 1 --out outputs/bench/throughput.md
    python bench/training_throughput.py --compare precision --steps 30 --threads 2
    python bench/training_throughput.py --device cuda --precision bf16-mixed   # on a GPU

Needs the corpora (`mmtok data speech --out data/speech`, `mmtok data digits --out data/digits`); the
digits token cache is built on first use by the generator recipes, the shards by this script.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mmtok.media import markdown_table

REPO = Path(__file__).resolve().parents[1]
DIGIT_TOKENS = "runs/images/tokens-vq-digits"
# name: (recipe, data option, map-style source)
RECIPES = {
    "rvq codec": ("recipes/codec/rvq_speech.yaml", "--data.init_args.path", "data/speech"),
    "vq image tokenizer": ("recipes/codec/vq_digits.yaml", "--data.init_args.path", "data/digits"),
    "AR digits": ("recipes/images/ar_digits.yaml", "--data.init_args.tokens", DIGIT_TOKENS),
    "MDM digits": ("recipes/images/mdm_digits.yaml", "--data.init_args.tokens", DIGIT_TOKENS),
    "MaskGIT video": ("recipes/video/maskgit_moving_digits.yaml", "--data.init_args.tokens",
                      "runs/video/tokens-cvivit-moving-digits-40k"),
}
DEFAULT_RECIPES = ["rvq codec", "vq image tokenizer", "AR digits", "MDM digits"]


def fit(recipe: str, overrides: list[str], run: Path, *, steps: int, device: str, precision: str,
        threads: int) -> list[dict]:
    """The metrics rows (the steps that logged a throughput) of a `mmtok fit` of ``steps`` steps."""
    shutil.rmtree(run, ignore_errors=True)
    args = [shutil.which("mmtok", path=os.path.dirname(sys.executable)), "fit", "-c", recipe, *overrides,
            "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
            "--trainer.log_every_n_steps", "1", "--trainer.accelerator", device, "--trainer.precision", precision,
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run),
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir", str(run), "--trainer.logger.init_args.name", "csv"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{recipe} {' '.join(overrides)} failed:\n{done.stderr[-2000:]}")
    with open(next(run.glob("csv/*/metrics.csv"))) as handle:
        return [row for row in csv.DictReader(handle) if row.get("train/samples_per_s")]


def data_overrides(option: str, source: str, *, shards: bool = False, corpus: str | None = None) -> list[str]:
    """The data options of a run reading ``source``: a corpus folder (not built), a token cache (built from
    ``corpus`` when given and missing) or token shards (read as they are)."""
    if option == "--data.init_args.path":
        return [option, str(source), "--data.init_args.build_embedded", "false"]
    if shards:
        return [option, str(source), "--data.init_args.tokenizer", "null", "--data.init_args.data", "null"]
    return [option, str(source)] + (["--data.init_args.data", str(corpus)] if corpus else [])


def rates(rows: list[dict], batch_size: int) -> tuple[float, float]:
    """(samples/s, batches/s): the mean over the last half of the logged steps."""
    tail = rows[len(rows) // 2:]
    samples = sum(float(row["train/samples_per_s"]) for row in tail) / len(tail)
    return samples, samples / batch_size


def batch_size(recipe: str) -> int:
    import yaml

    return int(yaml.safe_load((REPO / recipe).read_text())["data"]["init_args"]["batch_size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", help="with --compare data")
    parser.add_argument("--compare", choices=["data", "precision"], default="data")
    parser.add_argument("--recipes", nargs="*", default=DEFAULT_RECIPES, choices=list(RECIPES))
    parser.add_argument("--work", default="runs/bench/throughput", help="runs and shards go here")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()

    from mmtok.data.shards import write_shards

    work = REPO / args.work
    settings = ["map-style", "streaming"] if args.compare == "data" else ["32-true", "bf16-mixed"]
    table, shards = [], {}
    for name in args.recipes:
        recipe, option, source = RECIPES[name]
        if not (REPO / source).exists():
            raise SystemExit(f"{source}: missing; build it first (see the module docstring)")
        size = batch_size(recipe)
        measured = {}
        for setting in settings:
            data, precision = source, args.precision
            if setting == "streaming":
                if source not in shards:
                    started = time.perf_counter()
                    shards[source] = write_shards(REPO / source, work / f"shards-{Path(source).name}")
                    print(f"{source}: shards written in {time.perf_counter() - started:.1f} s", flush=True)
                data = str(shards[source])
            elif args.compare == "precision":
                precision = setting
            rows = fit(recipe, data_overrides(option, data, shards=setting == "streaming"),
                       work / f"{name.replace(' ', '-')}-{setting}", steps=args.steps, device=args.device,
                       precision=precision, threads=args.threads)
            measured[setting] = rates(rows, size)
            print(f"{name} ({setting}): {measured[setting][0]:.1f} samples/s", flush=True)
        base = measured[settings[0]][0]
        for setting, (samples, batches) in measured.items():
            table.append({"recipe": name, args.compare: setting, "batch": size, "samples/s": f"{samples:.1f}",
                          "batches/s": f"{batches:.2f}",
                          f"/ {settings[0]}": f"{samples / base:.2f}" if setting != settings[0] else ""})
    setup = args.precision if args.compare == "data" else "map-style data"
    text = (f"{args.steps} steps per run, {args.device}, {setup}, {args.threads} thread(s)\n\n"
            + markdown_table(table))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
