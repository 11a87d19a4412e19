"""Does a generator read a condition? Its training loss with the condition and with it replaced by
the condition's null embedding, on the same held-out batches (and, for masked diffusion, the same
times and masks). A generator that ignores its text loses nothing when the text is removed: a TTS
model whose gap is a few hundredths of a nat babbles however good its loss looks.

    python bench/condition_reliance.py --model ar=checkpoints/tts-ar-xcodec \
        --model mdm=runs/tts/mdm_xcodec/checkpoints/last.ckpt --tokens runs/tts/tokens-xcodec

A ``--model`` is a Hub folder or a training checkpoint (``.ckpt``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import named_folders, publish
from mmtok.data.tokens import TokenDataModule
from mmtok.export import load_model_from_checkpoint
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table

SECTION = "## Condition reliance (bench/condition_reliance.py)"


def load_generator(path: Path):
    model = load_model_from_checkpoint(path)[0] if path.suffix == ".ckpt" else load_pretrained(path)
    if not hasattr(model, "conditioner"):
        raise ValueError(f"--model {path}: {type(model).__name__} is not a conditioned generator")
    return model.eval()


@torch.no_grad()
def mean_losses(model, batches: list[dict], key: str, seed: int, time: float | None) -> tuple[float, float]:
    """Mean loss over ``batches`` with the condition ``key`` and with its null embedding; a masked
    diffusion model at its sampled times and masks (the same for both), or at noise level ``time``."""
    diffusion = "rng" in model.loss.__code__.co_varnames

    def loss(batch: dict, index: int) -> float:
        extra = {}
        if diffusion:
            extra["rng"] = torch.Generator().manual_seed(seed + index)
            if time is not None:
                extra["t"] = torch.full((len(batch["lengths"]),), time)
        return float(model.loss(batch, **extra)[0])

    with_condition = [loss(batch, i) for i, batch in enumerate(batches)]
    without = [loss({**batch, key: None}, i) for i, batch in enumerate(batches)]
    return sum(with_condition) / len(batches), sum(without) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="a generator Hub folder or training checkpoint (repeat)")
    parser.add_argument("--tokens", required=True, help="the token cache the generators were trained on")
    parser.add_argument("--condition", default="phonemes", help="the batch field to remove")
    parser.add_argument("--split", default="valid", choices=("valid", "test"))
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time", type=float, nargs="*", default=[],
                        help="masked diffusion: also measure at these noise levels (1 = every token masked)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    models = named_folders(parser, args.model, "--model")
    data = TokenDataModule(tokens=args.tokens, valid_batch_size=args.batch_size, prompt_seconds=args.prompt_seconds)
    data.setup()
    loader = data.val_dataloader() if args.split == "valid" else data.test_dataloader()
    batches = [batch for _, batch in zip(range(args.batches), loader)]
    if not batches:
        parser.error(f"--tokens {args.tokens}: no {args.split} items")
    rows = []
    for name, path in models.items():
        model = load_generator(path)
        if args.condition not in model.conditioner.keys:
            parser.error(f"--model {name}: no {args.condition!r} condition (it has {model.conditioner.keys})")
        diffusion = "rng" in model.loss.__code__.co_varnames
        for time in [None, *(args.time if diffusion else [])]:
            with_condition, without = mean_losses(model, batches, args.condition, args.seed, time)
            rows.append({"model": name, "noise level": "sampled" if time is None else time,
                         "loss": round(with_condition, 4), f"loss without {args.condition}": round(without, 4),
                         "gap (nats)": round(without - with_condition, 4)})
    items = sum(len(batch["lengths"]) for batch in batches)
    text = (f"{items} {args.split} utterances of `{args.tokens}`, seed {args.seed}: each model's own training loss "
            f"(AR: cross-entropy per slot; masked diffusion: NELBO per token, at sampled noise levels or at a "
            f"fixed one) with `{args.condition}` and with its null embedding.\n\n" + markdown_table(rows))
    publish(text, out=args.out, folders=[], section=SECTION, cards=False)


if __name__ == "__main__":
    main()
