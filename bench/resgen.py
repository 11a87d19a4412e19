"""ResGen against the AR generator (delay pattern) and masked diffusion (first-hitting sampler: one call
per token, whatever the pattern) on the same tokens: network calls, wall time and quality, in one run
(issue 20).

Every ``--model NAME=FOLDER`` is a generator Hub folder over the same residual tokenizer and task.
A ResGen generator is sampled at each of ``--resgen-steps`` (default 8 16 32), the others with their
recorded sampler (``--sampler NAME=SAMPLER`` overrides one, e.g. ``mdm=fhs``). Quality is what the
task's ``evaluate`` measures: for images the judge's accuracy and the Fréchet distance to the train
images (next to the floor, real test images, and the ceiling, the tokenizer's reconstructions); for
speech the phoneme error rate and the duration ratio. "Network calls" are the forward passes of the
last batch, as each generator counts them (``last_stats``): one per KV-cached pattern step for AR (its
guidance doubles the batch, not the calls), one per step for ResGen and one per revealed token for the
first-hitting sampler, both doubled by guidance (a conditional and an unconditional pass).

    python bench/resgen.py --model resgen=checkpoints/digits-resgen --model ar=runs/.../ar-delay \\
        --model mdm=runs/.../mdm --sampler mdm=fhs --judge checkpoints/digit-classifier \\
        --data data/digits --samples-per-class 20
"""

from __future__ import annotations

import argparse

import torch

from common import named_folders, publish
from image_generators import describe_sampling
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table
from mmtok.tasks import build_task

SECTION = "## ResGen against AR and masked diffusion (bench/resgen.py)"


def settings(generator, name: str, args, samplers: dict) -> list[dict]:
    """The sampling settings to measure a generator with: ResGen at every step count, others once."""
    if "resgen" in generator.samplers:
        return [generator.sampling_with(sampler="resgen", steps=steps) for steps in args.resgen_steps]
    return [generator.sampling_with(sampler=samplers.get(name))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--sampler", action="append", default=[], metavar="NAME=SAMPLER",
                        help="the sampler of a non-ResGen model (default: its recorded one)")
    parser.add_argument("--resgen-steps", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--judge", required=True, help="digit classifier (images) or phoneme recognizer (speech)")
    parser.add_argument("--data", required=True, help="the corpus the task evaluates on (its test split)")
    parser.add_argument("--samples-per-class", type=int, default=20, help="images: samples per class")
    parser.add_argument("--max-items", type=int, default=None, help="speech: test utterances (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--cards", action="store_true")
    args = parser.parse_args()
    models = named_folders(parser, args.model, "--model")
    samplers = {name: str(value) for name, value in named_folders(parser, args.sampler, "--sampler").items()}
    judge = load_pretrained(args.judge)
    rows, seen = [], set()
    for name, folder in models.items():
        generator = load_pretrained(folder)
        tokenizer = generator.load_tokenizer(near=folder)
        task = build_task(generator.task, source=str(folder))
        for sampling in settings(generator, name, args, samplers):
            given = {} if args.max_items is None else {"max_items": args.max_items}  # images score every image
            measured = task.evaluate(generator, tokenizer, judge, args.data, samples_per_request=args.samples_per_class,
                                     rng=torch.Generator().manual_seed(args.seed), **given, **sampling)
            for row in measured:
                rows.extend(describe(row, name, generator, sampling, seen))
    publish(f"`{args.data}` test split; judge `{args.judge}`; seed {args.seed}.\n\n" + markdown_table(rows) + "\n",
            out=args.out, folders=list(models.values()), section=SECTION, cards=args.cards)


def describe(row: dict, name: str, generator, sampling: dict, seen: set) -> list[dict]:
    """Table rows of a measured row: the generated one, and a reference (floor, ceiling) the first time."""
    calls = getattr(generator, "last_stats", {}).get("denoiser_calls", "-")  # of the last batch
    if "images" in row:
        if not row["images"].startswith("generated"):
            if row["images"] in seen:
                return []
            seen.add(row["images"])
            return [{"model": "-", "sampling": row["images"], "network calls": "-", "seconds": "-",
                     "count": row["count"], "accuracy": row["accuracy"], "frechet_distance": row["frechet_distance"]}]
        return [{"model": name, "sampling": describe_sampling(sampling), "network calls": calls,
                 "seconds": row["seconds"], "count": row["count"], "accuracy": row["accuracy"],
                 "frechet_distance": row["frechet_distance"]}]
    return [{"model": name, "sampling": describe_sampling(sampling), "mode": row["mode"], "network calls": calls,
             "seconds": row["generation_s"], "utterances": row["utterances"], "per": row["per"],
             "duration_ratio": row["duration_ratio"]}]


if __name__ == "__main__":
    main()
