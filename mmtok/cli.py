"""The ``mmtok`` command.

``mmtok fit|validate|test -c recipes/....yaml`` go through :class:`LightningCLI` (every option in the
YAML, overridable on the command line, ``--print_config`` works, resume with ``--ckpt_path``). The
other sub-commands are plain tools around Hub folders and media files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmtok.errors import DataError, MissingFileError, MmtokError, UsageError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def run_lightning_cli(args: list[str]) -> None:
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from mmtok.training.callbacks import PlainProgress, RandomStates, Throughput

    LightningCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        # added to a recipe's own callbacks (Throughput first: the progress line prints this step's rate)
        trainer_defaults={"callbacks": [Throughput(), RandomStates(), PlainProgress()]},
    )


# -- data ---------------------------------------------------------------------------------------
def _data_speech(args: argparse.Namespace) -> Path:
    from mmtok.data.speech import build_speech_corpus

    return build_speech_corpus(args.out, num_utterances=args.num_utterances, seed=args.seed,
                               sample_rate=args.sample_rate, num_workers=args.workers, flite=args.flite)


def _data_digits(args: argparse.Namespace) -> Path:
    from mmtok.data.images import build_digits_corpus

    return build_digits_corpus(args.out, source=args.source, image_size=args.image_size, resize=args.resize,
                               seed=args.seed, max_per_class=args.max_per_class, augment_copies=args.augment_copies)


def _data_moving_digits(args: argparse.Namespace) -> Path:
    from mmtok.data.video import build_moving_digits

    return build_moving_digits(args.out, num_clips=args.num_clips, seed=args.seed, frame_size=args.frame_size,
                               min_frames=args.min_frames, max_frames=args.max_frames, max_digits=args.max_digits,
                               fps=args.fps, video_format=args.format, source=args.source)


def _data_music(args: argparse.Namespace) -> Path:
    from mmtok.data.music import build_music_corpus

    return build_music_corpus(args.out, num_works=args.num_works, programs_per_work=args.programs_per_work,
                              seed=args.seed, sample_rate=args.sample_rate, max_seconds=args.max_seconds,
                              num_workers=args.workers)


DATA_BUILDERS = {"speech": _data_speech, "digits": _data_digits, "moving-digits": _data_moving_digits,
                 "music": _data_music}


def cmd_data(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, expected a folder (new, or holding a corpus to update)")
    manifest = DATA_BUILDERS[args.name](args)
    print(f"{args.name} corpus: {manifest}")


# -- export -------------------------------------------------------------------------------------
def parse_settings(pairs: list[str], *, flag: str) -> dict:
    """``["cfg_scale=3", "sampler=maskgit"]`` -> ``{"cfg_scale": 3, "sampler": "maskgit"}`` (JSON values,
    else strings)."""
    import json

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {pair}: expected KEY=VALUE, e.g. cfg_scale=3")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def cmd_export(args: argparse.Namespace) -> None:
    from mmtok.export import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.out_dir, data=args.data, split=args.split,
                               max_items=args.max_items, judge=args.judge, half=args.half,
                               sampling=parse_settings(args.sampling, flag="--sampling"),
                               decoding=parse_settings(args.decoding, flag="--decoding"))
    print(f"Hub folder written to {folder}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mmtok.asr import PhonemeRecognizer, evaluate_recognizer
    from mmtok.codecs.seed import SeedTokenizer, evaluate_seed
    from mmtok.generators import TokenGenerator
    from mmtok.hub import load_pretrained
    from mmtok.judges.digits import DigitClassifier, evaluate_classifier
    from mmtok.judges.speakers import SpeakerEncoder, evaluate_speaker_encoder
    from mmtok.media import markdown_table, write_table

    model = load_pretrained(args.model)
    judge = load_pretrained(args.judge) if args.judge else None
    generator, codec = isinstance(model, TokenGenerator), getattr(model, "modality", None) == "audio"
    _refuse_flags(args, GENERATOR_FLAGS, applies=generator, to="generators")
    _refuse_flags(args, CODEC_FLAGS, applies=codec, to="audio tokenizers")
    if generator:
        rows = _evaluate_generator(model, judge, args)
    elif isinstance(model, PhonemeRecognizer):
        rows = [evaluate_recognizer(model, args.data, split=args.split, max_items=args.max_items)]
    elif isinstance(model, DigitClassifier):
        scored = evaluate_classifier(model, args.data, split=args.split, max_items=args.max_items)
        rows = [{"accuracy": scored["accuracy"], "images": scored["images"],
                 **{f"class_{k}": v for k, v in enumerate(scored["per_class"])}}]
    elif isinstance(model, SpeakerEncoder):
        scored = evaluate_speaker_encoder(model, args.data, split=args.split, max_items=args.max_items)
        per_speaker = scored.pop("per_speaker")
        rows = [{**scored, **{f"speaker_{name}": value for name, value in per_speaker.items()}}]
    elif isinstance(model, SeedTokenizer):
        rows = evaluate_seed(model, args.data, split=args.split, max_items=args.max_items, judge=judge)
    elif model.modality == "video":
        from mmtok.codecs.cvivit import evaluate_video_tokenizer

        rows = evaluate_video_tokenizer(model, args.data, split=args.split, max_items=args.max_items, judge=judge)
    elif model.modality == "image":
        from mmtok.codecs.vq_image import evaluate_image_tokenizer

        rows = evaluate_image_tokenizer(model, args.data, split=args.split, max_items=args.max_items, judge=judge)
    else:
        from mmtok.codecs.evaluate import evaluate_codec

        if judge is not None and not isinstance(judge, PhonemeRecognizer):
            raise UsageError(f"--judge {args.judge}: a {type(judge).__name__}, expected a phoneme recognizer")
        rows = evaluate_codec(model, args.data, split=args.split, max_items=args.max_items,
                              quantizers=args.quantizers, examples_dir=args.out,
                              num_examples=3 if args.examples is None else args.examples,
                              judge=judge)
    table = write_table(Path(args.out) / "metrics.md", rows) if args.out else markdown_table(rows)
    print(table)
    if args.out:
        print(f"metrics (and any examples) written to {Path(args.out).resolve()}")


GENERATOR_FLAGS = {"tokenizer": "--tokenizer", "samples": "--samples", "sampler": "--sampler", "steps": "--steps",
                   "temperature": "--temperature", "top_k": "--top-k", "cfg_scale": "--cfg-scale",
                   "choice_temperature": "--choice-temperature", "seed": "--seed"}
CODEC_FLAGS = {"quantizers": "--quantizers", "examples": "--examples"}
"""`mmtok evaluate`'s flags that only one kind of model takes (argument name -> flag)."""


