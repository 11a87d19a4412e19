"""SEED keeps meaning, the VQ grid keeps pixels: both tokenizers side by side on the digits' test split.

For SEED (its de-tokenizer at each of ``--steps`` with DPM-Solver and with DDIM, at each ``--guidance``
scale of its classifier-free guidance) and for the VQ
tokenizer (from its first 1 .. Q codebooks): tokens and bits per image, the digit judge's accuracy on the
decoded images, the Fréchet distance in the judge's features of the decoded images to the train images,
PSNR, and decoding speed (images/s, and its ratio to the VQ decoder's, measured in the same run). The
floor row is the real test images themselves (accuracy, and their Fréchet distance to the train images).
SEED's discriminative numbers (zero-shot accuracy, caption -> image recall@1/5) are in a second table.

    OMP_NUM_THREADS=1 PYTHONPATH=bench python bench/seed_tokenizer.py --tokenizer checkpoints/seed-digits \
        --vq checkpoints/vq-digits --judge checkpoints/digit-classifier --data data/digits \
        --out outputs/bench/seed_tokenizer.md --cards
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from common import publish
from image_tokenizer_quality import split_images
from mmtok.codecs.seed import evaluate_seed
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table
from mmtok.metrics.image import classifier_accuracy, frechet_distance, psnr
from mmtok.tokens import Tokens

SECTION = "## SEED next to the VQ grid (bench/seed_tokenizer.py)"


def decode_all(tokenizer, codes: torch.Tensor, batch_size: int, **options) -> tuple[torch.Tensor, float]:
    """Decoded images of every item of ``codes`` [N, Q, T] and the images/s it took."""
    started = time.perf_counter()
    images = torch.cat([tokenizer.decode(Tokens(codes=codes[s:s + batch_size], grid=tokenizer.grid), **options)
                        for s in range(0, len(codes), batch_size)])
    return images, len(codes) / (time.perf_counter() - started)


def row(name: str, tokens: int, bits: float, decoded: torch.Tensor, speed: float | None, *, test, labels, train,
        judge, batch_size: int) -> dict:
    return {"tokenizer": name, "tokens": tokens, "bits_per_image": round(bits, 1),
            "judge_accuracy": classifier_accuracy(decoded, labels, judge, batch_size=batch_size),
            "frechet_vs_train": frechet_distance(train, decoded, feature_network=judge, batch_size=batch_size),
            "psnr_db": float(psnr(test, decoded).mean()), "images_per_s": speed}


@torch.no_grad()
def measure(seed, vq, judge, args) -> tuple[list[dict], int]:
    test, labels = split_images(args.data, "test", seed, args.batch_size)
    train, _ = split_images(args.data, "train", seed, args.batch_size)
    common = {"test": test, "labels": labels, "train": train, "judge": judge, "batch_size": args.batch_size}
    rows = [row("real test images (floor)", 0, 0.0, test, None, **common)]
    vq_codes = torch.cat([vq.encode(test[s:s + args.batch_size]).codes for s in range(0, len(test), args.batch_size)])
    vq_speed = None
    for n in range(1, vq.num_codebooks + 1):
        decoded, speed = decode_all(vq, vq_codes[:, :n], args.batch_size)
        vq_speed = speed if n == 1 else vq_speed
        bits = vq_codes.shape[-1] * sum(math.log2(v) for v in vq.codebook_sizes[:n])
        rows.append(row(f"VQ grid, {n} codebook(s)", vq_codes.shape[-1] * n, bits, decoded, speed, **common))
    codes = torch.cat([seed.encode(test[s:s + args.batch_size]).codes for s in range(0, len(test), args.batch_size)])
    bits = codes.shape[-1] * math.log2(seed.codebook_sizes[0])
    settings = [(sampler, steps, guidance) for sampler in args.samplers for steps in args.steps
                for guidance in args.guidance]
    for sampler, steps, guidance in settings:
        decoded, speed = decode_all(seed, codes, args.batch_size, sampler=sampler, steps=steps, guidance=guidance,
                                    seed=args.noise_seed)
        rows.append(row(f"SEED, {sampler} {steps} steps, guidance {guidance:g}", codes.shape[-1], bits, decoded,
                        speed, **common))
    for r in rows:
        r["speed_vs_vq"] = None if r["images_per_s"] is None else r["images_per_s"] / vq_speed
    return rows, len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="SEED tokenizer Hub folder")
    parser.add_argument("--vq", required=True, help="VQ image tokenizer Hub folder")
    parser.add_argument("--judge", required=True, help="digit classifier Hub folder")
    parser.add_argument("--data", default="data/digits")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50],
                        help="de-tokenizer steps (each with every sampler and guidance)")
    parser.add_argument("--samplers", nargs="+", choices=["dpm", "ddim"], default=["dpm", "ddim"])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0],
                        help="de-tokenizer classifier-free guidance scales (1: none)")
    parser.add_argument("--noise-seed", type=int, default=0, help="the de-tokenizer's noise")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out")
    parser.add_argument("--cards", action="store_true", help="write the tables into the SEED folder's card")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed, vq = load_pretrained(args.tokenizer).eval(), load_pretrained(args.vq).eval()
    judge = load_pretrained(args.judge).eval()
    rows, count = measure(seed, vq, judge, args)
    discriminative = evaluate_seed(seed, args.data, split="test")[0]
    text = (f"Test split of `{args.data}` ({count} images), judge `{args.judge}` (accuracy; Fréchet distance in "
            f"its {judge.feature_dim}-d features to the train images), on {args.threads} CPU thread(s), batches of "
            f"{args.batch_size}; speed_vs_vq: images/s over the VQ decoder's from 1 codebook in this run. SEED "
            f"decodes by drawing (noise seed {args.noise_seed}), so its PSNR is not a reconstruction score.\n\n"
            + markdown_table(rows)
            + "\n\nSEED's stage-1 embeddings on the same split (zero-shot digit accuracy from the last query and from "
            "the global embedding its tokens regress; caption -> image recall@k, a hit being an image of the caption's "
            "digit; codebook usage):\n\n" + markdown_table([discriminative]))
    publish(text, out=args.out, folders=[Path(args.tokenizer)], section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
