"""Turn a Lightning training checkpoint into a Hub folder (config + safetensors + model card).

The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickled objects. The training module recorded the model's class and constructor
arguments under ``checkpoint["mmtok"]`` (:func:`mmtok.training.checkpoint.record_model`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from mmtok.asr import PhonemeRecognizer, evaluate_recognizer
from mmtok.codecs.base import Tokenizer
from mmtok.codecs.seed import SeedTokenizer, evaluate_seed
from mmtok.codecs.vectok import SpeechSSL, VecTok
from mmtok.errors import DataError, MissingFileError, UsageError
from mmtok.generators import TokenGenerator
from mmtok.hub import HubMixin, load_pretrained, load_state_strict, model_class, read_card_section, round_to_half
from mmtok.judges.digits import DigitClassifier, evaluate_classifier
from mmtok.judges.speakers import SpeakerEncoder, evaluate_speaker_encoder


def load_model_from_checkpoint(checkpoint: str | Path) -> tuple[HubMixin, dict]:
    """Rebuild the model a training checkpoint holds; returns (model in eval mode, checkpoint dict)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # what weights_only refuses: an object that is not a tensor
        refused = re.search(r"GLOBAL (\S+)", str(error))
        refused = f"a {refused.group(1)}" if refused else "an object that is not a tensor"
        raise DataError(f"{path}: holds a pickled object ({refused}), which mmtok does not load; expected a "
                        "checkpoint of tensors written by an mmtok training module") from error
    except Exception as error:  # a truncated or foreign file
        raise DataError(f"{path}: not a readable checkpoint ({str(error).splitlines()[0]})") from error
    info = ckpt.get("mmtok") if isinstance(ckpt, dict) else None
    if not info:
        raise DataError(f"{path}: no 'mmtok' entry; expected a checkpoint written by an mmtok training module")
    model = model_class(info["model_class"], source=str(path))(**info["model_config"])
    prefix = info["model_prefix"]
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    load_state_strict(model, state, source=f"{path}: weights do not fit the recorded config")
    return model.eval(), ckpt


def _codec_card(codec: Tokenizer, data: str | None, split: str, max_items: int | None, judge: str | None) -> dict:
    from mmtok.codecs.evaluate import evaluate_codec

    if codec.modality == "image":
        return _image_tokenizer_card(codec, data, split, max_items, judge)
    if codec.modality == "video":
        return _video_tokenizer_card(codec, data, split, max_items, judge)
    card = {"description": (
        f"A `{type(codec).__name__}` trained with mmtok: {codec.num_codebooks} codebooks of "
        f"{codec.codebook_sizes[0]} codes at {codec.frame_rate:g} frames/s ({codec.sample_rate} Hz audio); "
        "any first n codebooks decode (quantizer dropout).")}
    if data is not None:
        recognizer = load_pretrained(judge) if judge else None
        card["metrics"] = evaluate_codec(codec, data, split=split, max_items=max_items, judge=recognizer)
        card["metrics_note"] = (f"Measured by `mmtok evaluate` on the `{split}` split of `{data}` (whole "
                                "utterances; mel and STFT distances: lower is better; SI-SDR in dB"
                                + (f"; per: phoneme error rate of the reconstructions by `{judge}`" if judge else "")
                                + ").")
    return card


def _image_tokenizer_card(tokenizer: Tokenizer, data: str | None, split: str, max_items: int | None,
                          judge: str | None) -> dict:
    from mmtok.codecs.vq_image import evaluate_image_tokenizer

    (height, width), (h, w) = tokenizer.image_size, tokenizer.grid
    card = {"description": (
        f"A `{type(tokenizer).__name__}` trained with mmtok: {height}x{width} images ({tokenizer.channels} "
        f"channel(s)) -> a token grid of {h}x{w} in raster order, {tokenizer.num_codebooks} residual "
        f"codebook(s) of {tokenizer.codebook_sizes[0]} codes; any first n codebooks decode."),
        "usage": ("`mmtok encode MODEL image.png tokens.safetensors` and `mmtok decode MODEL tokens.safetensors "
                  "image.png` (files or folders); in Python `model.encode(images)` takes FloatTensor [B, C, H, W] in "
                  "[0, 1] and gives codes [B, Q, h·w] on the grid (h, w)")}
    if data is not None:
        classifier = load_pretrained(judge) if judge else None
        card["metrics"] = evaluate_image_tokenizer(tokenizer, data, split=split, max_items=max_items,
                                                   judge=classifier)
        card["metrics_note"] = (f"Reconstructions of the `{split}` split of `{data}` from the first n codebooks "
                                "(L1 and MSE of pixels in [0, 1]; PSNR in dB; usage: fraction of codebook n's "
                                "codes used, perplexity: exp of their entropy"
                                + (f"; judge_accuracy: `{judge}`'s accuracy on them" if judge else "") + ").")
    return card