def _refuse_flags(args: argparse.Namespace, flags: dict[str, str], *, applies: bool, to: str) -> None:
    """One line naming the flags given that do not apply to ``args.model`` (instead of ignoring them)."""
    given = [flag for name, flag in flags.items() if getattr(args, name) is not None]
    if given and not applies:
        raise UsageError(f"{', '.join(given)}: only for {to}, and {args.model} is not one")


def _evaluate_generator(generator, judge, args: argparse.Namespace) -> list[dict]:
    """A generator is measured by its task (a judge reads what it made)."""
    import torch

    from mmtok.tasks import build_task

    if judge is None:
        raise UsageError(f"--judge: missing; {args.model} is a generator, so give the model that reads its outputs "
                         "(a phoneme recognizer for speech, a digit classifier for digits)")
    tokenizer = generator.load_tokenizer(args.tokenizer, near=args.model)
    task = build_task(generator.task, source=f"{args.model}/config.json")
    return task.evaluate(generator, tokenizer, judge, args.data,
                         samples_per_request=100 if args.samples is None else args.samples, max_items=args.max_items,
                         split=args.split, rng=torch.Generator().manual_seed(0 if args.seed is None else args.seed),
                         **generator.sampling_with(sampler=args.sampler, steps=args.steps, temperature=args.temperature,
                                                   top_k=args.top_k, cfg_scale=args.cfg_scale,
                                                   choice_temperature=args.choice_temperature))


