"""Vec-Tok: token rates, resynthesis, zero-shot voice conversion, and X-Codec at similar bits/s.

One run on the held-out sentences of the speech corpus (:func:`mmtok.tasks.voice_conversion.evaluate_vectok`):

- tokens per second and bits per second of the 50 Hz units and of their BPE ids (log2 of the
  vocabulary per token), and the same for BPE vocabularies refitted on the train split's units
  (``--bpe-sizes``), to show the length / vocabulary trade-off;
- PER (the phoneme recognizer) of the real audio (floor), of the vocoder on the true vectors, of
  resynthesis from the units with the utterance's own first 3 s as the prompt (the tokens' ceiling),
  and of X-Codec at 1 and 2 codebooks (500 and 1,000 bits/s) on the same sentences;
- with ``--alignments``: how much the units say about the speaker and about the phoneme (normalised mutual
  information over frames);
- voice conversion of each sentence into the voice of the next test utterance by another speaker:
  PER (content kept) and speaker similarity to the target prompt and to the source, next to real
  same-speaker and different-speaker pairs (speaker embedding model: ``--speaker-encoder``);
- the inverse k-means' use of its prompt: how far its output moves when the prompt's words change
  (same voice) and when its voice changes.

    python bench/vectok.py --model checkpoints/vectok-speech --xcodec checkpoints/xcodec-speech-16k \
        --judge checkpoints/phoneme-recognizer --speaker-encoder checkpoints/speaker-encoder --max-items 100
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from common import publish
from mmtok.codecs.evaluate import evaluate_codec
from mmtok.codecs.vectok import UnitBPE
from mmtok.data.audio import load_audio
from mmtok.data.manifest import read_manifest
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table
from mmtok.tasks.voice_conversion import evaluate_vectok

SECTION = "## Tokens, resynthesis and voice conversion (bench/vectok.py)"


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


@torch.no_grad()
def bpe_sweep(model, data: str, sizes: list[int], *, train_items: int, test_items: int) -> list[dict]:
    """BPE vocabularies fitted on the units of ``train_items`` train utterances: ids per second and
    bits per second on ``test_items`` test utterances."""
    entries = read_manifest(data, key="audio")

    def units(split: str, count: int) -> tuple[list[list[int]], float]:
        chosen = [e for e in entries if e.get("split") == split][:count]
        sequences, seconds = [], 0.0
        for entry in chosen:
            audio = load_audio(entry["audio"], sample_rate=model.sample_rate)
            sequences.append(model.encode(audio[None]).codes[0, 0].tolist())
            seconds += audio.shape[-1] / model.sample_rate
        return sequences, seconds

    train, _ = units("train", train_items)
    test, seconds = units("test", test_items)
    rows = []
    for size in sizes:
        bpe = UnitBPE.train(train, num_units=model.num_units, vocab_size=size)
        ids = sum(len(bpe.encode(s)) for s in test)
        rows.append({"BPE vocabulary": size, "ids / s": ids / seconds,
                     "length vs units": ids / sum(map(len, test)), "bits / s": ids / seconds * math.log2(size)})
    return rows


@torch.no_grad()
def unit_information(model, alignments: str, *, max_items: int) -> dict:
    """Normalised mutual information of the units with the speaker and with the phoneme over the frames
    of ``max_items`` train utterances; the phoneme of each frame comes from the forced-aligned durations of a
    token cache (``mmtok tokenize ... --align``; only its manifest's ``durations`` are read)."""
    from sklearn.metrics import normalized_mutual_info_score

    entries = [e for e in read_manifest(Path(alignments) / "manifest.jsonl", key="audio")
               if e.get("split") == "train" and "durations" in e][:max_items]
    units, speakers, phonemes = [], [], []
    for entry in entries:
        frames = sum(entry["durations"])
        audio = load_audio(entry["audio"], sample_rate=model.sample_rate)
        units += model.encode(audio[None]).codes[0, 0, :frames].tolist()
        speakers += [entry["speaker"]] * frames
        phonemes += [p for p, n in zip(entry["phonemes"].split(), entry["durations"]) for _ in range(n)]
    return {"frames": len(units), "speaker": normalized_mutual_info_score(speakers, units),
            "phoneme": normalized_mutual_info_score(phonemes, units)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Vec-Tok Hub folder")
    parser.add_argument("--xcodec", help="an RVQ/X-Codec Hub folder to compare at 1 and 2 codebooks")
    parser.add_argument("--judge", required=True, help="phoneme recognizer Hub folder")
    parser.add_argument("--speaker-encoder", help="speaker embedding model Hub folder")
    parser.add_argument("--data", default="data/speech")
    parser.add_argument("--max-items", type=int, default=100)
    parser.add_argument("--bpe-sizes", type=int, nargs="*", default=[500, 1000, 2000, 4000])
    parser.add_argument("--bpe-train-items", type=int, default=1000)
    parser.add_argument("--alignments", help="a token cache built with --align over the same corpus: adds the "
                                             "units' mutual information with speaker and phoneme")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    parser.add_argument("--cards", action="store_true", help="write the tables into the model's card")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_pretrained(args.model).eval()
    judge = load_pretrained(args.judge)
    encoder = load_pretrained(args.speaker_encoder) if args.speaker_encoder else None
    result = evaluate_vectok(model, judge, args.data, max_items=args.max_items, speaker_encoder=encoder)
    rows = [{"speech": "real audio (floor)", "bits / s": "-", "tokens / s": "-", "per %": percent(result["per_real"])},
            {"speech": "Vec-Tok vocoder on the true vectors (no tokens)", "bits / s": "-", "tokens / s": "-",
             "per %": percent(result["per_vocoder"])},
            {"speech": f"Vec-Tok units (K = {model.num_units}), own 3 s prompt", "bits / s": result["units_bps"],
             "tokens / s": result["units_per_s"], "per %": percent(result["per_resynthesis"])},
            {"speech": f"the same as BPE ids (vocabulary {model.bpe.vocab_size}; decoding undoes the BPE exactly)",
             "bits / s": result["bpe_bps"], "tokens / s": result["bpe_per_s"],
             "per %": percent(result["per_resynthesis"])}]
    if args.xcodec:
        codec = load_pretrained(args.xcodec)
        for row in evaluate_codec(codec, args.data, max_items=args.max_items, quantizers=[1, 2], judge=judge):
            n = row["quantizers"]
            rate = codec.frame_rate * sum(math.log2(s) for s in codec.codebook_sizes[:n])
            rows.append({"speech": f"{args.xcodec}, {n} codebook(s)", "bits / s": rate,
                         "tokens / s": codec.frame_rate * n, "per %": percent(row["per"])})
    text = (f"Test split of `{args.data}`, {result['utterances']} sentences ({result['seconds']:.0f} s); PER by "
            f"`{args.judge}`.\n\n" + markdown_table(rows))
    conversion = [{"speech": "voice conversion into another speaker's 3 s", "per %": percent(result["per_conversion"]),
                   **({"similarity to target": result["similarity_conversion_to_target"],
                       "similarity to source": result["similarity_conversion_to_source"]} if encoder else {})}]
    if encoder:
        conversion += [
            {"speech": "resynthesis with its own 3 s", "per %": percent(result["per_resynthesis"]),
             "similarity to target": "-", "similarity to source": result["similarity_resynthesis_to_original"]},
            {"speech": "real, another utterance of the same speaker", "per %": "-",
             "similarity to target": "-", "similarity to source": result["similarity_real_same_speaker"]},
            {"speech": "real, the target speaker's prompt", "per %": "-", "similarity to target": 1.0,
             "similarity to source": result["similarity_real_other_speaker"]}]
    text += ("\n\nZero-shot voice conversion: each sentence's units decoded with the first 3 s of the next test "
             "utterance by another speaker"
             + (f"; cosine similarity of `{args.speaker_encoder}` embeddings" if encoder else "") + ".\n\n"
             + markdown_table(conversion))
    text += ("\n\nThe inverse k-means' prompt: RMS change of its output vectors (standardised units) when the "
             f"prompt's words change but not its voice: {result['prompt_words_change']:.3f}; when its voice "
             f"changes: {result['prompt_voice_change']:.3f} (ratio "
             f"{result['prompt_words_change'] / max(result['prompt_voice_change'], 1e-9):.2f}).")
    if args.alignments:
        info = unit_information(model, args.alignments, max_items=400)
        text += (f"\n\nWhat the units say (normalised mutual information over {info['frames']} frames of 400 train "
                 f"utterances, phonemes by forced alignment): with the speaker {info['speaker']:.3f}, with the "
                 f"phoneme {info['phoneme']:.3f}.")
    if args.bpe_sizes:
        sweep = bpe_sweep(model, args.data, args.bpe_sizes, train_items=args.bpe_train_items,
                          test_items=args.max_items)
        text += (f"\n\nBPE vocabularies fitted on the units of {args.bpe_train_items} train utterances, measured "
                 "on the same test sentences (units: 50 / s):\n\n" + markdown_table(sweep))
    publish(text, out=args.out, folders=[args.model], section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
