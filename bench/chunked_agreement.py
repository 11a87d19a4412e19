"""Chunked coding against whole-file coding: do long files get the codes of one pass?

For each tokenizer (a Hub folder), a long signal is built from the corpus test split (utterances back
to back, cut off the frame grid), encoded and decoded whole and in chunks of ``--chunk-seconds``
with the tokenizer's declared receptive field as context (or ``--context-seconds``). The table has
the fraction of frames whose codes agree, per codebook, the largest sample difference of the decoded
audio, and both timings; whole-file coding is the reference.

    python bench/chunked_agreement.py --codec xcodec=checkpoints/xcodec-speech-16k \
        --codec rvq=checkpoints/rvq-speech-16k --data data/speech --seconds 50 --chunk-seconds 30
"""

from __future__ import annotations

import argparse
import time

import torch

from common import named_folders, publish
from mmtok.codecs.chunked import decode_chunked, encode_chunked
from mmtok.data.audio import AudioDataModule
from mmtok.hub import load_pretrained
from mmtok.media import markdown_table

SECTION = "## Chunked coding (bench/chunked_agreement.py)"


def long_signal(data: str, sample_rate: int, seconds: float) -> torch.Tensor:
    """[1, 1, N]: test utterances back to back, N = seconds · sample_rate + 123 (off the frame grid)."""
    module = AudioDataModule(path=data, sample_rate=sample_rate, valid_batch_size=1)
    module.setup("test")
    needed, pieces = round(seconds * sample_rate) + 123, []
    for batch in module.test_dataloader():
        pieces.append(batch["audio"][0, 0])
        if sum(p.numel() for p in pieces) >= needed:
            return torch.cat(pieces)[:needed].view(1, 1, -1)
    raise ValueError(f"{data}: the test split holds less than {seconds} s of audio")


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--data", default="data/speech")
    parser.add_argument("--seconds", type=float, default=50.0)
    parser.add_argument("--chunk-seconds", type=float, default=30.0)
    parser.add_argument("--context-seconds", type=float, help="override the tokenizers' receptive fields")
    parser.add_argument("--out")
    parser.add_argument("--cards", action="store_true")
    args = parser.parse_args()
    codecs = named_folders(parser, args.codec, "--codec")
    rows = []
    with torch.no_grad():
        for name, folder in codecs.items():
            codec = load_pretrained(folder).eval()
            audio = long_signal(args.data, codec.sample_rate, args.seconds)
            whole, encode_whole = timed(codec.encode, audio)
            chunked, encode_chunks = timed(encode_chunked, codec, audio, chunk_seconds=args.chunk_seconds,
                                           context_seconds=args.context_seconds)
            decoded_whole, decode_whole = timed(codec.decode, whole)
            decoded, decode_chunks = timed(decode_chunked, codec, whole, chunk_seconds=args.chunk_seconds,
                                           context_seconds=args.context_seconds)
            field = codec.receptive_field
            agreement = (chunked.codes == whole.codes).float().mean(dim=(0, 2))
            context = "-" if field is None else f"{field.encode_context} / {field.decode_context}"
            rows.append({"codec": name, "context (frames)": context,
                         "agreement per codebook": " / ".join(f"{float(a):.3f}" for a in agreement),
                         "max decoded difference": f"{float((decoded - decoded_whole).abs().max()):.2e}",
                         "encode whole / chunked (s)": f"{encode_whole:.1f} / {encode_chunks:.1f}",
                         "decode whole / chunked (s)": f"{decode_whole:.1f} / {decode_chunks:.1f}"})
    context = ("the receptive field (encode / decode)" if args.context_seconds is None
               else f"{args.context_seconds:g} s")
    text = (f"{args.seconds:g} s of `{args.data}` test speech, {args.chunk_seconds:g} s chunks, context {context}:\n\n"
            + markdown_table(rows) + "\n")
    publish(text, out=args.out, folders=list(codecs.values()), section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
