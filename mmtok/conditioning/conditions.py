"""Class labels, phoneme sequences and audio prompts as conditions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmtok.conditioning.base import Condition


def manifest_values(source: str | Path, field: str) -> list[str]:
    """Sorted distinct values of ``field`` in a corpus (a folder with manifest.jsonl, or the file)."""
    from mmtok.data.manifest import manifest_path, read_manifest

    if not manifest_path(source).is_file():
        raise FileNotFoundError(f"classes: {source} has no manifest.jsonl to read '{field}' values from")
    values = set()
    for entry in read_manifest(source):
        if field not in entry:
            raise ValueError(f"{manifest_path(source)}: an entry has no '{field}' field: {entry}")
        values.add(str(entry[field]))
    return sorted(values)


class ClassCondition(Condition):
    """A class label (a speaker, a digit) as one embedding. ``classes`` is the list of names, a count
    (names "0".."n-1"), or a corpus folder whose manifest's ``key`` field gives the names."""

    type_name = "class"

    def __init__(self, *, dim: int, key: str = "label", classes: Sequence[str] | int | str, dropout: float = 0.0):
        super().__init__(key=key, dim=dim, dropout=dropout)
        if isinstance(classes, int):
            classes = [str(i) for i in range(classes)]
        elif isinstance(classes, str):
            classes = manifest_values(classes, key)
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"condition {key!r}: classes must be a non-empty list of distinct names")
        self.classes = [str(c) for c in classes]
        self._index = {name: i for i, name in enumerate(self.classes)}
        self.embedding = nn.Embedding(len(self.classes), dim)

    def ids(self, value, device: torch.device) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            ids = value.long().reshape(-1)
            if ids.numel() and (ids.min() < 0 or ids.max() >= len(self.classes)):
                raise ValueError(f"condition {self.key!r}: class ids must be in [0, {len(self.classes)}), "
                                 f"got {ids.tolist()}")
            return ids.to(device)
        unknown = [v for v in value if str(v) not in self._index]
        if unknown:
            raise ValueError(f"condition {self.key!r}: unknown classes {unknown} (known: {self.classes})")
        return torch.tensor([self._index[str(v)] for v in value], device=device)

    def embed(self, value, device):
        ids = self.ids(value, device)
        return self.embedding(ids)[:, None], torch.ones(len(ids), 1, dtype=torch.bool, device=device)

    def spec(self) -> dict:
        return {"type": self.type_name, "key": self.key, "classes": self.classes, "dropout": self.dropout}


@dataclass
class AlignedPhonemes:
    """Phoneme strings with each one's frames: ``durations[b]`` holds one count per phoneme of
    ``phonemes[b]`` (lists of ints or tensors)."""

    phonemes: list[str]
    durations: list


class PhonemeContextBlock(nn.Module):
    """x + ReLU(Conv1d(LayerNorm(x))) over a phoneme sequence [B, P, D], kernel 5; padding
    (``valid`` False) stays zero so it does not leak into the next block's convolution."""

    def __init__(self, dim: int, kernel_size: int = 5):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        update = self.conv((self.norm(x) * valid).transpose(1, 2)).transpose(1, 2)
        return (x + torch.relu(update)) * valid


