"""A long speech file for memory and time measurements of `mmtok encode` / `decode`: corpus
utterances back to back (train split first), written block by block, repeated until ``--hours``.

    python bench/long_audio.py --data data/speech --hours 1 --out outputs/bench/speech_1h.wav
    /usr/bin/time -v mmtok encode checkpoints/rvq-speech-16k outputs/bench/speech_1h.wav outputs/bench/1h.safetensors
    /usr/bin/time -v mmtok decode checkpoints/rvq-speech-16k outputs/bench/1h.safetensors outputs/bench/1h.wav

(the "Maximum resident set size" and "Elapsed (wall clock) time" lines are the figures).
"""

from __future__ import annotations

import argparse
import itertools

from mmtok.data.audio import load_audio
from mmtok.data.manifest import read_manifest
from mmtok.media import write_wav_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/speech")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    entries = sorted(read_manifest(args.data, key="audio"), key=lambda e: e.get("split") != "train")
    needed = round(args.hours * 3600 * args.sample_rate)

    def blocks():
        written = 0
        for entry in itertools.cycle(entries):
            audio = load_audio(entry["audio"], sample_rate=args.sample_rate)[:, : needed - written]
            written += audio.shape[-1]
            yield audio
            if written >= needed:
                return

    write_wav_blocks(args.out, blocks(), sample_rate=args.sample_rate)
    print(f"{args.hours:g} h of speech ({needed} samples) written to {args.out}")


if __name__ == "__main__":
    main()
