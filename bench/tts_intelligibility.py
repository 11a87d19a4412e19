"""The X-Codec claim for language modelling: TTS on X-Codec tokens vs. on plain RVQ tokens.

Each TTS generator (e.g. recipes/tts/ar_xcodec_speech_aligned.yaml and ar_rvq_speech_aligned.yaml: same
backbone, steps and 4 codebooks = 2 kbps) speaks the phonemes of the corpus' held-out test sentences,
in the corpus voice (speaker label) and in a prompted voice (3 s of another utterance of the same
speaker); the phoneme recognizer transcribes the speech and PER is computed against the corpus
phonemes, with a bootstrap 95 % interval over sentences. Every pair of models in the same mode gets
a paired bootstrap interval of its PER difference (the same sentences in each draw). Floors: the
recognizer's PER on the real audio, and on the real audio passed through each codec at the same 4
codebooks (the best its TTS could do).

With ``--speaker-encoder`` the speech is also compared with the 3 s prompt by the speaker embedding
model (cosine), next to the same score for the real utterance (two real utterances of the speaker).

    python bench/tts_intelligibility.py --model xcodec=checkpoints/tts-ar-xcodec-aligned \
        --model rvq=checkpoints/tts-ar-rvq-aligned --judge checkpoints/phoneme-recognizer \
        --speaker-encoder checkpoints/speaker-encoder --data data/speech

``--cards`` also writes the table into each generator folder's README.md.
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import torch

from mmtok.tasks.tts import MODES, evaluate_tts
from mmtok.asr import evaluate_recognizer
from mmtok.codecs.evaluate import evaluate_codec
from common import named_folders, publish
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table
from mmtok.metrics import error_rate_difference_interval, error_rate_interval

SECTION = "## Intelligibility (bench/tts_intelligibility.py)"
VOICES = {"speaker": "corpus voice", "prompt": "3 s prompt"}
SAMPLING_FLAGS = ("sampler", "steps", "temperature", "top_k", "cfg_scale")


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def describe(sampling: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sampling.items() if v is not None) or "plain"


def model_rows(name: str, folder: Path, judge, encoder, sampling: dict, args) -> tuple[list[dict], dict]:
    """The model's table rows (resynthesis floor, then one per mode) and its results by mode."""
    model = load_pretrained(folder)
    tokenizer = model.load_tokenizer(near=folder)
    resynthesis = evaluate_codec(tokenizer, args.data, split=args.split, max_items=args.max_items,
                                 quantizers=[model.num_codebooks], judge=judge)[0]
    rows = [{"model": name, "speech": f"real audio through the codec ({model.num_codebooks} codebooks)",
             "per %": percent(resynthesis["per"]), "95 % interval": "-", "duration ratio": 1.0,
             "duration error": "-", "ended": "-", "generation_s": "-"}]
    used = model.sampling_with(**sampling)  # the flags given, over the model's recorded defaults
    results = {}
    for mode in args.modes:
        result = evaluate_tts(model, tokenizer, judge, args.data, mode=mode, split=args.split, max_items=args.max_items,
                              batch_size=args.batch_size, seed=args.seed, speaker_encoder=encoder, **used)
        low, high = error_rate_interval(result["references"], result["hypotheses"], seed=args.seed)
        row = {"model": name, "speech": f"generated, {VOICES[mode]} ({describe(used)})",
               "per %": percent(result["per"]),
               "95 % interval": f"{percent(low)}-{percent(high)}", "duration ratio": result["duration_ratio"],
               "duration error": result["duration_error"],
               "ended": "-" if result["ended"] is None else result["ended"], "generation_s": result["generation_s"]}
        if encoder is not None:
            row |= {"speaker similarity": result["speaker_similarity"], "real similarity": result["real_similarity"]}
        rows.append(row)
        results[mode] = result
    return rows, results


def difference_rows(results: dict[str, dict], seed: int) -> list[dict]:
    """Paired bootstrap intervals of PER(a) - PER(b) for every pair of models, mode by mode."""
    rows = []
    for (name_a, by_mode_a), (name_b, by_mode_b) in combinations(results.items(), 2):
        for mode in by_mode_a.keys() & by_mode_b.keys():
            a, b = by_mode_a[mode], by_mode_b[mode]
            low, high = error_rate_difference_interval(a["references"], a["hypotheses"], b["hypotheses"], seed=seed)
            verdict = f"{name_a} wins" if high < 0 else f"{name_b} wins" if low > 0 else "no clear winner"
            rows.append({"models": f"{name_a} - {name_b}", "speech": VOICES[mode],
                         "PER difference (points)": percent(a["per"] - b["per"]),
                         "95 % interval": f"{percent(low)} to {percent(high)}", "at 95 %": verdict})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                        help="a TTS generator Hub folder (repeat)")
    parser.add_argument("--judge", required=True, help="phoneme recognizer Hub folder")
    parser.add_argument("--speaker-encoder", help="speaker embedding model Hub folder (adds speaker similarity)")
    parser.add_argument("--data", default="data/speech")
    parser.add_argument("--split", choices=("valid", "test"), default="test",
                        help="valid: to choose sampling settings without looking at the test sentences")
    parser.add_argument("--max-items", type=int, default=100, help="held-out utterances")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sampler", help="masked diffusion sampler (default: the model's recorded one)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--cfg-scale", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--cards", action="store_true", help="write the table into each generator's model card")
    args = parser.parse_args()

    models = named_folders(parser, args.model, "--model")
    torch.manual_seed(args.seed)
    judge = load_pretrained(args.judge)
    encoder = load_pretrained(args.speaker_encoder) if args.speaker_encoder else None
    floor = evaluate_recognizer(judge, args.data, split=args.split, max_items=args.max_items)
    rows = [{"model": "-", "speech": "real audio (floor)", "per %": percent(floor["per"]), "95 % interval": "-",
             "duration ratio": 1.0, "duration error": "-", "ended": "-", "generation_s": "-"}]
    sampling = {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None}
    results = {}
    for name, folder in models.items():
        model_table, results[name] = model_rows(name, folder, judge, encoder, sampling, args)
        rows += model_table
    text = (f"{args.split.capitalize()} split of `{args.data}` ({floor['utterances']} held-out sentences); "
            f"PER by `{args.judge}` with a "
            "bootstrap 95 % interval over sentences; sampling (in brackets): each model's recorded defaults"
            + (f", overridden by {describe(sampling)}" if sampling else "")
            + f", seed {args.seed}. `duration ratio`: mean generated / real duration; `duration error`: mean "
            "|generated / real - 1|; `ended`: fraction stopped by the end token; `generation_s`: wall time of "
            "generation and decoding."
            + (f" Similarities: cosine of `{args.speaker_encoder}` embeddings to the 3 s prompt (cut from another "
               "utterance of the same speaker), of the generated speech and of the real utterance."
               if encoder is not None else "")
            + "\n\n" + markdown_table(rows))
    differences = difference_rows(results, args.seed)
    if differences:
        text += ("\n\nPaired bootstrap over the same sentences (PER of the first model minus the second; "
                 "negative: the first is more intelligible):\n\n" + markdown_table(differences))
    publish(text, out=args.out, folders=list(models.values()), section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
