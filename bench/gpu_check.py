"""One table for a machine with a GPU (what scripts/gpu_check.sh runs, in under 10 minutes): the shipped
RVQ codec's encode and decode speed as multiples of real time, the shipped AR digit generator's tokens/s
at batch 1 and ``--batch`` (64), the masked diffusion digit generator with the first-hitting sampler against the
ancestral one (images/s and their ratio), and a short training run per family (codec, image tokenizer,
AR, masked diffusion) in bf16 mixed precision with the samples/s it logged. Every row is timed after a
warm-up call, with the device synchronised.

    python bench/gpu_check.py                       # cuda
    python bench/gpu_check.py --device cpu --train-steps 4 --seconds 10
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from mmtok.hub import load_pretrained
from mmtok.media import markdown_table
from training_throughput import DEFAULT_RECIPES, DIGIT_TOKENS, RECIPES, batch_size, data_overrides, fit, rates

REPO = Path(__file__).resolve().parents[1]


def timed(device: str, function, repeats: int = 1) -> float:
    """Seconds per call of ``function`` after one warm-up call."""
    function()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


@torch.no_grad()
def codec_rows(device: str, seconds: float, speech: Path) -> list[dict]:
    """Encode and decode speed of the shipped codec on ``seconds`` of the corpus's test utterances."""
    from mmtok.data.manifest import read_manifest
    from mmtok.media import load_audio

    codec = load_pretrained(REPO / "checkpoints" / "rvq-speech-16k").to(device).eval()
    pieces, total = [], 0
    for entry in (e for e in read_manifest(speech, key="audio") if e.get("split") == "test"):
        pieces.append(load_audio(entry["audio"], sample_rate=codec.sample_rate))
        total += pieces[-1].shape[-1]
        if total >= seconds * codec.sample_rate:
            break
    audio = torch.cat(pieces, dim=-1)[None].to(device)  # [1, 1, N]
    length = audio.shape[-1] / codec.sample_rate
    tokens = codec.encode(audio)
    encode, decode = timed(device, lambda: codec.encode(audio)), timed(device, lambda: codec.decode(tokens))
    return [{"check": f"rvq codec encode, {length:.0f} s of speech", "value": f"{length / encode:.0f}x real time"},
            {"check": f"rvq codec decode, {length:.0f} s of speech", "value": f"{length / decode:.0f}x real time"}]


@torch.no_grad()
def generator_rows(device: str, large_batch: int) -> list[dict]:
    rows = []
    ar = load_pretrained(REPO / "checkpoints" / "digits-ar").to(device).eval()
    steps = math.prod(ar.grid)
    for batch in (1, large_batch):
        def draw(model=ar, batch=batch):
            labels = [str(i % 10) for i in range(batch)]
            return model.generate({"label": labels}, lengths=torch.full((batch,), steps),
                                  rng=torch.Generator().manual_seed(0))
        seconds = timed(device, draw)
        rows.append({"check": f"AR digits (KV cache, recorded sampling), batch {batch}",
                     "value": f"{batch * steps * len(ar.codebook_sizes) / seconds:.0f} tokens/s"})
    mdm = load_pretrained(REPO / "checkpoints" / "digits-mdm").to(device).eval()
    per_second = {}
    for sampler in ("fhs", "ancestral"):
        def draw(sampler=sampler):
            labels = [str(i % 10) for i in range(large_batch)]
            return mdm.generate({"label": labels}, lengths=torch.full((large_batch,), steps), sampler=sampler,
                                rng=torch.Generator().manual_seed(0))
        per_second[sampler] = large_batch / timed(device, draw)
        rows.append({"check": f"MDM digits, {sampler} sampler, batch {large_batch}",
                     "value": f"{per_second[sampler]:.1f} images/s"})
    rows.append({"check": "MDM digits, first-hitting / ancestral",
                 "value": f"{per_second['fhs'] / per_second['ancestral']:.2f}x"})
    return rows


def training_rows(device: str, precision: str, steps: int, work: Path, sources: dict[str, str]) -> list[dict]:
    """A short run of each recipe family; ``sources`` replaces the recipes' corpora (by their default path)."""
    rows = []
    for name in DEFAULT_RECIPES:  # one per family (the video recipe needs its own corpus)
        recipe, option, source = RECIPES[name]
        overrides = data_overrides(option, sources.get(source, source), corpus=sources.get("data/digits"))
        run = fit(recipe, overrides, work / name.replace(" ", "-"), steps=steps, device=device, precision=precision,
                  threads=torch.get_num_threads())
        samples, batches = rates(run, batch_size(recipe))
        rows.append({"check": f"train {name}, {steps} steps, {precision}",
                     "value": f"{samples:.1f} samples/s ({batches:.2f} batches/s)"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=60.0, help="speech the codec encodes and decodes")
    parser.add_argument("--batch", type=int, default=64, help="the large batch of the generator rows")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--speech", default="data/speech", help="speech corpus (its test utterances are coded)")
    parser.add_argument("--digits", default="data/digits", help="digits corpus (32 x 32)")
    parser.add_argument("--tokens", default=DIGIT_TOKENS, help="its token cache (built there when missing)")
    parser.add_argument("--work", default="runs/bench/gpu_check")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --device cpu to check the script itself")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows = codec_rows(args.device, args.seconds, REPO / args.speech) + generator_rows(args.device, args.batch)
    sources = {"data/speech": args.speech, "data/digits": args.digits, DIGIT_TOKENS: args.tokens}
    rows += training_rows("gpu" if args.device == "cuda" else "cpu", args.precision, args.train_steps,
                          REPO / args.work, sources)
    text = f"{name}, torch {torch.__version__}\n\n" + markdown_table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
