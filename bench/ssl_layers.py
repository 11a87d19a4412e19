"""Which layer of a speech SSL model to take as Vec-Tok's speech vectors: a linear CTC phoneme probe per layer.

Every layer's hidden states (the embedded :class:`~mmtok.codecs.vectok.SpeechSSL`, or a ``transformers``
model through its spec) are probed by one linear layer trained with CTC on the train split
(:func:`mmtok.codecs.probe.phoneme_probe`); the test split's PER says how much phonetic content a
linear read-out finds there. The MFCC input features are probed the same way as a reference.

    python bench/ssl_layers.py --ssl runs/vectok-ssl/export --data data/speech --train-items 500 --test-items 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from einops import rearrange

from common import publish
from mmtok.codecs.probe import phoneme_probe
from mmtok.codecs.semantic import build_semantic_encoder
from mmtok.codecs.vectok import mfcc_frames
from mmtok.media import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ssl", required=True, help="SpeechSSL Hub folder")
    parser.add_argument("--type", default="ssl", choices=("ssl", "hf"), help="ssl: mmtok's; hf: a transformers one")
    parser.add_argument("--layers", type=int, nargs="*", help="default: every layer")
    parser.add_argument("--data", default="data/speech")
    parser.add_argument("--train-items", type=int, default=500)
    parser.add_argument("--test-items", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    first = build_semantic_encoder({"type": args.type, "path": args.ssl, "layer": 0})
    config = json.loads((Path(args.ssl) / "config.json").read_text())
    depth = config["num_layers"] if args.type == "ssl" else config["num_hidden_layers"]
    rows = []

    def probe(name: str, features_of) -> None:
        result = phoneme_probe(first, args.data, train_items=args.train_items, test_items=args.test_items,
                               epochs=args.epochs, features=features_of)
        rows.append({"features": name, "probe PER % (test)": 100 * result["probe_per"],
                     "train PER %": 100 * result["train_per"]})
        print(rows[-1], flush=True)

    def frames(audio, lengths):
        return -(-lengths // first.hop_length), -(-audio.shape[-1] // first.hop_length)

    def mfcc(audio, lengths):
        valid, total = frames(audio, lengths)
        return rearrange(mfcc_frames(audio, lengths, num_frames=total), "b d t -> b t d"), valid

    probe("MFCC + deltas (39, the iteration-1 targets' input)", mfcc)
    for layer in args.layers if args.layers is not None else range(depth + 1):
        encoder = build_semantic_encoder({"type": args.type, "path": args.ssl, "layer": layer})

        def hidden(audio, lengths, encoder=encoder):
            valid, total = frames(audio, lengths)
            return rearrange(encoder.features(audio, lengths, num_frames=total), "b d t -> b t d"), valid

        probe(f"layer {layer}", hidden)
    text = (f"Linear CTC phoneme probe ({args.epochs} epochs on {args.train_items} train utterances of `{args.data}`, "
            f"PER on {args.test_items} test utterances) of `{args.ssl}`'s layers:\n\n" + markdown_table(rows))
    publish(text, out=args.out, folders=[], section="", cards=False)


if __name__ == "__main__":
    main()