def cmd_transcribe(args: argparse.Namespace) -> None:
    import json

    from mmtok.data.audio import AUDIO_SUFFIXES, load_audio
    from mmtok.files import process_files, write_text_atomic
    from mmtok.hub import load_pretrained

    recognizer = load_pretrained(args.model)
    source = Path(args.input)
    if not source.exists():
        raise MissingFileError(f"{source}: no such file or folder")
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    lines = []

    def transcribe(path: Path, _) -> None:
        phonemes = recognizer.transcribe(load_audio(path, sample_rate=recognizer.sample_rate)[None])[0]
        lines.append({"audio": str(path), "phonemes": phonemes})
        print(f"{path}\t{phonemes}")

    try:
        process_files([(path, None) for path in files], transcribe, desc="transcribe", fail_fast=args.fail_fast)
    finally:  # the good transcripts are kept whatever failed
        if args.out:
            write_text_atomic(args.out, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
            print(f"wrote {len(lines)} transcripts to {Path(args.out).resolve()}")


# -- encode / decode ----------------------------------------------------------------------------
def _pairs(source: Path, target: Path, in_suffixes: tuple[str, ...], out_suffix: str):
    """(input file, output file) pairs for a file or a folder (searched recursively)."""
    if not source.exists():
        raise MissingFileError(f"{source}: no such file or folder")
    if source.is_file():
        return [(source, target / (source.stem + out_suffix) if target.is_dir() else target)]
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in in_suffixes)
    if not files:
        raise DataError(f"{source}: no {'/'.join(in_suffixes)} files in this folder")
    return [(p, target / p.relative_to(source).with_suffix(out_suffix)) for p in files]


def cmd_encode(args: argparse.Namespace) -> None:
    import torch

    from mmtok.codecs.chunked import encode_chunked_codes
    from mmtok.data.media_files import MEDIA_SUFFIXES, open_media, read_media
    from mmtok.files import process_files
    from mmtok.hub import load_pretrained
    from mmtok.tokens import write_tokens

    tokenizer = load_pretrained(args.model)
    pairs = _pairs(Path(args.input), Path(args.output), MEDIA_SUFFIXES[tokenizer.modality], ".safetensors")

    def encode(source: Path, target: Path) -> None:
        if tokenizer.frame_rate is None:
            tokenizer.encode(read_media(source, tokenizer), num_quantizers=args.num_quantizers).save(target)
            return
        # a time axis: read and coded in chunks (the receptive field as context), the codes held as int16
        dtype = torch.int16 if max(tokenizer.codebook_sizes) <= 2**15 else torch.int32
        codes, samples = encode_chunked_codes(tokenizer, open_media(source, tokenizer),
                                              chunk_seconds=args.chunk_seconds, num_quantizers=args.num_quantizers,
                                              progress=len(pairs) == 1, dtype=dtype)
        write_tokens(target, codes, media_lengths=torch.tensor([samples]), frame_rate=tokenizer.frame_rate,
                     sample_rate=tokenizer.sample_rate)

    written = process_files(pairs, encode, desc="encode", overwrite=args.overwrite, fail_fast=args.fail_fast)
    print(f"wrote {written} token file(s) to {Path(args.output).resolve()}")


def _decode_options(tokenizer, args: argparse.Namespace) -> dict:
    """The decoding flags given (``--steps`` ...), each one the tokenizer's ``decode_options`` must name."""
    given = {name: getattr(args, name) for name in ("sampler", "steps", "guidance", "seed")
             if getattr(args, name) is not None}
    for name, value in given.items():
        if name not in tokenizer.decode_options:
            raise UsageError(f"--{name}: {args.model} holds a {type(tokenizer).__name__}, whose decoding takes no "
                             f"--{name} (it takes: {', '.join('--' + o for o in tokenizer.decode_options) or 'none'})")
        if name == "steps" and value < 1:
            raise UsageError(f"--steps {value}: must be ≥ 1")
    return given


def cmd_decode(args: argparse.Namespace) -> None:
    from mmtok.codecs.chunked import decode_chunks
    from mmtok.data.media_files import WRITE_SUFFIXES, write_media
    from mmtok.files import process_files
    from mmtok.hub import load_pretrained
    from mmtok.media import write_spectrogram_png, write_wav_blocks
    from mmtok.tokens import Tokens, TokensFile

    tokenizer = load_pretrained(args.model)
    options = _decode_options(tokenizer, args)
    pairs = _pairs(Path(args.input), Path(args.output), (".safetensors",), WRITE_SUFFIXES[tokenizer.modality])

    def decode(source: Path, target: Path) -> None:
        if tokenizer.frame_rate is None:
            tokens = Tokens.load(source)
            tokenizer.check_tokens(tokens, source=str(source))
            media = tokenizer.decode(tokens, num_quantizers=args.num_quantizers, **options)
            write_media(target, media[0], tokenizer)
            return
        with TokensFile(source) as tokens:  # read and checked window by window: memory does not grow with the file
            if tokens.num_steps == 0:
                raise DataError(f"{source}: no steps, expected at least one")
            chunks = decode_chunks(tokenizer, tokens, chunk_seconds=args.chunk_seconds, source=str(source),
                                   num_quantizers=args.num_quantizers, progress=len(pairs) == 1)
            write_wav_blocks(target, (chunk[0] for chunk in chunks), sample_rate=tokenizer.sample_rate)
        if args.spectrogram:
            from mmtok.data.audio import load_audio

            write_spectrogram_png(target.with_suffix(".png"), load_audio(target, sample_rate=tokenizer.sample_rate),
                                  sample_rate=tokenizer.sample_rate, title=target.name)

    written = process_files(pairs, decode, desc="decode", overwrite=args.overwrite, fail_fast=args.fail_fast)
    print(f"wrote {written} file(s) to {Path(args.output).resolve()}")


