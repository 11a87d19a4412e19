"""Images from a generator over an image tokenizer: class labels or captions -> a grid of tokens -> pngs.

Every item is the tokenizer's whole grid (h · w frames in raster order). ``mmtok generate`` writes one
png per sample, named by its request and index (``class7_003.png``, ``text1_000.png``), and
``grid.png`` with one row per request; the same seed gives the same pngs.
"""

from __future__ import annotations

import argparse
import json
import math
from abc import abstractmethod
from pathlib import Path

import torch

from mmtok.errors import DataError, UsageError
from mmtok.tasks.base import Task


@torch.no_grad()
def generate_images(generator, tokenizer, conditions: dict, *, rng: torch.Generator | None = None,
                    batch_size: int = 64, **sampling) -> torch.Tensor:
    """Images [N, C, H, W] in [0, 1] for N items of ``conditions`` (a dict of lists, one value per
    item), generated ``batch_size`` at a time: each item is the tokenizer's whole grid."""
    count = len(next(iter(conditions.values())))
    frames = math.prod(tokenizer.grid)
    images = []
    for start in range(0, count, batch_size):
        chunk = {key: values[start:start + batch_size] for key, values in conditions.items()}
        size = len(next(iter(chunk.values())))
        tokens = generator.generate(chunk, lengths=torch.full((size,), frames), rng=rng, **sampling)
        images.append(tokenizer.decode(tokens).clamp(0, 1).cpu())
    return torch.cat(images)


class ImageTask(Task):
    """Shared by the image tasks: ``num_samples`` images per request, written as pngs and a grid."""

    key: str

    def __init__(self, *, key: str):
        super().__init__(key=key)
        self.key = key

    @staticmethod
    def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--num-samples", type=int, default=16, help="images per request (≥ 1)")
        parser.add_argument("--batch-size", type=int, default=64, help="images generated together")

    @abstractmethod
    def requests(self, generator, args) -> list[tuple[str, object]]:
        """(file prefix, condition value) per request."""

    def run(self, generator, tokenizer, args, *, out, rng, sampling) -> list[Path]:
        from mmtok.media import write_png, write_png_grid

        if args.num_samples < 1:
            raise UsageError(f"--num-samples {args.num_samples}: must be ≥ 1")
        if args.batch_size < 1:
            raise UsageError(f"--batch-size {args.batch_size}: must be ≥ 1")
        if self.key not in generator.conditioner.keys:
            raise UsageError(f"{generator.tokenizer_id}: this generator has no {self.key!r} condition (it has "
                             f"{generator.conditioner.keys})")
        requests = self.requests(generator, args)
        values = [value for _, value in requests for _ in range(args.num_samples)]
        images = generate_images(generator, tokenizer, {self.key: values}, rng=rng, batch_size=args.batch_size,
                                 **sampling)
        files = []
        for row, (prefix, value) in enumerate(requests):
            for index in range(args.num_samples):
                files.append(write_png(out / f"{prefix}_{index:03d}.png", images[row * args.num_samples + index]))
        files.append(write_png_grid(out / "grid.png", images, nrow=args.num_samples))
        lines = [{"prefix": prefix, self.key: value, "samples": args.num_samples} for prefix, value in requests]
        (out / "requests.jsonl").write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        print(f"{len(values)} image(s), {args.num_samples} per request, grid.png with a row per request")
        return files + [out / "requests.jsonl"]

    def evaluate(self, generator, tokenizer, judge, data: str | Path, *, samples_per_request: int = 100,
                 rng: torch.Generator | None = None, batch_size: int = 100, max_items: int | None = None,
                 split: str = "test", **sampling) -> list[dict]:
        """Judge a generator on a labelled image corpus (``data``, its ``split``): ``samples_per_request``
        images per request of :meth:`evaluation_requests`, the judge's accuracy on them (overall and per
        label) and their Fréchet distance to the real train images in the judge's feature space, with the
        time they took; next to the floor (the real ``split`` images against the same train images) and the
        tokenizer's ceiling (its reconstructions of those images from the codebooks the generator
        draws, against them too). Every distance is to the train images, so the three compare alike: the
        distance of reconstructions to the very images they reconstruct would be far below anything a
        generator can reach. Every image of the split counts, so ``max_items`` is refused."""
        import time

        from mmtok.judges.digits import labelled_images
        from mmtok.metrics.image import classifier_accuracy, frechet_distance

        if max_items is not None:
            raise UsageError(f"--max-items {max_items}: an image generator is scored against every image of the "
                             "split; --samples sets how many it draws per class")
        real, real_labels = labelled_images(data, split=split, channels=judge.channels)
        train, _ = labelled_images(data, split="train", channels=judge.channels)
        with torch.no_grad():
            recon = torch.cat([tokenizer.decode(tokenizer.encode(real[i:i + batch_size])
                                                .first_codebooks(generator.num_codebooks)).clamp(0, 1)
                               for i in range(0, len(real), batch_size)])
        rows = [{"images": f"real {split} vs real train (floor)", "count": len(real),
                 "accuracy": classifier_accuracy(real, real_labels, judge),
                 "frechet_distance": frechet_distance(real, train, feature_network=judge)},
                {"images": "tokenizer reconstructions (ceiling)", "count": len(recon),
                 "accuracy": classifier_accuracy(recon, real_labels, judge),
                 "frechet_distance": frechet_distance(recon, train, feature_network=judge)}]
        values, labels = self.evaluation_requests(generator, data, samples_per_request, split=split)
        started = time.perf_counter()
        images = generate_images(generator, tokenizer, {self.key: values}, rng=rng, batch_size=batch_size, **sampling)
        seconds = time.perf_counter() - started
        labels = torch.tensor(labels)
        per_label = {f"accuracy_{k}": classifier_accuracy(images[labels == k], labels[labels == k], judge)
                     for k in sorted(set(labels.tolist()))}
        rows.append({"images": f"generated ({generator.check_sampler(sampling.get('sampler'))})",
                     "count": len(images), "accuracy": classifier_accuracy(images, labels, judge),
                     "frechet_distance": frechet_distance(images, train, feature_network=judge),
                     "seconds": seconds, "images_per_s": len(images) / seconds,
                     "denoiser_calls": getattr(generator, "last_stats", {}).get("denoiser_calls", "-"),
                     **per_label})
        return rows

    @abstractmethod
    def evaluation_requests(self, generator, data: str | Path, count: int, *,
                            split: str = "test") -> tuple[list, list[int]]:
        """(condition value, label the judge should read) for ``count`` images per request (a caption
        model's captions come from ``split``)."""