def _video_tokenizer_card(tokenizer: Tokenizer, data: str | None, split: str, max_items: int | None,
                          judge: str | None) -> dict:
    from mmtok.codecs.cvivit import evaluate_video_tokenizer

    (height, width), (h, w), pt = tokenizer.frame_size, tokenizer.spatial_grid, tokenizer.temporal_patch_size
    card = {"description": (
        f"A `{type(tokenizer).__name__}` trained with mmtok: clips of 1 + k·{pt} frames of {height}x{width} "
        f"({tokenizer.channels} channel(s), {tokenizer.fps:g} fps) -> (1 + k) x {h} x {w} tokens, causal in "
        f"time (a clip's first frames encode to its first tokens), {tokenizer.num_codebooks} codebook(s) of "
        f"{tokenizer.codebook_sizes[0]} codes."),
        "usage": ("`mmtok encode MODEL clip.mp4 tokens.safetensors` and `mmtok decode MODEL tokens.safetensors "
                  "clip.mp4` (files or folders; .mp4/.gif/.npz); in Python `model.encode(video, lengths)` takes "
                  "FloatTensor [B, C, F, H, W] in [0, 1] and gives codes [B, Q, t·h·w] on the grid (t, h, w)")}
    if data is not None:
        classifier = load_pretrained(judge) if judge else None
        card["metrics"] = evaluate_video_tokenizer(tokenizer, data, split=split, max_items=max_items,
                                                   judge=classifier)
        card["metrics_note"] = (f"Reconstructions of the `{split}` split of `{data}`, each clip cut to its first "
                                "`frames` frames (the clips at least that long), all through one model: per-frame "
                                "PSNR in dB and MSE of pixels in [0, 1]; usage and perplexity of the codebook"
                                + (f"; judge_accuracy: `{judge}`'s accuracy on each frame's digit crop (at the "
                                   "digit's true position), judge_accuracy_real on the real frames' crops"
                                   if judge else "") + ").")
    return card


def _recognizer_card(recognizer: PhonemeRecognizer, data: str | None, split: str, max_items: int | None,
                     judge: str | None) -> dict:
    card = {"description": (
        f"A CTC phoneme recognizer trained with mmtok over {len(recognizer.phonemes)} phonemes; its encoder "
        f"output at {recognizer.frame_rate:g} frames/s is the embedded semantic feature for X-Codec."),
        "usage": "`mmtok transcribe MODEL input.wav` (a file or a folder; `--out transcripts.jsonl`)"}
    if data is not None:
        card["metrics"] = [evaluate_recognizer(recognizer, data, split=split, max_items=max_items)]
        card["metrics_note"] = f"Phoneme error rate (greedy CTC) on the `{split}` split of `{data}`."
    return card


def _generator_card(generator: TokenGenerator, data: str | None, split: str, max_items: int | None,
                    judge: str | None) -> dict:
    conditions = ", ".join(
        f"{spec['type']} (`{spec['key']}`{', on the frames' if spec.get('placement') == 'frames' else ''})"
        for spec in generator.conditioner.specs()) or "none"
    task = generator.task["class_path"].rsplit(".", 1)[-1] if generator.task else "no task"
    card = {"description": (
        f"A `{type(generator).__name__}` ({type(generator.pattern).__name__}; samplers: "
        f"{', '.join(generator.samplers)}) trained with mmtok over the first {generator.num_codebooks} codebooks "
        f"of `{generator.tokenizer_id}`; conditions: {conditions}; task: {task}. The tokenizer is referenced, "
        "not included: keep its folder next to this one or pass `--tokenizer`."),
        "usage": "`mmtok generate MODEL --out DIR` with the task's flags (`mmtok generate MODEL --help`)"}
    if generator.sampling:
        card["description"] += (" It samples by default with " + ", ".join(
            f"{key} {value}" for key, value in sorted(generator.sampling.items()))
            + " (recorded in `config.json` under `sampling`; a flag of `mmtok generate` overrides one).")
    if data is not None:
        raise ValueError("export --data: generator cards are measured by the benches (bench/*.py --cards)")
    return card


def _classifier_card(classifier: DigitClassifier, data: str | None, split: str, max_items: int | None,
                     judge: str | None) -> dict:
    card = {"description": (
        f"A CNN digit classifier trained with mmtok ({classifier.num_classes} classes, {classifier.channels} "
        f"channel(s)): the judge of generated and reconstructed digits, the {classifier.feature_dim}-d feature "
        "network of the Fréchet distance (`mmtok.metrics.frechet_distance`) and the perceptual loss network "
        "(`feature_maps`)."),
        "usage": ("`python bench/digit_judge.py MODEL --data data/digits` (accuracy, Fréchet distance floors); in "
                  "Python, `model.classify(images)` on FloatTensor [B, C, H, W] in [0, 1], white digits on black")}
    if data is not None:
        scored = evaluate_classifier(classifier, data, split=split, max_items=max_items)
        card["metrics"] = [{"accuracy": scored["accuracy"], "images": scored["images"]}]
        card["metrics_note"] = f"Accuracy on the `{split}` split of `{data}`."
    return card


