"""How predictable a video tokenizer's codes are: the codes of empty grid cells against those of cells
the digit covers, per codebook, for one or more C-ViViT Hub folders on the same clips.

A generator has to predict every code. A cell whose frames are plain black carries nothing but
"black", so a tokenizer fit for generation gives it few codes; one that spreads black over hundreds
of codes (each also saying where the cell sits relative to the content) leaves the generator tokens
it cannot predict. For each tokenizer and codebook the table gives the share of empty cells, the
perplexity (exp of the entropy) and count of distinct codes over empty cells and over digit cells,
and how often an empty cell keeps its code from the previous frame group.

    python bench/video_token_entropy.py --tokenizer release=checkpoints/cvivit-moving-digits \\
        --tokenizer local=runs/video/export/cvivit-fsq-local --data data/moving_digits \\
        --out outputs/bench/video_tokens.md

A cell is empty when no pixel of its frames (its tubelet, or its patch of the first frame) exceeds
``--threshold``.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter

import torch
from einops import rearrange

from common import named_folders, publish


def perplexity(counts: Counter) -> float:
    total = sum(counts.values())
    return math.exp(-sum(n / total * math.log(n / total) for n in counts.values())) if total else float("nan")


def empty_cells(video: torch.Tensor, tokenizer, threshold: float) -> torch.Tensor:
    """BoolTensor [B, t, h · w]: the cells none of whose pixels exceeds ``threshold``."""
    p, pt = tokenizer.patch_size, tokenizer.temporal_patch_size
    first = rearrange(video[:, :, :1], "b c 1 (h p) (w q) -> b 1 (h w) (c p q)", p=p, q=p).amax(-1)
    rest = rearrange(video[:, :, 1:], "b c (t r) (h p) (w q) -> b t (h w) (c r p q)", r=pt, p=p, q=p).amax(-1)
    return torch.cat([first, rest], 1) <= threshold


def code_statistics(tokenizer, entries: list[dict], *, frames: int, threshold: float,
                    batch_size: int = 32) -> list[dict]:
    """One row per codebook: code statistics over empty and over digit cells of ``entries``' first frames."""
    from mmtok.media import read_video

    cells = math.prod(tokenizer.spatial_grid)
    empty_codes = [Counter() for _ in tokenizer.codebook_sizes]
    digit_codes = [Counter() for _ in tokenizer.codebook_sizes]
    kept, followed, empty_total, total = [0] * len(empty_codes), 0, 0, 0
    for start in range(0, len(entries), batch_size):
        batch = entries[start:start + batch_size]
        video = torch.stack([read_video(e["video"], channels=tokenizer.channels)[0][:, :frames] for e in batch])
        with torch.no_grad():
            codes = tokenizer.encode(video).codes  # [B, Q, t · h · w]
        codes = rearrange(codes, "b q (t n) -> b q t n", n=cells)
        empty = empty_cells(video, tokenizer, threshold)  # [B, t, n]
        empty_total, total = empty_total + int(empty.sum()), total + empty.numel()
        both_empty = empty[:, 1:] & empty[:, :-1]
        followed += int(both_empty.sum())
        for q in range(codes.shape[1]):
            empty_codes[q].update(codes[:, q][empty].tolist())
            digit_codes[q].update(codes[:, q][~empty].tolist())
            kept[q] += int((codes[:, q, 1:] == codes[:, q, :-1])[both_empty].sum())
    return [{"codebook": q, "size": size, "empty cells": f"{empty_total / total:.3f}",
             "empty: perplexity": f"{perplexity(empty_codes[q]):.1f}", "empty: distinct": len(empty_codes[q]),
             "digit: perplexity": f"{perplexity(digit_codes[q]):.1f}", "digit: distinct": len(digit_codes[q]),
             "empty keeps its code": f"{kept[q] / max(followed, 1):.3f}"}
            for q, size in enumerate(tokenizer.codebook_sizes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", action="append", required=True, help="NAME=FOLDER (repeatable)")
    parser.add_argument("--data", default="data/moving_digits")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--frames", type=int, default=17, help="each clip's first frames (clips at least that long)")
    parser.add_argument("--threshold", type=float, default=0.05, help="a cell is empty when no pixel exceeds this")
    parser.add_argument("--out")
    parser.add_argument("--cards", action="store_true", help="also write the table into each tokenizer's card")
    args = parser.parse_args()
    folders = named_folders(parser, args.tokenizer, "--tokenizer")

    from mmtok.data.manifest import read_manifest
    from mmtok.hub import load_pretrained

    entries = [e for e in read_manifest(args.data, key="video")
               if e.get("split") == args.split and e.get("num_frames", 0) >= args.frames][: args.clips]
    rows = []
    for name, folder in folders.items():
        tokenizer = load_pretrained(folder).float().eval()
        tokenizer.check_frame_count(args.frames, name="--frames")
        statistics = code_statistics(tokenizer, entries, frames=args.frames, threshold=args.threshold)
        rows += [{"tokenizer": name, **row} for row in statistics]
        print(f"{name}: done", flush=True)
    from mmtok.media import markdown_table

    text = (f"{len(entries)} {args.split} clips of {args.data}, their first {args.frames} frames; a cell is empty "
            f"when no pixel exceeds {args.threshold}\n\n" + markdown_table(rows))
    publish(text, out=args.out, folders=list(folders.values()), section="Code statistics (empty vs digit cells)",
            cards=args.cards)


if __name__ == "__main__":
    main()