class ClassToImage(ImageTask):
    """``--class NAME`` (repeatable; default: every class) -> ``class<NAME>_<index>.png``."""

    def __init__(self, *, key: str = "label"):
        super().__init__(key=key)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--class", dest="classes", action="append", default=[],
                            help="a class name of the generator's class condition (repeatable; default: all)")
        ImageTask.add_sample_arguments(parser)

    def requests(self, generator, args) -> list[tuple[str, object]]:
        condition = next(c for c in generator.conditioner.conditions if c.key == self.key)
        classes = list(args.classes) or list(condition.classes)
        unknown = [c for c in classes if c not in condition.classes]
        if unknown:
            raise UsageError(f"--class {', '.join(unknown)}: not a class of this generator "
                             f"(known: {', '.join(condition.classes)})")
        return [(f"class{name}", name) for name in classes]

    def evaluation_requests(self, generator, data, count, *, split="test"):
        """Every class, each read as the digit its name is."""
        condition = next(c for c in generator.conditioner.conditions if c.key == self.key)
        return ([name for name in condition.classes for _ in range(count)],
                [int(name) for name in condition.classes for _ in range(count)])


class CaptionToImage(ImageTask):
    """``--text "a handwritten digit seven"`` (repeatable) -> ``text<i>_<index>.png``."""

    def __init__(self, *, key: str = "text"):
        super().__init__(key=key)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--text", action="append", default=[], help="a caption (repeatable)")
        ImageTask.add_sample_arguments(parser)

    def requests(self, generator, args) -> list[tuple[str, object]]:
        empty = next((text for text in args.text if not text.strip()), None)
        if empty is not None or not args.text:
            raise UsageError(f"--text{'' if empty is None else ' ' + repr(empty)}: give one or more non-empty captions")
        texts = list(args.text)
        return [(f"text{i}", text) for i, text in enumerate(texts)]

    def evaluation_requests(self, generator, data, count, *, split="test"):
        """Per label of ``split``, its images' own captions in turn (the caption model must read
        the words), ``count`` images per label."""
        from mmtok.data.manifest import read_manifest

        captions: dict[int, list[str]] = {}
        for entry in read_manifest(data):
            if entry.get("split") == split and entry.get(self.key):
                captions.setdefault(int(entry["label"]), []).append(entry[self.key])
        if not captions:
            raise DataError(f"{data}: no {split} images with a {self.key!r} caption and a label")
        pairs = [(texts[i % len(texts)], label) for label, texts in sorted(captions.items()) for i in range(count)]
        return [text for text, _ in pairs], [label for _, label in pairs]