def _speaker_card(encoder: SpeakerEncoder, data: str | None, split: str, max_items: int | None,
                  judge: str | None) -> dict:
    card = {"description": (
        f"A speaker encoder trained with mmtok (ECAPA-lite: dilated TDNN blocks, attentive statistics pooling) over "
        f"{encoder.num_speakers} training speakers at {encoder.sample_rate} Hz: its {encoder.embedding_dim}-d "
        "unit-norm embedding scores the speaker similarity of generated speech to its voice prompt "
        "(`mmtok.metrics.speaker_similarity`, the cosine), reported next to the cosine of two real utterances of "
        "the same speaker."),
        "usage": ("`python bench/speaker_encoder.py MODEL --data data/speech` (speaker-ID accuracy, same- and "
                  "different-speaker cosines, EER); in Python, `model.embed(audio, lengths)` on FloatTensor [B, N] "
                  "at the model's sample rate, `mmtok.metrics.speaker_similarity(model, audio_a, audio_b, rate)` "
                  "on two lists of waveforms")}
    if data is not None:
        scored = evaluate_speaker_encoder(encoder, data, split=split, max_items=max_items)
        card["metrics"] = [{key: scored[key] for key in ("accuracy", "same_cosine", "different_cosine", "eer",
                                                         "utterances")}]
        card["metrics_note"] = (f"On the whole utterances of the `{split}` split of `{data}`: speaker-ID accuracy, the "
                                "mean cosine of pairs of different utterances of the same speaker and of different "
                                "speakers, and the equal error rate of that cosine as a same-speaker test.")
    return card


def _seed_card(tokenizer: SeedTokenizer, data: str | None, split: str, max_items: int | None,
               judge: str | None) -> dict:
    n, size = tokenizer.num_queries, tokenizer.codebook_sizes[0]
    card = {"description": (
        f"A SEED tokenizer (Ge et al. 2023) trained with mmtok: {tokenizer.image_size[0]}x{tokenizer.image_size[1]} "
        f"images -> {n} causal 1-D tokens (one codebook of {size} codes, "
        f"{'causal' if tokenizer.qformer.causal else 'bidirectional'} Q-Former queries), decoded by a diffusion "
        f"UNet de-tokenizer ({tokenizer.decode_defaults['sampler']}, {tokenizer.decode_defaults['steps']} steps by "
        "default) that draws an image with the tokens' meaning, not their pixels."),
        "usage": ("`mmtok encode MODEL image.png tokens.safetensors` and `mmtok decode MODEL tokens.safetensors "
                  "image.png --steps 25` (files or folders); in Python `model.encode(images)` takes FloatTensor "
                  "[B, C, H, W] in [0, 1] and gives codes [B, 1, N]; `model.decode(tokens, steps=, sampler=, seed=)`")}
    if data is not None:
        classifier = load_pretrained(judge) if judge else None
        card["metrics"] = evaluate_seed(tokenizer, data, split=split, max_items=max_items, judge=classifier)
        card["metrics_note"] = (
            f"On the `{split}` split of `{data}`: zero-shot digit accuracy from the last query's embedding and from "
            "the global embedding the tokens regress; caption -> image recall@k (a hit: an image of the caption's "
            "digit); codebook usage and perplexity"
            + (f"; `{judge}`'s accuracy on the images the de-tokenizer draws from the tokens and on the real ones, "
               "and the Fréchet distance in its features to the train images of the drawn ones (frechet) and of the "
               "real ones (frechet_real, the floor)" if judge else "") + ".")
    return card


def _ssl_card(model: SpeechSSL, data: str | None, split: str, max_items: int | None, judge: str | None) -> dict:
    return {"description": (
        f"A HuBERT-style speech model (Hsu et al. 2021) trained with mmtok by masked prediction of "
        f"{model.target_centroids.shape[0]} k-means clusters of MFCC frames (iteration 1): {model.num_layers} "
        f"transformer layers of width {model.dim} at 50 frames/s. Its layers are Vec-Tok's speech vectors."),
        "usage": ("As Vec-Tok's vectors: `--model.init_args.codec.init_args.vectors "
                  "'{\"type\": \"ssl\", \"path\": \"FOLDER\", \"layer\": 3}'`; in Python "
                  "`model(audio, lengths, num_layers=3)` -> hidden states [B, T, D]")}


