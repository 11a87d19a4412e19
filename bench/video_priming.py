"""Continuing real videos (Phenaki's priming; ``mmtok generate --prime``): text-to-video generators
compared in one run on the same real clips, with the real frames (the floor) and the tokenizer's
reconstructions (the ceiling) beside them.

For each one-digit clip of the split with at least ``--frames`` frames, a generator is given the codes
of the clip's first P real frames (each P of ``--prime-frames``, re-encoded as the start of a clip, as
``--prime`` does) and the clip's own caption, and draws the rest of a ``--frames`` clip with its
recorded sampling. ``P = 0`` draws the whole clip from the caption alone, for comparison. The rates
read the new frames only (frames P .. end):

- digit: the judge's majority over the new frames reads the clip's digit;
- per frame: the judge's accuracy on each new frame;
- motion: over the three frames from the last given one, the centre of mass moves the way the real
  clip's does over the same frames (clips whose real digit moves less than a pixel on both axes
  there, a bounce, are left out of this rate: ``motion clips``);
- join (px): the distance between the first new frame's centre of mass and the real frame's.

The floor and ceiling rows read the same frames of the real clips and of their reconstructions by the
last model's tokenizer.

    python bench/video_priming.py --model release=checkpoints/phenaki-moving-digits \\
        --model candidate=runs/video/export/... --data data/moving_digits --judge checkpoints/digit-classifier \\
        [--prime-frames 0 1 5] [--frames 17] [--max-items 200] [--split test] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import named_folders, publish
from mmtok.data.manifest import read_manifest
from mmtok.data.video import DIRECTIONS, corpus_digit_size
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table, read_video
from mmtok.tasks.video import centre_of_mass, clip_rates, encode_primer, generate_clips, moved_towards


def motion_name(centres: torch.Tensor, *, threshold: float = 1.0) -> str | None:
    """The moving-digits direction name of the centre's displacement from its first to its last row,
    each axis counted where it moved at least ``threshold`` pixels; None where neither did."""
    dx, dy = (centres[-1] - centres[0]).tolist()
    signs = tuple(0 if abs(moved) < threshold else (1 if moved > 0 else -1) for moved in (dx, dy))
    return next((name for name, wanted in DIRECTIONS.items() if wanted == signs), None)


def continuation_rates(clips: list[torch.Tensor], real: list[torch.Tensor], digits: list[int], given: int,
                       judge, digit_size: int) -> dict:
    """The rates of the new frames (``given`` onwards) of ``clips`` against the ``real`` clips."""
    start = max(given, 1) - 1  # the motion runs from the last given frame (the first frame when none is)
    new = [clip[:, given:] for clip in clips]
    read = clip_rates(new, digits, ["left"] * len(new), [c.shape[1] for c in new], judge, digit_size)
    followed = moving = 0
    joins = []
    for clip, truth in zip(clips, real):
        real_centres = centre_of_mass(truth.transpose(0, 1))
        centres = centre_of_mass(clip.transpose(0, 1))
        joins.append(float((centres[given] - real_centres[given]).norm()))
        direction = motion_name(real_centres[start:start + 3])
        if direction is not None:
            moving += 1
            followed += moved_towards(centres[start:], direction)
    return {"clips": len(clips), "digit": read["digit_rate"], "per frame": read["frame_accuracy"],
            "motion": followed / max(1, moving), "motion clips": moving, "join (px)": sum(joins) / len(joins)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER of a text-to-video generator")
    parser.add_argument("--data", required=True, help="a moving-digits corpus folder")
    parser.add_argument("--judge", required=True, help="the digit judge's Hub folder")
    parser.add_argument("--prime-frames", type=int, nargs="+", default=[0, 1, 5])
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-items", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = named_folders(parser, args.model, "--model")
    judge = load_pretrained(args.judge).eval()
    entries = [e for e in read_manifest(args.data, key="video") if e.get("split") == args.split
               and len(e.get("digits", ())) == 1 and e["num_frames"] >= args.frames][:args.max_items]
    if not entries:
        parser.error(f"--data {args.data}: no one-digit {args.split} clips of {args.frames} frames or more")
    digit_size = corpus_digit_size(Path(args.data)) or 28
    digits = [int(e["digits"][0]) for e in entries]
    captions = [e["text"] for e in entries]
    rows, tokenizer = [], None
    for name, folder in models.items():
        generator = load_pretrained(folder).eval()
        tokenizer = generator.load_tokenizer(None, near=folder)
        real = torch.stack([read_video(e["video"], channels=tokenizer.channels)[0][:, :args.frames] for e in entries])
        sampling = generator.sampling_with()
        for given in args.prime_frames:
            primer = encode_primer(generator, tokenizer, real[:, :, :given]) if given else None
            rng = torch.Generator().manual_seed(args.seed)
            started = time.perf_counter()
            clips = generate_clips(generator, tokenizer, captions, frames=args.frames, primer=primer, rng=rng,
                                   **sampling)
            rows.append({"clips of": name, "given frames": given,
                         **continuation_rates(list(clips), list(real), digits, given, judge, digit_size),
                         "seconds": time.perf_counter() - started})
            print(rows[-1], flush=True)
    with torch.no_grad():
        recon = tokenizer.decode(tokenizer.encode(real).first_codebooks(generator.num_codebooks))
    for given in args.prime_frames:
        for label, clips in (("real clips (floor)", real), ("tokenizer reconstructions (ceiling)", recon)):
            rows.append({"clips of": label, "given frames": given,
                         **continuation_rates(list(clips), list(real), digits, given, judge, digit_size)})
    publish(markdown_table(rows), out=args.out, folders=[], section="", cards=False)


if __name__ == "__main__":
    main()
