"""Class-conditional image generators side by side: the judge's accuracy and the Fréchet distance of
their samples, with images/s, denoiser calls and time, in one run.

For each generator (a Hub folder with a class-to-image task) and each sampler asked for, 100 samples
per class (``--samples-per-class``) are drawn and read by the judge (the digit classifier): its
accuracy (overall and per class) and the Fréchet distance to the real train images in the judge's
feature space, next to the floor (the real test images against the train images) and the ceiling
(the tokenizer's own reconstructions of the test images against the train images). The targets of
issue 13: accuracy ≥ 95 % and a Fréchet distance within 3× that of the reconstructions. Each
generator samples with its recorded settings (``mmtok export --sampling``) unless a flag says otherwise.
The Fréchet distance of 1,000 samples moves by about 0.01 between seeds, so ``--seed`` takes several: the
table is the first seed's, and a second table gives each generator's accuracy and distance per seed with
their mean and its standard error.

    python bench/image_generators.py --model ar=checkpoints/digits-ar --model mdm=checkpoints/digits-mdm \\
        --judge checkpoints/digit-classifier --data data/digits --samplers fhs maskgit ancestral
"""

from __future__ import annotations

import argparse

import torch

from common import named_folders, publish
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table
from mmtok.tasks import build_task

SECTION = "## Samples judged (bench/image_generators.py)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--judge", required=True, help="digit classifier Hub folder")
    parser.add_argument("--data", default="data/digits")
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--samplers", nargs="+", default=["fhs", "maskgit", "ancestral"],
                        help="samplers for masked diffusion generators (an AR generator has its own)")
    parser.add_argument("--steps", type=int, default=None, help="maskgit / ancestral steps (default: 16 / L)")
    parser.add_argument("--temperature", type=float, help="default: each generator's recorded setting, else 1")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--cfg-scale", type=float, help="default: each generator's recorded setting, else 1")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="one or more seeds: the table is the first's; with more, a table of the spread")
    parser.add_argument("--out")
    parser.add_argument("--cards", action="store_true")
    args = parser.parse_args()
    args.seed = list(dict.fromkeys(args.seed))  # a seed given twice would give the spread table one column for two
    models = named_folders(parser, args.model, "--model")
    judge = load_pretrained(args.judge)
    rows, seen, spread = [], set(), {}
    for name, folder in models.items():
        generator = load_pretrained(folder)
        tokenizer = generator.load_tokenizer(near=folder)
        task = build_task(generator.task, source=str(folder))
        samplers = [s for s in args.samplers if s in generator.samplers] or [generator.samplers[0]]
        for sampler in samplers:
            steps = args.steps if sampler in ("maskgit", "ancestral") else None
            sampling = generator.sampling_with(sampler=sampler, steps=steps, temperature=args.temperature,
                                               top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale)
            for seed in args.seed:
                measured = task.evaluate(generator, tokenizer, judge, args.data,
                                         samples_per_request=args.samples_per_class,
                                         rng=torch.Generator().manual_seed(seed), **sampling)
                generated = next(row for row in measured if row["images"].startswith("generated"))
                spread.setdefault((name, describe_sampling(sampling)), []).append(generated)
                if seed == args.seed[0]:
                    add_rows(rows, seen, measured, name, sampler, sampling, generator)
    summary = ["model", "images", "sampling", "count", "accuracy", "frechet_distance", "images_per_s", "seconds",
               "denoiser_calls"]
    table = [{k: row.get(k, "-") for k in summary} for row in rows]
    per_class = [{"model": row["model"], "images": row["images"],
                  **{k: v for k, v in row.items() if k.startswith("accuracy_")}} for row in rows if "accuracy_0" in row]
    seeds = " ".join(map(str, args.seed))
    text = (f"`{args.data}` test split; judge `{args.judge}`; {args.samples_per_class} samples per class, seed "
            f"{args.seed[0]}; Fréchet distances to the train images.\n\n" + markdown_table(table)
            + "\n\nJudge accuracy per class of the generated samples:\n\n" + markdown_table(per_class) + "\n")
    if len(args.seed) > 1:
        text += (f"\nThe same over seeds {seeds} (accuracy / Fréchet distance per seed; mean ± standard error):\n\n"
                 + markdown_table(spread_rows(spread, args.seed)) + "\n")
    publish(text, out=args.out, folders=list(models.values()), section=SECTION, cards=args.cards)


def add_rows(rows: list[dict], seen: set, measured: list[dict], name: str, sampler: str, sampling: dict,
             generator) -> None:
    """The rows of one evaluation that the table does not hold yet: the floor once, the ceiling once per
    tokenizer (and codebooks drawn), each generated row."""
    for row in measured:
        generated = row["images"].startswith("generated")
        ceiling = row["images"].startswith("tokenizer")
        drawn = (generator.tokenizer_id, generator.num_codebooks) if ceiling else ""
        key = (name, sampler) if generated else (row["images"], drawn)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"model": name if generated or ceiling else "-", **row,
                     "sampling": describe_sampling(sampling) if generated else "-"})


def spread_rows(spread: dict, seeds: list[int]) -> list[dict]:
    """One row per (model, sampling): accuracy / Fréchet distance for each seed, then the means with the
    distance's standard error (its standard deviation over the seeds / √seeds)."""
    out = []
    for (name, sampling), rows in spread.items():
        distances = torch.tensor([row["frechet_distance"] for row in rows], dtype=torch.float64)
        accuracy = sum(row["accuracy"] for row in rows) / len(rows)
        error = float(distances.std() / len(rows) ** 0.5)
        out.append({"model": name, "sampling": sampling,
                    **{f"seed {seed}": f"{row['accuracy']:.3f} / {row['frechet_distance']:.3f}"
                       for seed, row in zip(seeds, rows)},
                    "mean accuracy": f"{accuracy:.3f}",
                    "mean Fréchet distance": f"{float(distances.mean()):.3f} ± {error:.3f}"})
    return out


def describe_sampling(sampling: dict) -> str:
    """``{"sampler": "maskgit", "steps": None, "cfg_scale": 3.0}`` -> ``"maskgit, cfg_scale 3.0"``."""
    rest = [f"{key} {value}" for key, value in sampling.items() if key != "sampler" and value is not None]
    return ", ".join([sampling["sampler"], *rest])


if __name__ == "__main__":
    main()