def _vectok_card(model: VecTok, data: str | None, split: str, max_items: int | None, judge: str | None) -> dict:
    bpe = f" and a BPE of {model.bpe.vocab_size} symbols over them" if model.bpe else ""
    return {"description": (
        f"Vec-Tok (Zhu et al. 2023) trained with mmtok: speech vectors ({model.vectors.spec()['type']} layer "
        f"{model.vectors.spec().get('layer')}, {model.vectors.dim} dims at {model.frame_rate:g} frames/s), "
        f"{model.num_units} k-means semantic tokens{bpe}; a vocoder from vectors and an inverse k-means "
        f"transformer from tokens and a {model.prompt_frames / model.frame_rate:g}-s voice prompt to vectors."),
        "usage": ("`mmtok encode MODEL speech.wav tokens.safetensors` / `mmtok decode MODEL tokens.safetensors "
                  "out.wav` (the default voice); zero-shot voice conversion: `mmtok convert MODEL SOURCE.wav "
                  "--prompt TARGET.wav --out DIR`; in Python `model.encode(audio, lengths, bpe=True)` and "
                  "`model.decode(tokens, prompt=audio)`")}


CARD_BUILDERS = {SeedTokenizer: _seed_card, VecTok: _vectok_card, SpeechSSL: _ssl_card, Tokenizer: _codec_card,
                 PhonemeRecognizer: _recognizer_card, TokenGenerator: _generator_card,
                 DigitClassifier: _classifier_card, SpeakerEncoder: _speaker_card}


HALF_NOTE = "Weights are stored in float16 (the metrics were measured with those weights)."


def training_text(checkpoint: dict) -> str:
    """The card's "Training" text for a Lightning checkpoint: its step count and recorded recipe."""
    recipe = checkpoint["mmtok"].get("recipe") or ""
    steps = f"Trained for {checkpoint.get('global_step', '?')} optimizer steps (epoch {checkpoint.get('epoch', '?')}"
    if "generator_steps" in checkpoint["state_dict"]:  # GAN training: the optimizer steps count both networks
        steps += f"; {int(checkpoint['state_dict']['generator_steps'])} generator steps"
    steps += ")"
    return f"{steps} with this LightningCLI config:\n\n```yaml\n{recipe}```" if recipe else steps + "."


def load_model_to_export(source: str | Path) -> tuple[HubMixin, str]:
    """(model in eval mode, the card's training text) from a Lightning checkpoint, or from a Hub folder:
    a re-export, which records new sampling or decoding defaults and measures a fresh card for the same
    weights, keeping the folder's training text (the sections benchmarks added are not kept: they measured
    the old defaults; run the benchmarks again with ``--cards``)."""
    if Path(source).is_dir():
        training = read_card_section(source, "## Training") or "Re-exported from a Hub folder."
        return load_pretrained(source), training.replace(HALF_NOTE, "").strip()
    model, checkpoint = load_model_from_checkpoint(source)
    return model, training_text(checkpoint)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, data: str | None = None,
                      split: str = "test", max_items: int | None = None, judge: str | None = None,
                      half: bool = False, sampling: dict | None = None, decoding: dict | None = None) -> Path:
    """Write ``out_dir`` as a Hub folder from a training checkpoint or a Hub folder (a re-export, see
    :func:`load_model_to_export`); with ``data``, measure metrics on its ``split`` for the card
    (for a codec, with ``judge``, a phoneme recognizer folder, also the PER of its reconstructions).
    ``half`` stores the weights in float16; the metrics are then measured with the rounded weights.
    ``sampling``: a generator's default sampling settings (:meth:`TokenGenerator.record_sampling`);
    ``decoding``: a de-tokenizer's default decoding settings (its ``record_decoding``)."""
    model, training = load_model_to_export(checkpoint)
    if decoding:
        if not getattr(model, "decode_options", ()):
            raise UsageError(f"--decoding: {checkpoint} holds a {type(model).__name__}, which has no decoding "
                             "settings (a diffusion de-tokenizer such as SEED's has)")
        try:
            model.record_decoding(**decoding)
        except ValueError as error:
            raise UsageError(f"--decoding: {error}") from None
    if sampling:
        if not isinstance(model, TokenGenerator):
            raise UsageError(f"--sampling: {checkpoint} holds a {type(model).__name__}, not a generator")
        model.record_sampling(**sampling)
    if half:
        round_to_half(model)
        model.store_half = True
    builder = next(fn for family, fn in CARD_BUILDERS.items() if isinstance(model, family))
    card = builder(model, data, split, max_items, judge)
    card["recipe"] = training + (f"\n\n{HALF_NOTE}\n" if half else "")
    card["title"] = Path(out_dir).name
    model.card = card
    model.save_pretrained(out_dir)
    return Path(out_dir)
