"""Text-to-video speed: frames per second of a Phenaki generator at each clip length, MaskGIT against
the first-hitting sampler (one denoiser call per token: the exact reference sampler) in the same run.

Clips of up to the generator's trained length (its task's ``longest``) are sampled at once; longer
ones (33 frames from a model trained on 17) are made by priming segments, as `mmtok generate` does, so
their time includes re-encoding each segment's last frames. Every clip is decoded to frames; the time
is from captions to decoded frames. ``time / maskgit-16`` is each row's time over MaskGIT with 16 steps
at the same length.

    python bench/video_generation.py --model checkpoints/phenaki-moving-digits [--frames 17 33] \
        [--steps 8 16 32] [--batch 8] [--fhs-frames 17] [--out docs/video_speed.md]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from mmtok.hub import load_pretrained
from mmtok.media import markdown_table
from mmtok.tasks import build_task

CAPTIONS = ["the digit 3 moves left", "a handwritten seven moving up", "the digit 0 moves down-right",
            "5 goes right", "the digit 8 moves up-left", "a handwritten one moving down", "2 goes down-left",
            "the digit 9 moves up-right"]


def timed(task, generator, tokenizer, captions: list[str], frames: int, **sampling) -> tuple[float, int]:
    """(seconds, denoiser calls of the last segment) to make ``len(captions)`` clips of ``frames`` frames."""
    rng = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    video = task.make(generator, tokenizer, [captions], frames=frames, prime_frames=task.prime_frames, rng=rng,
                      batch_size=len(captions), **sampling)
    seconds = time.perf_counter() - started
    assert video.shape[2] == frames, (video.shape, frames)
    return seconds, generator.last_stats["denoiser_calls"]


def segments(task, frames: int) -> int:
    """Primed segments of ``task.longest`` frames that make a clip of ``frames`` frames."""
    if frames <= task.longest:
        return 1
    return 1 + math.ceil((frames - task.longest) / (task.longest - task.prime_frames))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a text-to-video generator Hub folder")
    parser.add_argument("--tokenizer", help="its tokenizer (default: the one it names)")
    parser.add_argument("--frames", type=int, nargs="+", default=[17, 33])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32], help="MaskGIT step counts")
    parser.add_argument("--fhs-frames", type=int, nargs="*", default=[17], help="lengths also run with FHS")
    parser.add_argument("--batch", type=int, default=8, help="clips per run (captions cycle)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = load_pretrained(args.model).eval()
    tokenizer = generator.load_tokenizer(args.tokenizer, near=args.model)
    task = build_task(generator.task, source=f"{args.model}/config.json")
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch)]
    guidance = {k: v for k, v in generator.sampling.items() if k in ("cfg_scale", "temperature")}
    rows = []
    for frames in args.frames:
        timed(task, generator, tokenizer, captions[:1], frames, sampler="maskgit", steps=2, **guidance)  # warm-up
        runs = [("maskgit", steps) for steps in args.steps] + ([("fhs", None)] if frames in args.fhs_frames else [])
        measured = {}
        for sampler, steps in runs:
            seconds, calls = timed(task, generator, tokenizer, captions, frames, sampler=sampler, steps=steps,
                                   **guidance)
            measured[(sampler, steps)] = seconds
            rows.append({"frames": frames, "segments": segments(task, frames), "sampler": sampler,
                         "steps": steps or "one per token",
                         "denoiser calls (last segment)": calls, "clips": len(captions), "seconds": seconds,
                         "frames/s": frames * len(captions) / seconds})
        reference = measured.get(("maskgit", 16))
        for row in rows[-len(runs):]:
            row["time / maskgit-16"] = row["seconds"] / reference if reference else "-"
    table = markdown_table(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(table + "\n")


if __name__ == "__main__":
    main()