def cmd_convert(args: argparse.Namespace) -> None:
    from mmtok.hub import load_pretrained
    from mmtok.tasks.voice_conversion import conversion_pairs, convert_files

    model = load_pretrained(args.model)
    pairs = conversion_pairs(Path(args.source), Path(args.out))
    written = convert_files(model, pairs, Path(args.prompt), overwrite=args.overwrite, fail_fast=args.fail_fast)
    print(f"wrote {written} converted file(s) to {Path(args.out).resolve()}")


# -- generators -------------------------------------------------------------------------------
def cmd_tokenize(args: argparse.Namespace) -> None:
    from mmtok.data.tokens import tokenize_corpus

    out = tokenize_corpus(args.model, args.manifest, args.out, aligner=args.align)
    print(f"token cache written to {Path(out).resolve()}")


def cmd_shard(args: argparse.Namespace) -> None:
    from mmtok.data.shards import write_shards

    source = Path(args.corpus)
    if not source.exists():
        raise MissingFileError(f"{source}: no such corpus folder, manifest or token cache")
    out = write_shards(source, args.out, chunk_bytes=args.chunk_bytes, num_workers=args.workers)
    print(f"shards written to {Path(out).resolve()}")


def cmd_distill_pairs(args: argparse.Namespace) -> None:
    from mmtok.distill.pairs import build_pairs

    out = build_pairs(args.teacher, args.out, count=args.count, shard_size=args.shard_size, seed=args.seed,
                      vector_dim=args.vector_dim, flow_steps=args.flow_steps, batch_size=args.batch_size,
                      num_frames=args.num_frames, device=args.device)
    print(f"teacher pairs written to {Path(out).resolve()}")


def _generator_and_task(model: str):
    """The generator a Hub folder holds and the task its config records."""
    from mmtok.generators import TokenGenerator
    from mmtok.hub import load_pretrained
    from mmtok.tasks import build_task

    generator = load_pretrained(model)
    if not isinstance(generator, TokenGenerator):
        raise UsageError(f"{model}: holds a {type(generator).__name__}, expected a generator")
    return generator, build_task(generator.task, source=f"{model}/config.json")


def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    generator, task = args.loaded
    tokenizer = generator.load_tokenizer(args.tokenizer, near=args.model)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps {args.steps}: must be ≥ 1")
    sampling = generator.sampling_with(sampler=args.sampler, steps=args.steps, temperature=args.temperature,
                                       top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale,
                                       choice_temperature=args.choice_temperature)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = task.run(generator, tokenizer, args, out=out, rng=torch.Generator().manual_seed(args.seed),
                     sampling=sampling)
    print(f"wrote {len(files)} file(s) to {out.resolve()}")


def add_folder_arguments(parser: argparse.ArgumentParser) -> None:
    """A folder run goes on past a bad file and skips the outputs that exist (:func:`mmtok.files.process_files`)."""
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first bad file")


CHOICE_TEMPERATURE_HELP = ("maskgit / resgen: the Gumbel noise on the confidences that pick which tokens a step "
                           "reveals, annealed to 0 (0: most confident first; default: the recorded setting, else "
                           "4.5 for maskgit, 1 for resgen)")


