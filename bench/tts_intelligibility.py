"""The X-Codec claim for language modelling: TTS on X-Codec tokens vs. on plain RVQ tokens.

Both TTS generators (recipes/tts/ar_xcodec_speech.yaml and ar_rvq_speech.yaml: same backbone, same
steps, same 4 codebooks = 2 kbps) speak the phonemes of the corpus' held-out test sentences, in the
corpus voice (speaker label) and in a prompted voice (3 s of another utterance of the same
speaker); the phoneme recognizer transcribes the speech and PER is computed against the corpus
phonemes. Floors: the recognizer's PER on the real audio, and on the real audio passed through each
codec at the same 4 codebooks (the best its TTS could do).

    python bench/tts_intelligibility.py --model xcodec=checkpoints/tts-ar-xcodec \
        --model rvq=checkpoints/tts-ar-rvq --judge checkpoints/phoneme-recognizer --data data/speech

``--cards`` also writes the table into each generator folder's README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmtok.tasks.tts import MODES, evaluate_tts
from mmtok.asr import evaluate_recognizer
from mmtok.codecs.evaluate import evaluate_codec
from common import named_folders, publish
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table

SECTION = "## Intelligibility (bench/tts_intelligibility.py)"


def model_rows(name: str, folder: Path, judge, args) -> list[dict]:
    model = load_pretrained(folder)
    tokenizer = model.load_tokenizer(near=folder)
    resynthesis = evaluate_codec(tokenizer, args.data, split="test", max_items=args.max_items,
                                 quantizers=[model.num_codebooks], judge=judge)[0]
    rows = [{"model": name, "speech": f"real audio through the codec ({model.num_codebooks} codebooks)",
             "per": resynthesis["per"], "duration_ratio": 1.0, "ended": "-", "generation_s": "-"}]
    for mode in args.modes:
        result = evaluate_tts(model, tokenizer, judge, args.data, mode=mode, max_items=args.max_items,
                              batch_size=args.batch_size, seed=args.seed, temperature=args.temperature,
                              top_k=args.top_k, cfg_scale=args.cfg_scale)
        rows.append({"model": name, "speech": f"generated, {'corpus voice' if mode == 'speaker' else '3 s prompt'}",
                     **{k: result[k] for k in ("per", "duration_ratio", "generation_s")},
                     "ended": "-" if result["ended"] is None else result["ended"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                        help="a TTS generator Hub folder (repeat)")
    parser.add_argument("--judge", required=True, help="phoneme recognizer Hub folder")
    parser.add_argument("--data", default="data/speech")
    parser.add_argument("--max-items", type=int, default=100, help="test utterances")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--cards", action="store_true", help="write the table into each generator's model card")
    args = parser.parse_args()

    models = named_folders(parser, args.model, "--model")
    torch.manual_seed(args.seed)
    judge = load_pretrained(args.judge)
    floor = evaluate_recognizer(judge, args.data, split="test", max_items=args.max_items)
    rows = [{"model": "-", "speech": "real audio (floor)", "per": floor["per"], "duration_ratio": 1.0, "ended": "-",
             "generation_s": "-"}]
    for name, folder in models.items():
        rows += model_rows(name, folder, judge, args)
    sampling = f"temperature {args.temperature}" + (f", top-k {args.top_k}" if args.top_k else "") + (
        f", CFG scale {args.cfg_scale}" if args.cfg_scale != 1.0 else "")
    text = (f"Test split of `{args.data}` ({floor['utterances']} held-out sentences); PER by `{args.judge}`; "
            f"sampling: {sampling}, seed {args.seed}. `duration_ratio`: generated / real duration; `ended`: "
            "fraction stopped by the end token; `generation_s`: wall time of generation and decoding.\n\n"
            + markdown_table(rows))
    publish(text, out=args.out, folders=list(models.values()), section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
