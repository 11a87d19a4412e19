"""Distilled Decoding side by side with its AR teacher, in one run: network passes per image, images/s
at batch 1 and 64 (and the ratio to the teacher's), the judge's accuracy and the Fréchet distance of
``--samples-per-class`` samples per class, next to the floor (real test vs train images) and the
ceiling (the tokenizer's reconstructions).

Rows: the teacher (its recorded sampling, KV cache), each student at 1 and 2 steps, the naive one-step
baseline. Speed counts token generation alone (the same VQ decoder turns every row's tokens into
pixels; its own images/s is printed below the table), after one warm-up call.

    python bench/distilled_decoding.py --teacher checkpoints/digits-ar --student dd=checkpoints/digits-dd \\
        --naive runs/distill/naive_hub --judge checkpoints/digit-classifier --data data/digits
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from common import named_folders, publish
from mmtok.hub import load_pretrained, weights_digest
from mmtok.media import markdown_table
from mmtok.tasks import build_task

SECTION = "## Distilled Decoding (bench/distilled_decoding.py)"


def images_per_second(generator, *, batch_size: int, images: int, seed: int, **sampling) -> float:
    """Images/s of token generation for a whole grid per image, ``batch_size`` at a time (after a
    warm-up batch), each with a class label."""
    condition = next(c for c in generator.conditioner.conditions if hasattr(c, "classes"))
    frames = math.prod(generator.grid)
    rng = torch.Generator().manual_seed(seed)

    def batch(count: int):
        labels = [condition.classes[i % len(condition.classes)] for i in range(count)]
        generator.generate({condition.key: labels}, lengths=torch.full((count,), frames), rng=rng, **sampling)

    batch(batch_size)
    batches = max(1, images // batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        batch(batch_size)
    return batches * batch_size / (time.perf_counter() - started)


@torch.no_grad()
def first_step_check(teacher, pairs: str, *, seed: int) -> list[dict]:
    """Per class: the total variation between the first step's tokens in the pairs and the teacher's
    guided, tempered distribution at that step (which depends on the class alone), next to that of as
    many categorical draws from the same distribution (the sampling noise the flow must match)."""
    from mmtok.distill.pairs import read_pairs
    from mmtok.sampling import classifier_free_guidance, process_logits

    info, _, codes, conditions = read_pairs(pairs)
    sampling = info["sampling"]
    key = next(iter(conditions))
    rng = torch.Generator().manual_seed(seed)
    start = torch.tensor(teacher.backbone.special_ids)[None, :, None]
    coordinates = teacher.coordinates(torch.arange(1))
    rows = []
    for name in sorted(set(conditions[key])):
        chosen = torch.tensor([value == name for value in conditions[key]])
        logits = []
        for null in (False, True):
            prefix = teacher.prefix({} if null else {key: [name]}, batch_size=1, null=null)
            logits.append(teacher.backbone(start, prefix=prefix,
                                           positions=teacher.full_positions(prefix, coordinates, 1))[0, :, 0])
        guided = classifier_free_guidance(logits[0], logits[1], sampling.get("cfg_scale", 1.0))
        probs = process_logits(guided, temperature=sampling.get("temperature", 1.0), top_k=sampling.get("top_k"),
                               top_p=sampling.get("top_p")).double().softmax(-1)  # [Q, V]
        count = int(chosen.sum())
        row = {"class": name, "pairs": count}
        for q in range(teacher.num_codebooks):
            size = teacher.codebook_sizes[q]
            drawn = torch.multinomial(probs[q, :size].float(), count, replacement=True, generator=rng)
            row[f"tv_flow_q{q}"] = total_variation(codes[chosen, q, 0], probs[q, :size])
            row[f"tv_draws_q{q}"] = total_variation(drawn, probs[q, :size])
        rows.append(row)
    return rows


def flow_step_check(*, seed: int, count: int = 100000) -> list[dict]:
    """The flow's total variation to p on a random 16-token, 4-d codebook (p of logit scale 2) for 16, 32
    and 64 steps, next to that of ``count`` categorical draws (the floor a finite sample sets)."""
    from mmtok.distill.flow import token_flow

    rng = torch.Generator().manual_seed(seed)
    vectors, logits = torch.randn(16, 4, generator=rng), torch.randn(16, generator=rng) * 2
    noise = torch.randn(count, 4, generator=rng)
    probs = logits.double().softmax(-1)
    rows = [{"flow steps": steps, "total variation": total_variation(
        token_flow(noise, logits.expand(count, -1), vectors, steps=steps), probs)} for steps in (16, 32, 64)]
    drawn = torch.multinomial(probs.float(), count, replacement=True, generator=rng)
    return rows + [{"flow steps": f"{count} categorical draws", "total variation": total_variation(drawn, probs)}]


def total_variation(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    frequencies = torch.bincount(tokens, minlength=len(probs)).double() / len(tokens)
    return 0.5 * float((frequencies - probs).abs().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the AR teacher's Hub folder")
    parser.add_argument("--student", action="append", default=[], metavar="NAME=FOLDER", help="a distilled student")
    parser.add_argument("--naive", help="the naive one-step baseline's Hub folder")
    parser.add_argument("--pairs", help="the students' pairs folder: checks the flow on the teacher's first step")
    parser.add_argument("--judge", required=True, help="digit classifier Hub folder")
    parser.add_argument("--data", default="data/digits")
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--speed-images", type=int, default=64, help="images timed at batch 1 (x4 at batch 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    parser.add_argument("--cards", action="store_true", help="also write the table into the students' cards")
    args = parser.parse_args()
    students = named_folders(parser, args.student, "--student") if args.student else {}
    judge = load_pretrained(args.judge)
    teacher = load_pretrained(args.teacher)
    tokenizer = teacher.load_tokenizer(near=args.teacher)
    task = build_task(teacher.task, source=args.teacher)
    entries = [("teacher AR (KV cache)", teacher, teacher.sampling_with())]
    notes = []
    for name, folder in students.items():
        student = load_pretrained(folder)
        if student.teacher_weights not in (None, weights_digest(args.teacher)):
            notes.append(f"Student `{folder}` was distilled from other weights than `{args.teacher}` holds now "
                         "(its recorded teacher_weights differ): it is not this teacher's student.")
            print(notes[-1], file=sys.stderr)
        entries += [(f"{name}: DD {steps} step{'s' * (steps > 1)}", student, student.sampling_with(steps=steps))
                    for steps in (1, 2)]
    if args.naive:
        naive = load_pretrained(args.naive)
        entries.append(("naive one-step", naive, naive.sampling_with()))
    rows, speeds = [], {}
    for label, generator, sampling in entries:
        measured = task.evaluate(generator, tokenizer, judge, args.data, samples_per_request=args.samples_per_class,
                                 rng=torch.Generator().manual_seed(args.seed), **sampling)
        if not rows:  # the floor and the ceiling, once
            rows += [{"generator": "-", **row} for row in measured[:2]]
        generated = measured[-1]
        speed = {size: images_per_second(generator, batch_size=size, images=args.speed_images * (1 if size == 1 else 4),
                                         seed=args.seed, **sampling) for size in (1, 64)}
        speeds.setdefault("teacher", speed)
        passes = (f"{teacher.pattern.num_steps(teacher.num_codebooks, math.prod(teacher.grid))} (KV cache)"
                  if generator is teacher else str(sampling.get("steps", 1)))
        rows.append({"generator": label, "images": generated["images"], "count": generated["count"],
                     "passes": passes, "images_per_s_batch_1": speed[1], "images_per_s_batch_64": speed[64],
                     "speedup_batch_1": speed[1] / speeds["teacher"][1],
                     "speedup_batch_64": speed[64] / speeds["teacher"][64],
                     "accuracy": generated["accuracy"], "frechet_distance": generated["frechet_distance"],
                     **{k: v for k, v in generated.items() if k.startswith("accuracy_")}})
    summary = ["generator", "images", "count", "passes", "images_per_s_batch_1", "images_per_s_batch_64",
               "speedup_batch_1", "speedup_batch_64", "accuracy", "frechet_distance"]
    table = [{k: row.get(k, "-") for k in summary} for row in rows]
    per_class = [{"generator": row["generator"], **{k: v for k, v in row.items() if k.startswith("accuracy_")}}
                 for row in rows if "accuracy_0" in row]
    frames = math.prod(tokenizer.grid)
    codes = torch.zeros(64, teacher.num_codebooks, frames, dtype=torch.long)
    started = time.perf_counter()
    with torch.no_grad():
        tokenizer.decode(teacher.tokens(codes, torch.full((64,), frames)))
    decode = 64 / (time.perf_counter() - started)
    text = (f"Teacher `{args.teacher}` ({describe(teacher.sampling_with())}); `{args.data}` test split; judge "
            f"`{args.judge}`; {args.samples_per_class} samples per class, seed {args.seed}; Fréchet distances to "
            f"the train images; {torch.get_num_threads()} thread(s). Images/s count token generation; the "
            f"tokenizer decodes {decode:.0f} images/s at batch 64 for every row alike.\n\n" + markdown_table(table)
            + "\n\nJudge accuracy per class:\n\n" + markdown_table(per_class) + "\n")
    text += "".join(f"\n{note}\n" for note in notes)
    text += ("\nThe flow's steps (DPM-Solver++(2M)) on a random 16-token codebook, 100,000 noises:\n\n"
             + markdown_table(flow_step_check(seed=args.seed)) + "\n")
    if args.pairs:
        text += ("\nThe flow on the teacher's first step (its distribution depends on the class alone): total "
                 f"variation between the first tokens of `{args.pairs}` and the teacher's distribution, next to "
                 "as many categorical draws from it:\n\n"
                 + markdown_table(first_step_check(teacher, args.pairs, seed=args.seed)) + "\n")
    publish(text, out=args.out, folders=list(students.values()), section=SECTION, cards=args.cards)


def describe(sampling: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in sampling.items())


if __name__ == "__main__":
    main()
