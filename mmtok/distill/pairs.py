"""Noise-token pairs from an AR teacher alone (Distilled Decoding, sec. 3.2): the teacher generates as
usual, but each step's tokens come from the per-token flow (:func:`mmtok.distill.flow.token_flow`) of
that step's noise under the teacher's (guided, tempered) distribution, so the whole sequence is a
deterministic function of the noise ε [S, Q, d]: (ε, tokens) is a training pair for a one-step
student. No real media is read.

A pairs folder holds ``info.json`` (the teacher and its weights' digest, its sampling, the flow's
settings), ``vectors.safetensors`` (the codebooks' whitened vectors the flow used) and shards
``shard_00000.safetensors`` ... of ``noise`` [n, S, Q, d] float32, ``codes`` [n, Q, T] and the
condition values (in the metadata). Shard j draws its noise from seed (``seed``, j) alone, so the pairs
are reproducible and a run resumes by writing only the shards that are missing (each is written
atomically). A pairs folder of another teacher, or of other weights under the teacher's name, is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from mmtok.distill.flow import FLOW_STEPS, token_flow, whitened_vectors
from mmtok.errors import DataError, MissingFileError, UsageError
from mmtok.files import atomic_path, write_text_atomic

INFO_NAME = "info.json"
VECTORS_NAME = "vectors.safetensors"
SAMPLING_KEYS = ("cfg_scale", "temperature", "top_k", "top_p")


def flow_vectors(tokenizer, num_codebooks: int, dim: int) -> list[torch.Tensor]:
    """The first ``num_codebooks`` codebooks' vectors (:meth:`Tokenizer.codebook_vectors`), whitened to
    ``dim`` dimensions (:func:`whitened_vectors`): [V_q, dim] each."""
    return [whitened_vectors(vectors, dim) for vectors in tokenizer.codebook_vectors()[:num_codebooks]]


class FlowDraw:
    """A ``draw`` for :func:`mmtok.ar.sampling.generate`: step s's tokens are the flow of ``noise[:, s]``
    ([B, S, Q, d]) under that step's processed logits, codebook by codebook."""

    def __init__(self, noise: torch.Tensor, vectors: list[torch.Tensor], *, steps: int = FLOW_STEPS):
        self.noise, self.vectors, self.steps = noise, vectors, steps

    def __call__(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        return torch.stack([token_flow(self.noise[:, step, q].to(logits.device), logits[:, q, :len(vectors)],
                                       vectors.to(logits.device), steps=self.steps)
                            for q, vectors in enumerate(self.vectors)], dim=1)


def pair_noise(teacher, *, batch_size: int, num_frames: int, dim: int, rng: torch.Generator) -> torch.Tensor:
    """ε ~ N(0, I): [B, S, Q, d], one d-vector per slot of the teacher's pattern for ``num_frames``."""
    steps = teacher.pattern.num_steps(teacher.num_codebooks, num_frames)
    return torch.randn(batch_size, steps, teacher.num_codebooks, dim, generator=rng)


@torch.no_grad()
def teacher_pairs(teacher, conditions: dict, *, noise: torch.Tensor, vectors: list[torch.Tensor], num_frames: int,
                  flow_steps: int = FLOW_STEPS, **sampling) -> torch.Tensor:
    """The teacher's codes [B, Q, num_frames] for ``conditions`` when its draws are the flow of ``noise``
    [B, S, Q, d]; ``sampling``: cfg_scale, temperature, top_k, top_p (the teacher's recorded ones)."""
    lengths = torch.full((noise.shape[0],), num_frames)
    tokens = teacher.generate(conditions, lengths=lengths, draw=FlowDraw(noise, vectors, steps=flow_steps),
                              **{k: v for k, v in sampling.items() if k in SAMPLING_KEYS})
    return tokens.codes


def condition_values(teacher, start: int, count: int) -> dict:
    """The conditions of pairs ``start .. start + count``: each class condition cycles through its
    classes (a balanced set). Other conditions need values from data, which a pairs run does not read."""
    values = {}
    for condition in teacher.conditioner.conditions:
        classes = getattr(condition, "classes", None)
        if classes is None:
            raise UsageError(f"teacher condition {condition.key!r} ({type(condition).__name__}): pairs are drawn "
                             "for class conditions only (expected a class-conditional teacher)")
        values[condition.key] = [classes[i % len(classes)] for i in range(start, start + count)]
    return values


def pair_frames(teacher, num_frames: int | None) -> int:
    """Frames per pair: the teacher's whole grid, else ``num_frames`` (a time axis of any length)."""
    if teacher.grid is not None and None not in teacher.grid:
        return math.prod(teacher.grid)
    if num_frames is None or num_frames < 1:
        raise UsageError(f"num_frames {num_frames}: this teacher has no fixed grid; give the frames per pair (≥ 1)")
    return num_frames


def build_pairs(teacher: str, out: str | Path, *, count: int, shard_size: int = 1000, seed: int = 0,
                vector_dim: int = 8, flow_steps: int = FLOW_STEPS, batch_size: int = 250,
                num_frames: int | None = None, device: str = "cpu", progress: bool = True) -> Path:
    """Write ``count`` pairs (rounded up to whole shards) from the AR teacher (a Hub folder) to ``out``,
    with its recorded sampling;
    shards already there are kept (a rerun resumes), provided ``info.json`` matches these settings.
    The teacher and the flow run on ``device``; the pairs are the same wherever they ran up to float
    rounding (the noise is always drawn on the CPU)."""
    from mmtok.ar.model import ARGenerator
    from mmtok.hub import load_pretrained, weights_digest

    if count < 1 or shard_size < 1 or batch_size < 1:
        raise UsageError(f"count {count}, shard_size {shard_size}, batch_size {batch_size}: each must be ≥ 1")
    model = load_pretrained(teacher)
    if not isinstance(model, ARGenerator):
        raise UsageError(f"{teacher}: holds a {type(model).__name__}, expected an autoregressive generator "
                         "(the teacher)")
    tokenizer = model.load_tokenizer(near=teacher)
    model.to(device)
    frames = pair_frames(model, num_frames)
    sampling = {k: v for k, v in model.sampling_with().items() if k in SAMPLING_KEYS}
    info = {"teacher": str(teacher), "teacher_weights": weights_digest(teacher), "tokenizer": model.tokenizer_id,
            "sampling": sampling, "seed": seed, "shard_size": shard_size, "vector_dim": vector_dim,
            "flow_steps": flow_steps, "num_frames": frames,
            "steps": model.pattern.num_steps(model.num_codebooks, frames), "codebook_sizes": model.codebook_sizes,
            "conditions": model.conditioner.keys}
    out = Path(out)
    _check_or_write_info(out, info)
    vectors = flow_vectors(tokenizer, model.num_codebooks, vector_dim)
    if not (out / VECTORS_NAME).exists():
        with atomic_path(out / VECTORS_NAME) as temporary:
            save_file({f"codebook_{q}": v.contiguous() for q, v in enumerate(vectors)}, str(temporary))
    shards = math.ceil(count / shard_size)
    todo = [j for j in range(shards) if not shard_path(out, j).exists()]
    bar = tqdm(total=len(todo) * shard_size, desc="teacher pairs", unit="pair", disable=not progress)
    for j in todo:
        rng = torch.Generator().manual_seed(seed * 1_000_003 + j)
        noise, codes, values = [], [], {key: [] for key in info["conditions"]}
        for start in range(0, shard_size, batch_size):
            size = min(batch_size, shard_size - start)
            batch_noise = pair_noise(model, batch_size=size, num_frames=frames, dim=vector_dim, rng=rng)
            conditions = condition_values(model, j * shard_size + start, size)
            codes.append(teacher_pairs(model, conditions, noise=batch_noise, vectors=vectors, num_frames=frames,
                                       flow_steps=flow_steps, **sampling).cpu())
            noise.append(batch_noise)
            for key, value in conditions.items():
                values[key] += value
            bar.update(size)
        with atomic_path(shard_path(out, j)) as temporary:
            save_file({"noise": torch.cat(noise).contiguous(), "codes": torch.cat(codes).contiguous()},
                      str(temporary), metadata={"conditions": json.dumps(values)})
    bar.close()
    return out


def shard_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"shard_{index:05d}.safetensors"


def _check_or_write_info(out: Path, info: dict) -> None:
    path = out / INFO_NAME
    if path.exists():
        found = json.loads(path.read_text())
        differing = sorted(key for key in info if found.get(key) != info[key])
        if differing:
            raise UsageError(f"{out}: a pairs folder made with other settings ({', '.join(differing)} differ); "
                             "give another folder or remove it")
        return
    write_text_atomic(path, json.dumps(info, indent=2) + "\n")


def read_pairs(folder: str | Path, *, limit: int | None = None) -> tuple[dict, torch.Tensor, torch.Tensor, dict]:
    """(info, noise [N, S, Q, d], codes [N, Q, T], condition values {key: [N]}) of a pairs folder's
    shards in order (the first ``limit`` pairs)."""
    folder = Path(folder)
    if not (folder / INFO_NAME).is_file():
        raise MissingFileError(f"{folder}: no {INFO_NAME}; expected a pairs folder written by `mmtok distill-pairs`")
    info = json.loads((folder / INFO_NAME).read_text())
    paths = sorted(folder.glob("shard_*.safetensors"))
    if not paths:
        raise MissingFileError(f"{folder}: no shards; expected shard_00000.safetensors ...")
    noise, codes, values, total = [], [], {}, 0
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensors = {name: handle.get_tensor(name) for name in ("noise", "codes")}
                shard_values = json.loads(handle.metadata()["conditions"])
        except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a pairs shard ({error})") from error
        noise.append(tensors["noise"])
        codes.append(tensors["codes"])
        for key, value in shard_values.items():
            values.setdefault(key, []).extend(value)
        total += len(tensors["codes"])
        if limit is not None and total >= limit:
            break
    noise, codes = torch.cat(noise)[:limit], torch.cat(codes)[:limit]
    return info, noise, codes, {key: value[:len(codes)] for key, value in values.items()}