def add_generate_arguments(gen: argparse.ArgumentParser) -> None:
    """The flags every task shares; a task adds its own (:meth:`mmtok.tasks.Task.add_arguments`)."""
    from mmtok.diffusion.samplers import SAMPLERS

    gen.add_argument("model", help="generator Hub folder or repo id")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--tokenizer", help="tokenizer Hub folder (default: the one the generator names)")
    gen.add_argument("--sampler", choices=["autoregressive", *SAMPLERS, "resgen", "distilled"],
                     help="masked diffusion: fhs (first-hitting, default), ancestral (MDLM) or maskgit; ResGen: resgen")
    gen.add_argument("--steps", type=int, help="ancestral / maskgit / resgen steps (default: one per token / 16 / 16); "
                                               "a distilled student's passes, 1 or 2")
    gen.add_argument("--temperature", type=float,
                     help="0 decodes greedily (AR); default: the generator's recorded setting (its card), else 1")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--cfg-scale", type=float, help="classifier-free guidance (1 = none); default: the generator's "
                                                     "recorded setting, else 1")
    gen.add_argument("--choice-temperature", type=float, help=CHOICE_TEMPERATURE_HELP)
    gen.add_argument("--seed", type=int, default=0, help="the same seed gives the same files")


# -- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmtok",
        description="Multimodal discrete-token generation. Training: `mmtok fit -c recipes/<x>.yaml` "
                    "(also validate/test; see `mmtok fit --help`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build an embedded corpus (speech, digits, moving-digits, music)")
    data.add_argument("name", choices=list(DATA_BUILDERS))
    data.add_argument("--out", required=True, help="output folder")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--num-utterances", type=int, default=2000, help="speech")
    data.add_argument("--flite", action="store_true", help="speech: add Debian flite's voices as extra speakers")
    data.add_argument("--sample-rate", type=int, default=16000, help="speech, music")
    data.add_argument("--workers", type=int, default=2, help="speech, music: parallel espeak-ng/fluidsynth processes")
    data.add_argument("--source", choices=["mnist", "sklearn"], default="mnist", help="digits, moving-digits")
    data.add_argument("--image-size", type=int, default=None, help="digits: square size (default: the source's)")
    data.add_argument("--resize", choices=["pad", "upscale"], default="pad", help="digits: how to reach --image-size")
    data.add_argument("--max-per-class", type=int, default=None, help="digits: keep the first N of each class")
    data.add_argument("--augment-copies", type=int, default=0,
                      help="digits: add N deformed copies (affine + elastic) of every train digit")
    data.add_argument("--num-clips", type=int, default=2000, help="moving-digits")
    data.add_argument("--frame-size", type=int, default=64, help="moving-digits")
    data.add_argument("--min-frames", type=int, default=5, help="moving-digits")
    data.add_argument("--max-frames", type=int, default=33, help="moving-digits")
    data.add_argument("--max-digits", type=int, default=2, help="moving-digits")
    data.add_argument("--fps", type=int, default=10, help="moving-digits")
    data.add_argument("--format", choices=["mp4", "npz", "gif"], default="mp4", help="moving-digits")
    data.add_argument("--num-works", type=int, default=60, help="music: scores from the music21 corpus")
    data.add_argument("--programs-per-work", type=int, default=2, help="music: instruments per score")
    data.add_argument("--max-seconds", type=float, default=20.0, help="music: clip length")
    data.set_defaults(func=cmd_data)

    export = sub.add_parser("export", help="Lightning checkpoint -> Hub folder (config + safetensors + card); "
                                           "a Hub folder -> the same weights with new settings and a fresh card")
    export.add_argument("checkpoint", help="a training checkpoint (.ckpt), or a Hub folder to re-export")
    export.add_argument("out_dir")
    export.add_argument("--data", help="corpus to measure the card's metrics on (manifest folder)")
    export.add_argument("--split", default="test")
    export.add_argument("--max-items", type=int, default=None)
    export.add_argument("--half", action="store_true", help="store the weights in float16 (half the size)")
    export.add_argument("--judge", help="phoneme recognizer Hub folder: a codec card also gets the PER of "
                                        "reconstructions")
    export.add_argument("--sampling", nargs="+", default=[], metavar="KEY=VALUE",
                        help="generators: default sampling settings recorded in the config, e.g. cfg_scale=3 "
                             "sampler=maskgit (what `mmtok generate` uses unless a flag says otherwise)")
    export.add_argument("--decoding", nargs="+", default=[], metavar="KEY=VALUE",
                        help="diffusion de-tokenizers (SEED): default decoding settings recorded in the config, "
                             "e.g. sampler=dpm steps=25 (what `mmtok decode` uses unless a flag says otherwise)")
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser("evaluate", help="measure a tokenizer (audio at several bitrates, images), a "
                                               "recognizer (PER), a digit or speaker judge, or a generator (read "
                                               "by --judge)")
    evaluate.add_argument("model", help="Hub folder or repo id")
    evaluate.add_argument("data", help="manifest folder or folder of audio")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--max-items", type=int, default=None)
    evaluate.add_argument("--quantizers", type=int, nargs="+", default=None)
    evaluate.add_argument("--out", help="folder for metrics.md and example wavs/pngs")
    evaluate.add_argument("--examples", type=int, default=None,
                          help="audio tokenizers: examples written to --out (default 3)")
    evaluate.add_argument("--judge", help="a judge Hub folder: the phoneme recognizer (PER of speech) or the digit "
                                          "classifier (accuracy and Fréchet distance of images); needed for generators")
    evaluate.add_argument("--tokenizer", help="generators: tokenizer Hub folder (default: the one it names)")
    evaluate.add_argument("--samples", type=int, default=None,
                          help="generators: samples per class or caption (default 100)")
    evaluate.add_argument("--sampler", help="generators: the sampler (default: the generator's first)")
    evaluate.add_argument("--steps", type=int, default=None, help="generators: ancestral / maskgit steps")
    evaluate.add_argument("--temperature", type=float, help="generators (default: the recorded setting, else 1)")
    evaluate.add_argument("--top-k", type=int, default=None, help="generators")
    evaluate.add_argument("--cfg-scale", type=float, help="generators: classifier-free guidance (default: the "
                                                          "recorded setting, else 1)")
    evaluate.add_argument("--choice-temperature", type=float, help="generators: " + CHOICE_TEMPERATURE_HELP)
    evaluate.add_argument("--seed", type=int, default=None, help="generators (default 0)")
    evaluate.set_defaults(func=cmd_evaluate)

    transcribe = sub.add_parser("transcribe", help="phoneme transcripts of an audio file or folder")
    transcribe.add_argument("model", help="phoneme recognizer Hub folder or repo id")
    transcribe.add_argument("input")
    transcribe.add_argument("--out", help="also write the transcripts as JSON lines to this file")
    transcribe.add_argument("--fail-fast", action="store_true", help="stop at the first bad file")
    transcribe.set_defaults(func=cmd_transcribe)

    for name, func, what in (("encode", cmd_encode, "audio or image file/folder -> token .safetensors"),
                             ("decode", cmd_decode, "token .safetensors file/folder -> wav or png")):
        p = sub.add_parser(name, help=what)
        p.add_argument("model", help="Hub folder or repo id")
        p.add_argument("input")
        p.add_argument("output")
        p.add_argument("--num-quantizers", type=int, default=None, help="keep the first N codebooks")
        p.add_argument("--chunk-seconds", type=float, default=4.0,
                       help="audio: coded in chunks of this length (memory grows with it, not with the file; "
                            "4 s: 0.1 GB less than 10 s for 5-6 %% more time)")
        add_folder_arguments(p)
        if name == "decode":
            p.add_argument("--spectrogram", action="store_true", help="audio: also write a spectrogram png")
            p.add_argument("--sampler", choices=("ddim", "dpm"),
                           help="a diffusion de-tokenizer's sampler (SEED; default: the model's)")
            p.add_argument("--steps", type=int, help="a diffusion de-tokenizer's steps (default: the model's)")
            p.add_argument("--guidance", type=float, help="a diffusion de-tokenizer's classifier-free guidance")
            p.add_argument("--seed", type=int, help="a diffusion de-tokenizer's noise seed (default: the model's)")
        p.set_defaults(func=func)

    convert = sub.add_parser("convert", help="zero-shot voice conversion: an audio file or folder into the voice "
                                             "of a prompt (a Vec-Tok model)")
    convert.add_argument("model", help="Vec-Tok Hub folder or repo id")
    convert.add_argument("source", help="audio file or folder (searched recursively; the tree is mirrored)")
    convert.add_argument("--prompt", required=True, help="audio of the target voice (its first 3 s are used)")
    convert.add_argument("--out", required=True, help="folder for one wav per input, named after it")
    add_folder_arguments(convert)
    convert.set_defaults(func=cmd_convert)

    tokenize = sub.add_parser("tokenize", help="encode a corpus once into a token cache for generator training")
    tokenize.add_argument("model", help="tokenizer Hub folder or repo id")
    tokenize.add_argument("manifest", help="corpus folder or manifest.jsonl")
    tokenize.add_argument("out", help="output folder (tokens.safetensors, manifest.jsonl, info.json)")
    tokenize.add_argument("--align", metavar="RECOGNIZER", help="a CTC phoneme recognizer Hub folder: also store each "
                                                                "utterance's frames per phoneme (forced alignment)")
    tokenize.set_defaults(func=cmd_tokenize)

    shard = sub.add_parser("shard", help="write a corpus or token cache as litdata shards (one folder per split), "
                                         "which every data module streams in place of a manifest")
    shard.add_argument("corpus", help="corpus folder or manifest (audio, images or video), or a token cache folder")
    shard.add_argument("out", help="output folder (train/, valid/, test/ and shards.json)")
    shard.add_argument("--chunk-bytes", default="64MB", help="size of one litdata chunk (default 64MB)")
    shard.add_argument("--workers", type=int, default=1, help="processes writing chunks (default 1)")
    shard.set_defaults(func=cmd_shard)

    pairs = sub.add_parser("distill-pairs", help="Distilled Decoding: (noise, tokens) pairs from an AR teacher alone, "
                                                 "in shards (a rerun resumes)")
    pairs.add_argument("teacher", help="autoregressive generator Hub folder or repo id")
    pairs.add_argument("out", help="pairs folder (info.json, vectors.safetensors, shard_*.safetensors)")
    pairs.add_argument("--count", type=int, default=20000, help="pairs to draw")
    pairs.add_argument("--shard-size", type=int, default=1000)
    pairs.add_argument("--seed", type=int, default=0, help="the same seed gives the same pairs")
    pairs.add_argument("--vector-dim", type=int, default=8, help="dimensions of each token's flow vector (noise size)")
    pairs.add_argument("--flow-steps", type=int, default=32, help="steps of the per-token flow")
    pairs.add_argument("--batch-size", type=int, default=250, help="pairs drawn together")
    pairs.add_argument("--num-frames", type=int, default=None,
                       help="frames per pair for a teacher without a fixed grid")
    pairs.add_argument("--device", default="cpu", help="where the teacher runs (cpu, cuda)")
    pairs.set_defaults(func=cmd_distill_pairs)

    gen = sub.add_parser("generate", help="generate with a trained generator: its task (text to speech, class or "
                                          "caption to image) decides the flags and files; "
                                          "`mmtok generate MODEL --help` lists them")
    add_generate_arguments(gen)
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> None:
    """The ``mmtok`` command. An error is one line on stderr, ``mmtok <command>: <message>``, and exit
    status 2 for a bad argument, 1 for anything else (:mod:`mmtok.errors`); ``--debug`` anywhere on
    the command line, or ``MMTOK_DEBUG=1``, raises it with its traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MMTOK_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        dispatch(argv)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 (every error becomes one line unless --debug)
        if debug:
            raise
        print(f"mmtok {argv[0] if argv else ''}: {one_line(error)}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_code", 1)) from None


def one_line(error: BaseException) -> str:
    """The error's message on one line; an error mmtok did not anticipate also says how to see more."""
    message = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    if isinstance(error, (MmtokError, OSError)):
        return message
    return f"{message} ({type(error).__name__}; run with --debug for the traceback)"


def dispatch(argv: list[str]) -> None:
    """Run one command; errors propagate (see :func:`main`)."""
    if argv and argv[0] in LIGHTNING_COMMANDS:
        run_lightning_cli(argv)
        return
    parser = build_parser()
    if argv and argv[0] == "generate":
        args = _parse_generate(parser, argv)
    else:
        args = parser.parse_args(argv)
    args.func(args)


def _parse_generate(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``mmtok generate MODEL ...``: the model's task adds its flags before the full parse."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("model", nargs="?")
    known, _ = first.parse_known_args(argv[1:])
    if known.model is None or known.model.startswith("-"):
        return parser.parse_args(argv)  # prints the usage and the error (or the help)
    loaded = _generator_and_task(known.model)
    gen = argparse.ArgumentParser(prog="mmtok generate", description=f"{type(loaded[1]).__name__}: "
                                  + (type(loaded[1]).__doc__ or "").strip())
    add_generate_arguments(gen)
    loaded[1].add_arguments(gen.add_argument_group(type(loaded[1]).__name__))
    args = gen.parse_args(argv[1:])
    args.func, args.loaded = cmd_generate, loaded
    return args


if __name__ == "__main__":
    main()
