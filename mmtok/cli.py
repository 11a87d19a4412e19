"""The ``mmtok`` command.

``mmtok fit|validate|test -c recipes/....yaml`` go through :class:`LightningCLI` (every option in the
YAML, overridable on the command line, ``--print_config`` works, resume with ``--ckpt_path``). The
other sub-commands are plain tools around Hub folders and media files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def run_lightning_cli(args: list[str]) -> None:
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


# -- data ---------------------------------------------------------------------------------------
def cmd_data(args: argparse.Namespace) -> None:
    from mmtok.data.speech import build_speech_corpus

    manifest = build_speech_corpus(args.out, num_utterances=args.num_utterances, seed=args.seed,
                                   sample_rate=args.sample_rate, num_workers=args.workers)
    print(f"speech corpus: {manifest}")


# -- export -------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> None:
    from mmtok.export import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.out_dir, data=args.data, split=args.split,
                               max_items=args.max_items)
    print(f"Hub folder written to {folder}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mmtok.codecs.evaluate import evaluate_codec
    from mmtok.hub import load_pretrained
    from mmtok.media import markdown_table, write_table

    codec = load_pretrained(args.model)
    rows = evaluate_codec(codec, args.data, split=args.split, max_items=args.max_items,
                          quantizers=args.quantizers, examples_dir=args.out, num_examples=args.examples)
    table = write_table(Path(args.out) / "metrics.md", rows) if args.out else markdown_table(rows)
    print(table)
    if args.out:
        print(f"metrics, wavs and spectrograms written to {Path(args.out).resolve()}")


# -- encode / decode ----------------------------------------------------------------------------
def _pairs(source: Path, target: Path, in_suffixes: tuple[str, ...], out_suffix: str):
    """(input file, output file) pairs for a file or a folder (searched recursively)."""
    if not source.exists():
        raise SystemExit(f"mmtok: input {source} does not exist")
    if source.is_file():
        return [(source, target / (source.stem + out_suffix) if target.is_dir() else target)]
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in in_suffixes)
    if not files:
        raise SystemExit(f"mmtok: no {'/'.join(in_suffixes)} files under {source}")
    return [(p, target / p.relative_to(source).with_suffix(out_suffix)) for p in files]


def cmd_encode(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from mmtok.codecs.chunked import encode_chunked
    from mmtok.data.audio import load_audio
    from mmtok.hub import load_pretrained

    codec = load_pretrained(args.model)
    pairs = _pairs(Path(args.input), Path(args.output), AUDIO_SUFFIXES, ".safetensors")
    for source, target in tqdm(pairs, desc="encode", unit="file", disable=len(pairs) == 1):
        audio = load_audio(source, sample_rate=codec.sample_rate)[None]  # [1, 1, N]
        tokens = encode_chunked(codec, audio, chunk_seconds=args.chunk_seconds,
                                num_quantizers=args.num_quantizers, progress=len(pairs) == 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        tokens.save(target)
    print(f"wrote {len(pairs)} token file(s) to {Path(args.output).resolve()}")


def cmd_decode(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from mmtok.codecs.chunked import decode_chunked
    from mmtok.hub import load_pretrained
    from mmtok.media import write_spectrogram_png, write_wav
    from mmtok.tokens import Tokens

    codec = load_pretrained(args.model)
    pairs = _pairs(Path(args.input), Path(args.output), (".safetensors",), ".wav")
    for source, target in tqdm(pairs, desc="decode", unit="file", disable=len(pairs) == 1):
        audio = decode_chunked(codec, Tokens.load(source), chunk_seconds=args.chunk_seconds,
                               num_quantizers=args.num_quantizers, progress=len(pairs) == 1)
        write_wav(target, audio[0], sample_rate=codec.sample_rate)
        if args.spectrogram:
            write_spectrogram_png(target.with_suffix(".png"), audio[0], sample_rate=codec.sample_rate,
                                  title=target.name)
    print(f"wrote {len(pairs)} wav file(s) to {Path(args.output).resolve()}")


# -- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmtok",
        description="Multimodal discrete-token generation. Training: `mmtok fit -c recipes/<x>.yaml` "
                    "(also validate/test; see `mmtok fit --help`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build an embedded corpus")
    data.add_argument("name", choices=["speech"])
    data.add_argument("--out", required=True, help="output folder")
    data.add_argument("--num-utterances", type=int, default=2000)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--sample-rate", type=int, default=16000)
    data.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes")
    data.set_defaults(func=cmd_data)

    export = sub.add_parser("export", help="Lightning checkpoint -> Hub folder (config + safetensors + card)")
    export.add_argument("checkpoint")
    export.add_argument("out_dir")
    export.add_argument("--data", help="corpus to measure the card's metrics on (manifest folder)")
    export.add_argument("--split", default="test")
    export.add_argument("--max-items", type=int, default=None)
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser("evaluate", help="measure a codec on a corpus split at several bitrates")
    evaluate.add_argument("model", help="Hub folder or repo id")
    evaluate.add_argument("data", help="manifest folder or folder of audio")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--max-items", type=int, default=None)
    evaluate.add_argument("--quantizers", type=int, nargs="+", default=None)
    evaluate.add_argument("--out", help="folder for metrics.md and example wavs/pngs")
    evaluate.add_argument("--examples", type=int, default=3, help="examples written to --out")
    evaluate.set_defaults(func=cmd_evaluate)

    for name, func, what in (("encode", cmd_encode, "audio file/folder -> token .safetensors"),
                             ("decode", cmd_decode, "token .safetensors file/folder -> wav")):
        p = sub.add_parser(name, help=what)
        p.add_argument("model", help="Hub folder or repo id")
        p.add_argument("input")
        p.add_argument("output")
        p.add_argument("--num-quantizers", type=int, default=None, help="keep the first N codebooks")
        p.add_argument("--chunk-seconds", type=float, default=30.0, help="bounded-memory chunk length")
        if name == "decode":
            p.add_argument("--spectrogram", action="store_true", help="also write a spectrogram png")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        run_lightning_cli(argv)
        return
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