class PhonemeCondition(Condition):
    """A phoneme (or character) sequence, space-separated symbols, with its own embedding table.
    ``phonemes`` is the inventory or a corpus to read it from (:func:`mmtok.asr.phoneme_inventory`).

    ``position_scale`` (frames per phoneme) places phoneme k at position k · scale, on the time axis
    of the generated frames, for generators with ``positions="aligned"``: frame t then finds its
    phoneme near relative position 0.

    ``placement="frames"`` (for generators that know the length first: masked diffusion) instead
    adds to frame t of an utterance of T frames and P phonemes the embedding of phoneme
    ⌊t · P / T⌋: every phoneme gets an equal share of the frames. That uniform alignment is only a
    first guess, which the bidirectional model corrects from its neighbours; but a frame no longer
    has to find its phoneme by attention, which small TTS models here did not learn within a CPU
    budget (docs/benchmarks.md, TTS).

    ``durations`` (with ``placement="frames"``) names the batch field that holds each utterance's
    frames per phoneme (forced alignment, :mod:`mmtok.alignment`; a task's prediction at generation
    time): frame t then gets the phoneme whose span of frames holds t, and frames past the spans the
    last phoneme. A batch without that field falls back to the uniform placement, except in training.

    ``context_layers`` > 0 runs that many residual convolutions (kernel 5) over the phoneme embeddings, so
    each phoneme's vector carries its neighbours: with ``placement="frames"`` an AR model, which reads the
    frames left to right, then sees on frame t the phonemes that come next (FastSpeech's phoneme encoder,
    Ren et al. 2019, sec. 3.1, as a conv stack). ``span_positions`` > 0 (with ``placement="frames"``) adds
    to frame t embeddings of how many frames of its phoneme's span have passed and how many remain
    (each clamped to ``span_positions`` − 1): where a phoneme ends is then an input, not something a
    left-to-right model must guess.

    ``duration_predictor`` (needs ``durations``) adds a :class:`~mmtok.conditioning.durations.DurationPredictor`
    trained on those durations as this condition's :meth:`auxiliary_loss`; a task predicts durations
    with :meth:`predict_frames`. Its arguments: ``speakers`` (names, or a corpus to read the
    ``speaker_key`` field's values from), ``speaker_key`` ("speaker"), ``speaker_dropout`` (0.5),
    ``weight`` (1.0, of its loss) and the predictor's ``dim``, ``num_layers``, ``kernel_size``, ``dropout``."""

    type_name = "phonemes"

    def __init__(self, *, dim: int, key: str = "phonemes", phonemes: Sequence[str] | str, dropout: float = 0.0,
                 position_scale: float = 1.0, placement: str = "prefix", durations: str | None = None,
                 duration_predictor: dict | None = None, context_layers: int = 0, span_positions: int = 0):
        super().__init__(key=key, dim=dim, dropout=dropout)
        if placement not in ("prefix", "frames"):
            raise ValueError(f"condition {key!r}: placement must be 'prefix' or 'frames', got {placement!r}")
        if durations is not None and placement != "frames":
            raise ValueError(f"condition {key!r}: durations place phonemes on the frames; use placement 'frames'")
        if duration_predictor is not None and durations is None:
            raise ValueError(f"condition {key!r}: a duration predictor learns from the batch's durations; name "
                             "their field (durations: durations)")
        if span_positions and placement != "frames":
            raise ValueError(f"condition {key!r}: span_positions count frames within a phoneme's span; use "
                             "placement 'frames'")
        if context_layers < 0 or span_positions < 0:
            raise ValueError(f"condition {key!r}: context_layers and span_positions must be ≥ 0, got "
                             f"{context_layers} and {span_positions}")
        self.position_scale, self.placement, self.durations = position_scale, placement, durations
        self.context_layers, self.span_positions = context_layers, span_positions
        if isinstance(phonemes, str):
            from mmtok.asr import phoneme_inventory

            phonemes = phoneme_inventory(phonemes)
        if not phonemes or len(set(phonemes)) != len(phonemes):
            raise ValueError(f"condition {key!r}: phonemes must be a non-empty list of distinct symbols")
        self.phonemes = list(phonemes)
        self._index = {p: i + 1 for i, p in enumerate(self.phonemes)}  # 0 pads
        self.embedding = nn.Embedding(len(self.phonemes) + 1, dim, padding_idx=0)
        self.context = nn.ModuleList(PhonemeContextBlock(dim) for _ in range(context_layers))
        if span_positions:
            self.elapsed = nn.Embedding(span_positions, dim)
            self.remaining = nn.Embedding(span_positions, dim)
        self.predictor_args, self.duration_predictor = None, None
        if duration_predictor is not None:
            self._build_predictor(dict(duration_predictor))

    def _build_predictor(self, args: dict) -> None:
        from mmtok.conditioning.durations import DurationPredictor

        args.setdefault("speaker_key", "speaker")
        args.setdefault("speakers", [])
        if isinstance(args["speakers"], str):
            args["speakers"] = manifest_values(args["speakers"], args["speaker_key"])
        args["speakers"] = [str(name) for name in args["speakers"]]
        args.setdefault("speaker_dropout", 0.5)
        args.setdefault("weight", 1.0)
        own = ("speakers", "speaker_key", "speaker_dropout", "weight")  # the rest is the module's
        module_args = {k: v for k, v in args.items() if k not in own}
        try:
            self.duration_predictor = DurationPredictor(num_phonemes=len(self.phonemes),
                                                        num_speakers=len(args["speakers"]), **module_args)
        except TypeError as error:
            raise ValueError(f"condition {self.key!r}: duration_predictor {module_args}: {error}") from error
        self.predictor_args = args
        self._speaker_index = {name: i + 1 for i, name in enumerate(args["speakers"])}  # 0: no speaker

    def encode(self, text: str) -> list[int]:
        unknown = sorted({p for p in text.split() if p not in self._index})
        if unknown:
            raise ValueError(f"condition {self.key!r}: phonemes {unknown} are not in the inventory of "
                             f"{len(self.phonemes)} symbols")
        return [self._index[p] for p in text.split()]

    def ids(self, value: Sequence[str], device: torch.device) -> torch.Tensor:
        """Phoneme ids [B, P], right-padded with 0."""
        ids = [self.encode(text) for text in value]
        padded = torch.zeros(len(ids), max(1, max(len(i) for i in ids)), dtype=torch.long)
        for row, sequence in enumerate(ids):
            padded[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return padded.to(device)

    def states(self, ids: torch.Tensor) -> torch.Tensor:
        """Phoneme ids [B, P] -> their embeddings through the context convolutions, [B, P, D]."""
        valid = (ids != 0)[..., None]
        x = self.embedding(ids)
        for block in self.context:
            x = block(x, valid)
        return x

    def embed(self, value: Sequence[str], device):
        padded = self.ids(value, device)
        return self.states(padded), padded != 0

    def read(self, batch: dict):
        """The phoneme strings, or :class:`AlignedPhonemes` when this condition reads durations and
        the batch has them (in training it must)."""
        value = batch.get(self.key)
        if self.durations is None or value is None:
            return value
        durations = batch.get(self.durations)
        if durations is None:
            if self.training:
                raise ValueError(f"condition {self.key!r}: training needs the batch field {self.durations!r} "
                                 "(frames per phoneme); build the token cache with an aligner "
                                 "(`mmtok tokenize ... --align RECOGNIZER`, or the data module's `aligner`)")
            return value
        return AlignedPhonemes(list(value), list(durations))

    def frame_embeddings(self, value, *, lengths, num_frames, device, drop=None):
        lengths = lengths.to(device)
        frames = torch.arange(num_frames, device=device)
        inside = (frames[None] < lengths[:, None])[..., None]
        if value is None:
            return self.null.expand(len(lengths), num_frames, -1) * inside
        aligned = isinstance(value, AlignedPhonemes)
        ids = self.ids(value.phonemes if aligned else value, device)
        if len(ids) != len(lengths):
            raise ValueError(f"condition {self.key!r}: {len(ids)} phoneme sequences for {len(lengths)} lengths")
        counts = (ids != 0).sum(1)
        if aligned:
            spans = self._durations(value.durations, counts, ids.shape[1], device)
        else:  # uniform: frame t gets phoneme ⌊t · P / T⌋, so phoneme k (from 1) ends before frame ⌈k · T / P⌉
            k = torch.arange(1, ids.shape[1] + 1, device=device)[None]
            ends = (k * lengths[:, None] + counts[:, None] - 1).div(counts.clamp(min=1)[:, None], rounding_mode="floor")
            spans = torch.diff(ends * (k <= counts[:, None]), dim=1, prepend=torch.zeros_like(ends[:, :1]))
            spans = spans.clamp(min=0)
        ends = spans.cumsum(1)  # frame t -> the phoneme whose span holds t: the spans ending at or before t
        index = torch.searchsorted(ends, frames[None].expand(len(ids), -1).contiguous(), right=True)
        index = torch.minimum(index, (counts - 1).clamp(min=0)[:, None]).clamp(max=ids.shape[1] - 1)
        x = self.states(ids).gather(1, index[..., None].expand(-1, -1, self.dim))
        if self.span_positions:
            end = ends.gather(1, index)
            start = end - spans.gather(1, index)
            top = self.span_positions - 1
            elapsed, remaining = (frames[None] - start).clamp(0, top), (end - frames[None]).clamp(0, top)
            x = x + self.elapsed(elapsed) + self.remaining(remaining)
        if drop is not None:
            x = torch.where(drop[:, None, None], self.null.expand_as(x), x)
        return x * inside

    def _durations(self, durations, counts: torch.Tensor, width: int, device) -> torch.Tensor:
        """Frames per phoneme [B, width], right-padded with 0; one count per phoneme of each item."""
        padded = torch.zeros(len(durations), width, dtype=torch.long)
        for row, (values, count) in enumerate(zip(durations, counts.tolist())):
            values = torch.as_tensor(values, dtype=torch.long).reshape(-1)
            if len(values) != count:
                raise ValueError(f"condition {self.key!r}: item {row} has {count} phonemes but {len(values)} "
                                 "durations")
            padded[row, :count] = values
        return padded.to(device)

    # -- the duration predictor -------------------------------------------------------------------
    def speaker_ids(self, speakers, batch_size: int, device) -> torch.Tensor:
        """The predictor's speaker ids [B]: 0 for None or a speaker it does not know."""
        if speakers is None:
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        return torch.tensor([self._speaker_index.get(str(name), 0) for name in speakers], device=device)

    def auxiliary_loss(self, batch: dict):
        """The duration predictor's log-duration MSE on the batch's phonemes, durations and speakers."""
        if self.duration_predictor is None or batch.get(self.key) is None:
            return None
        value = self.read(batch)
        if not isinstance(value, AlignedPhonemes):
            raise ValueError(f"condition {self.key!r}: its duration predictor needs the batch field "
                             f"{self.durations!r}")
        device = self.embedding.weight.device
        ids = self.ids(value.phonemes, device)
        durations = self._durations(value.durations, (ids != 0).sum(1), ids.shape[1], device)
        speakers = self.speaker_ids(batch.get(self.predictor_args["speaker_key"]), len(ids), device)
        if self.training and self.predictor_args["speaker_dropout"] > 0:
            speakers = speakers.masked_fill(torch.rand(len(ids), device=device)
                                            < self.predictor_args["speaker_dropout"], 0)
        loss = self.duration_predictor.loss(ids, speakers, durations)
        return self.predictor_args["weight"] * loss, {"duration_loss": loss.detach()}

    @torch.no_grad()
    def predict_frames(self, phonemes: Sequence[str], speakers: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Predicted frames per phoneme (real-valued, [P_i] each) for phoneme strings and optional
        speaker names; see :func:`mmtok.conditioning.durations.round_durations` for whole frames. In
        eval mode, as the generator is for generation (in training mode dropout acts)."""
        if self.duration_predictor is None:
            raise ValueError(f"condition {self.key!r} has no duration predictor")
        device = self.embedding.weight.device
        ids = self.ids(phonemes, device)
        frames = self.duration_predictor.frames(ids, self.speaker_ids(speakers, len(ids), device))
        return [row[: int(count)].cpu() for row, count in zip(frames, (ids != 0).sum(1))]

    def spec(self) -> dict:
        spec = {"type": self.type_name, "key": self.key, "phonemes": self.phonemes, "dropout": self.dropout,
                "position_scale": self.position_scale, "placement": self.placement}
        if self.durations is not None:  # absent from the specs of models without durations, as before
            spec["durations"] = self.durations
        if self.predictor_args is not None:
            spec["duration_predictor"] = dict(self.predictor_args)
        if self.context_layers or self.span_positions:  # absent from older models' specs
            spec.update(context_layers=self.context_layers, span_positions=self.span_positions)
        return spec

    def positions(self, count: int, device: torch.device) -> torch.Tensor:
        """The null embedding at −1, phoneme k at k · ``position_scale``."""
        return torch.cat([torch.tensor([-1.0], device=device),
                          torch.arange(count - 1, device=device, dtype=torch.float) * self.position_scale])


class AudioPromptCondition(Condition):
    """Codes of a few seconds of audio (a voice to imitate: VALL-E's acoustic prompt), one position
    per frame, the sum of per-codebook embeddings. The batch field is a dict with ``codes``
    ``[B, Q, T]`` and optional ``lengths`` ``[B]`` (or a :class:`~mmtok.tokens.Tokens`)."""

    type_name = "audio_prompt"

    def __init__(self, *, dim: int, key: str = "prompt", codebook_sizes: Sequence[int], dropout: float = 0.0):
        super().__init__(key=key, dim=dim, dropout=dropout)
        self.codebook_sizes = [int(size) for size in codebook_sizes]
        self.embeddings = nn.ModuleList(nn.Embedding(size, dim) for size in self.codebook_sizes)

    def embed(self, value, device):
        if hasattr(value, "codes"):  # Tokens
            codes, lengths = value.codes, value.lengths
        else:
            codes, lengths = value["codes"], value.get("lengths")
        codes = codes.to(device)
        if codes.dim() != 3 or codes.shape[1] < len(self.embeddings):
            raise ValueError(f"condition {self.key!r}: prompt codes must be [B, ≥{len(self.embeddings)}, T], "
                             f"got {tuple(codes.shape)}")
        x = sum(embedding(codes[:, q]) for q, embedding in enumerate(self.embeddings))
        frames = torch.arange(codes.shape[2], device=device)
        if lengths is None:
            return x, torch.ones_like(codes[:, 0], dtype=torch.bool)
        valid = frames[None] < lengths.to(device)[:, None]
        return x, valid

    def spec(self) -> dict:
        return {"type": self.type_name, "key": self.key, "codebook_sizes": self.codebook_sizes,
                "dropout": self.dropout}
