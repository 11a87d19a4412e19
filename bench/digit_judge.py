"""How good a judge the digit classifier is: its accuracy, and the floors of its Fréchet distance.

The classifier scores class-conditional samples and reconstructions (accuracy) and is the feature
network of the Fréchet distance (``mmtok.metrics.frechet_distance``). A Fréchet distance means little
without its floor: the distance between two sets of *real* digits of the same sizes. This prints the
test accuracy (overall and per class) and the distance of the test digits to the train digits, to the
valid digits (a set as large as the test set) and to uniform noise of the same size.

    mmtok data digits --out data/digits --image-size 32
    python bench/digit_judge.py checkpoints/digit-classifier --data data/digits

``--cards`` also writes the tables into the folder's README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import publish
from mmtok.hub import load_pretrained
from mmtok.judges import DigitClassifier
from mmtok.judges.digits import labelled_images
from mmtok.media import markdown_table
from mmtok.metrics import classifier_accuracy, frechet_distance

SECTION = "## Judge quality (bench/digit_judge.py)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="digit classifier Hub folder")
    parser.add_argument("--data", default="data/digits")
    parser.add_argument("--seed", type=int, default=0, help="of the noise images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    parser.add_argument("--cards", action="store_true", help="write the tables into the model's README.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    model = load_pretrained(args.model)
    if not isinstance(model, DigitClassifier):
        parser.error(f"{args.model}: expected a DigitClassifier folder, got a {type(model).__name__}")
    sets = {split: labelled_images(args.data, split=split, channels=model.channels)
            for split in ("train", "valid", "test")}
    test, labels = sets["test"]
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(args.seed))

    def fid(other: torch.Tensor) -> float:
        return frechet_distance(test, other, feature_network=model)

    counts = {split: len(images) for split, (images, _) in sets.items()}
    rows = [
        {"measure": f"test accuracy ({counts['test']} digits)", "value": classifier_accuracy(test, labels, model)},
        {"measure": f"FID test ({counts['test']}) vs train ({counts['train']}): the floor",
         "value": fid(sets["train"][0])},
        {"measure": f"FID test ({counts['test']}) vs valid ({counts['valid']}): the floor at equal sizes",
         "value": fid(sets["valid"][0])},
        {"measure": f"FID test ({counts['test']}) vs uniform noise ({len(noise)})", "value": fid(noise)},
    ]
    per_class = {"class": "accuracy"}
    per_class.update({str(k): classifier_accuracy(test[labels == k], labels[labels == k], model)
                      for k in range(model.num_classes) if bool((labels == k).any())})
    text = (f"`{args.model}` on `{args.data}` (Fréchet distances in the classifier's "
            f"{model.feature_dim}-d feature space; {time.perf_counter() - start:.0f} s on {args.threads} "
            f"thread(s)):\n\n{markdown_table(rows)}\nPer-class test accuracy:\n\n{markdown_table([per_class])}")
    publish(text, out=args.out, folders=[Path(args.model)], section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
