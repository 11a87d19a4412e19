"""How much of a digit an image tokenizer keeps: the judge's accuracy, pixel metrics and a Fréchet distance.

On the test split of the digits corpus, for reconstructions from the first n codebooks (n = 1 ... Q):
the digit classifier's accuracy (next to its accuracy on the real test images: the floor for the
tokenizer, and what a generator decoding through this tokenizer can at best reach), PSNR, SSIM, L1,
the usage and perplexity of codebook n, and the Fréchet distance in the judge's feature space (its
penultimate layer) of the reconstructions vs the real test images and vs the real train images,
next to the real-vs-real floor (test vs train images).

    OMP_NUM_THREADS=1 python bench/image_tokenizer_quality.py --tokenizer checkpoints/vq-digits \
        --judge checkpoints/digit-classifier --data data/digits --out outputs/bench/image_tokenizer_quality.md

``--cards`` also writes the table into the tokenizer folder's README.md (section "Quality").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import publish
from mmtok.judges.digits import labelled_images
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table
from mmtok.metrics.image import classifier_accuracy, codebook_usage, frechet_distance, psnr, ssim
from mmtok.tokens import Tokens

SECTION = "## Quality (bench/image_tokenizer_quality.py)"


def split_images(data: str, split: str, tokenizer, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, C, H, W] in [0, 1], labels [N]) of one split, at the tokenizer's size."""
    images, labels = labelled_images(data, split=split, channels=tokenizer.channels, batch_size=batch_size)
    if tuple(images.shape[-2:]) != tuple(tokenizer.image_size):
        raise SystemExit(f"{data}: {split} images are {tuple(images.shape[-2:])}, the tokenizer reads "
                         f"{tuple(tokenizer.image_size)}")
    return images, labels


@torch.no_grad()
def measure(tokenizer, judge, args) -> tuple[list[dict], dict]:
    test, labels = split_images(args.data, "test", tokenizer, args.batch_size)
    train, _ = split_images(args.data, "train", tokenizer, args.batch_size)
    accuracy_real = classifier_accuracy(test, labels, judge, batch_size=args.batch_size)
    floor = frechet_distance(test, train, feature_network=judge, batch_size=args.batch_size)
    started = time.perf_counter()
    codes = torch.cat([tokenizer.encode(test[s:s + args.batch_size]).codes
                       for s in range(0, len(test), args.batch_size)])  # [N, Q, h·w]
    encode_s = time.perf_counter() - started
    rows = []
    for n in range(1, tokenizer.num_codebooks + 1):
        recon = torch.cat([tokenizer.decode(Tokens(codes=codes[s:s + args.batch_size, :n], grid=tokenizer.grid))
                           for s in range(0, len(test), args.batch_size)])
        rows.append({
            "codebooks": n, "tokens": codes.shape[-1] * n,
            "judge_acc_real": accuracy_real,
            "judge_acc_recon": classifier_accuracy(recon, labels, judge, batch_size=args.batch_size),
            "psnr_db": float(psnr(test, recon).mean()), "ssim": float(ssim(test, recon).mean()),
            "l1": float((recon - test).abs().mean()),
            **codebook_usage(codes[:, n - 1], tokenizer.codebook_sizes[n - 1]),
            "fd_recon_vs_test": frechet_distance(test, recon, feature_network=judge, batch_size=args.batch_size),
            "fd_recon_vs_train": frechet_distance(train, recon, feature_network=judge, batch_size=args.batch_size),
            "fd_floor_test_vs_train": floor,
        })
    info = {"test_images": len(test), "train_images": len(train), "encode_s_per_image": encode_s / len(test)}
    return rows, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="image tokenizer Hub folder")
    parser.add_argument("--judge", required=True, help="digit classifier Hub folder")
    parser.add_argument("--data", default="data/digits")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--cards", action="store_true", help="write the table into the tokenizer's model card")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer, judge = load_pretrained(args.tokenizer).eval(), load_pretrained(args.judge).eval()
    rows, info = measure(tokenizer, judge, args)
    text = (f"Test split of `{args.data}` ({info['test_images']} images; Fréchet floor against its "
            f"{info['train_images']} train images), judge `{args.judge}`: accuracy, and Fréchet distances in its "
            f"{judge.feature_dim}-d penultimate features (`mmtok.metrics.frechet_distance`). "
            "PSNR (dB), SSIM and L1 over pixels in [0, 1]; usage and perplexity of codebook n over the test codes. "
            f"Encode {1000 * info['encode_s_per_image']:.2f} ms/image on {args.threads} CPU thread(s).\n\n"
            + markdown_table(rows))
    publish(text, out=args.out, folders=[Path(args.tokenizer)], section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
