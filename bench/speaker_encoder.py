"""How good a judge the speaker encoder is, and the floor a TTS's speaker similarity is compared to.

Speaker similarity of prompted speech to its prompt (``mmtok.metrics.speaker_similarity``, a cosine)
means little alone: two *real* utterances of one speaker do not reach 1 either. On the whole test
utterances of the speech corpus this prints the speaker-ID accuracy, the mean cosine of pairs of
different utterances of the same speaker (the floor) and of different speakers, and the equal error
rate of the cosine as a same-speaker test; then the same cosines in the TTS bench's setting, each
utterance against the first ``--prompt-seconds`` of another utterance (same speaker: the next one of
that speaker; different: the next utterance of the next speaker), and the per-speaker accuracy.

With ``--codec NAME=FOLDER`` (repeatable) each test utterance is also passed through that codec at
``--quantizers`` codebooks, and the speaker-ID accuracy of the resyntheses, their cosine to their own
originals and to the same 3 s prompts are printed: the reference for a TTS that generates that codec's
tokens (its speech is made of such reconstructions).

    mmtok data speech --out data/speech
    python bench/speaker_encoder.py checkpoints/speaker-encoder --data data/speech \
        --codec xcodec=checkpoints/xcodec-speech-16k --codec rvq=checkpoints/rvq-speech-16k-baseline

``--cards`` also writes the tables into the folder's README.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import named_folders, publish
from mmtok.data.manifest import read_manifest
from mmtok.errors import DataError, UsageError
from mmtok.hub import load_pretrained
from mmtok.judges import SpeakerEncoder
from mmtok.judges.speakers import evaluate_speaker_encoder
from mmtok.media import load_audio, markdown_table
from mmtok.metrics import speaker_similarity
from mmtok.metrics.audio import speaker_embeddings_of

SECTION = "## Judge quality (bench/speaker_encoder.py)"


def prompt_pairs(speakers: list[str]) -> tuple[list[int], list[int]]:
    """For each utterance i, another utterance of the same speaker (the next one, cyclically) and an
    utterance of another speaker (the next speaker's, in sorted order): (same [N], different [N]) indices;
    utterances whose speaker has no other utterance are left out of ``same`` (index -1)."""
    by_speaker: dict[str, list[int]] = {}
    for index, name in enumerate(speakers):
        by_speaker.setdefault(name, []).append(index)
    names = sorted(by_speaker)
    same, different = [], []
    for index, name in enumerate(speakers):
        mine = by_speaker[name]
        same.append(mine[(mine.index(index) + 1) % len(mine)] if len(mine) > 1 else -1)
        other = by_speaker[names[(names.index(name) + 1) % len(names)]]
        different.append(other[mine.index(index) % len(other)])
    return same, different


@torch.no_grad()
def resynthesize(codec, audios: list[torch.Tensor], sample_rate: int, quantizers: int) -> list[torch.Tensor]:
    """Each waveform [1, N] at ``sample_rate`` encoded and decoded by ``codec`` (a speech Tokenizer) with its
    first ``quantizers`` codebooks, one at a time, trimmed to N: [1, N] each, at ``sample_rate``."""
    if getattr(codec, "modality", None) != "audio" or codec.sample_rate != sample_rate:
        raise DataError(f"--codec: expected a {sample_rate} Hz speech codec, got a {type(codec).__name__}")
    if not 1 <= quantizers <= codec.num_codebooks:
        raise UsageError(f"--quantizers {quantizers}: the codec has {codec.num_codebooks} codebooks")
    codec.eval()
    return [codec.decode(codec.encode(audio[None]), num_quantizers=quantizers)[0, :, : audio.shape[-1]]
            for audio in audios]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="speaker encoder Hub folder")
    parser.add_argument("--data", default="data/speech")
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--max-items", type=int, default=None, help="the split's first utterances")
    parser.add_argument("--prompt-seconds", type=float, default=3.0)
    parser.add_argument("--codec", action="append", default=[], metavar="NAME=FOLDER",
                        help="also score the test utterances resynthesized by this codec (repeat)")
    parser.add_argument("--quantizers", type=int, default=4, help="codebooks the --codec resyntheses use")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    parser.add_argument("--cards", action="store_true", help="write the tables into the model's README.md")
    args = parser.parse_args()
    codecs = named_folders(parser, args.codec, "--codec")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    model = load_pretrained(args.model)
    if not isinstance(model, SpeakerEncoder):
        parser.error(f"{args.model}: expected a SpeakerEncoder folder, got a {type(model).__name__}")
    scored = evaluate_speaker_encoder(model, args.data, split=args.split, max_items=args.max_items)

    entries = [e for e in read_manifest(args.data, key="audio") if e.get("split") == args.split][:args.max_items]
    audios = [load_audio(e["audio"], sample_rate=model.sample_rate) for e in entries]  # [1, N] each
    speakers = [str(e["speaker"]) for e in entries]
    prompt = [audio[:, : round(args.prompt_seconds * model.sample_rate)] for audio in audios]
    same, different = prompt_pairs(speakers)
    kept = [i for i, j in enumerate(same) if j >= 0]
    same_cosine = speaker_similarity(model, [audios[i] for i in kept], [prompt[same[i]] for i in kept],
                                     model.sample_rate)
    different_cosine = speaker_similarity(model, audios, [prompt[j] for j in different], model.sample_rate)

    n, split = scored["utterances"], args.split
    rows = [
        {"measure": f"speaker-ID accuracy ({n} {split} utterances, {model.num_speakers} speakers)",
         "value": scored["accuracy"]},
        {"measure": f"cosine, two utterances of the same speaker ({scored['same_pairs']} pairs): the floor",
         "value": scored["same_cosine"]},
        {"measure": f"cosine, utterances of different speakers ({scored['different_pairs']} pairs)",
         "value": scored["different_cosine"]},
        {"measure": "equal error rate of the cosine (same vs. different speaker)", "value": scored["eer"]},
        {"measure": f"cosine, utterance vs. first {args.prompt_seconds:g} s of another of the same speaker "
                    f"({len(kept)}): the floor of a prompted TTS", "value": float(same_cosine.mean())},
        {"measure": f"cosine, utterance vs. first {args.prompt_seconds:g} s of another speaker's ({n})",
         "value": float(different_cosine.mean())},
    ]
    for name, folder in codecs.items():
        resynthesized = resynthesize(load_pretrained(folder), audios, model.sample_rate, args.quantizers)
        own = speaker_similarity(model, resynthesized, audios, model.sample_rate)
        prompted = speaker_similarity(model, [resynthesized[i] for i in kept], [prompt[same[i]] for i in kept],
                                      model.sample_rate)
        embeddings = speaker_embeddings_of(model, resynthesized, sample_rate=model.sample_rate)
        predicted = [model.speakers[i] for i in model.cosines(embeddings).argmax(-1).tolist()]
        where = f"through `{folder}` ({args.quantizers} codebooks)"
        rows += [{"measure": f"speaker-ID accuracy, utterances {where} ({n})",
                  "value": sum(p == s for p, s in zip(predicted, speakers)) / n},
                 {"measure": f"cosine, utterance {where} vs. itself ({n})", "value": float(own.mean())},
                 {"measure": f"cosine, utterance {where} vs. first {args.prompt_seconds:g} s of another of the same "
                             f"speaker ({len(kept)}): the reference for a TTS on `{name}` tokens",
                  "value": float(prompted.mean())}]
    per_speaker = {"speaker": "accuracy", **scored["per_speaker"]}
    text = (f"`{args.model}` on the `{split}` split of `{args.data}` (whole utterances, {model.embedding_dim}-d "
            f"embeddings; {time.perf_counter() - start:.0f} s on {args.threads} thread(s)):\n\n{markdown_table(rows)}\n"
            f"Per-speaker accuracy:\n\n{markdown_table([per_speaker])}")
    publish(text, out=args.out, folders=[Path(args.model)], section=SECTION, cards=args.cards)


if __name__ == "__main__":
    main()
