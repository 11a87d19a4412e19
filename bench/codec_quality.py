"""RVQ codec vs X-Codec at the same budget: reconstruction quality, intelligibility, phonetic content.

For each codec (a Hub folder), on whole utterances of the corpus test split, at 1, 2, 4 and 8
quantizers: bitrate, mel distance, STFT distance, SI-SDR, and the phoneme error rate (PER) of the
judge's transcripts of the reconstructions; the judge's PER on the original audio is the floor.
Then a linear CTC probe on the frozen first-codebook codewords (mmtok.codecs.probe): how well the
first quantizer's codes alone predict phonemes.

    python bench/codec_quality.py \
        --codec rvq=outputs/rvq-speech-melonly --codec xcodec=checkpoints/xcodec-speech-16k \
        --judge checkpoints/phoneme-recognizer --data data/speech --out outputs/bench/codec_quality.md

``--cards`` also writes the tables into each codec folder's README.md (section "Comparison").
"""

from __future__ import annotations

import argparse
import time

import torch

from common import named_folders, publish
from mmtok.asr import evaluate_recognizer
from mmtok.codecs.evaluate import evaluate_codec
from mmtok.codecs.probe import phoneme_probe
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table

SECTION = "## Comparison (bench/codec_quality.py)"


def quality_rows(name: str, codec, args, judge) -> list[dict]:
    rows = evaluate_codec(codec, args.data, split="test", max_items=args.max_items, quantizers=args.quantizers,
                          judge=judge)
    return [{"codec": name, "quantizers": r["quantizers"], "kbps": r["kbps"], "mel_distance": r["mel_distance"],
             "stft_distance": r["stft_distance"], "si_sdr": r["si_sdr"], "per": r["per"]} for r in rows]


def probe_row(name: str, codec, args) -> dict:
    result = phoneme_probe(codec, args.data, train_items=args.probe_train_items, test_items=args.max_items,
                           epochs=args.probe_epochs, seed=args.seed)
    return {"codec": name, "first_codebook_probe_per": result["probe_per"], "probe_train_per": result["train_per"],
            "train_utterances": result["train_utterances"], "test_utterances": result["test_utterances"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", action="append", required=True, metavar="NAME=FOLDER",
                        help="a codec Hub folder to compare (repeat)")
    parser.add_argument("--judge", required=True, help="phoneme recognizer Hub folder")
    parser.add_argument("--data", default="data/speech")
    parser.add_argument("--max-items", type=int, default=100, help="test utterances")
    parser.add_argument("--quantizers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--probe-train-items", type=int, default=1000)
    parser.add_argument("--probe-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the tables to this markdown file")
    parser.add_argument("--cards", action="store_true", help="write the tables into each codec's model card")
    args = parser.parse_args()

    codecs = named_folders(parser, args.codec, "--codec")
    torch.manual_seed(args.seed)
    judge = load_pretrained(args.judge)
    floor = evaluate_recognizer(judge, args.data, split="test", max_items=args.max_items)
    quality, probes, seconds = [], [], {}
    for name, folder in codecs.items():
        start = time.perf_counter()
        codec = load_pretrained(folder)
        quality += quality_rows(name, codec, args, judge)
        probes.append(probe_row(name, codec, args))
        seconds[name] = time.perf_counter() - start
    quality.append({"codec": "original audio (floor)", "quantizers": "-", "kbps": 256.0, "mel_distance": 0.0,
                    "stft_distance": 0.0, "si_sdr": float("inf"), "per": floor["per"]})
    text = (f"Test split of `{args.data}`, {floor['utterances']} whole utterances; PER by `{args.judge}` "
            "(lower is better for every column but SI-SDR).\n\n" + markdown_table(quality)
            + f"\n\nLinear CTC probe on the frozen first-codebook codewords, trained on {args.probe_train_items} "
            f"train utterances for {args.probe_epochs} epochs (PER on the test split):\n\n" + markdown_table(probes)
            + "\n\nSeconds per codec (evaluation + probe): "
            + ", ".join(f"{name} {s:.0f}" for name, s in seconds.items()) + "\n")
    publish(text, out=args.out, folders=list(codecs.values()), section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
