"""Frozen semantic teachers for X-Codec: speech -> features ``[B, D, T]`` at a codec's frame rate.

Three implementations of :class:`SemanticEncoder`:

- :class:`HFSpeechEncoder`: any Hugging Face speech SSL model (HuBERT, WavLM, wav2vec2) loaded with
  ``transformers`` from a local folder or a repo id. Features are the mean over all hidden states
  (X-Codec's choice, Ye et al. 2024) or one chosen layer.
- :class:`RecognizerEncoder`: the embedded default, the encoder of mmtok's CTC phoneme recognizer
  (:mod:`mmtok.asr`), trained on the espeak-ng speech corpus.
- :class:`mmtok.codecs.vectok.SSLEncoder`: a layer of the embedded self-supervised HuBERT-style model
  (Vec-Tok's speech vectors), spec ``{"type": "ssl", "path": ..., "layer": 3}``.

A teacher is described by a JSON spec, so that an X-Codec Hub folder is self-contained: the spec
given to a recipe names where the weights come from (``{"type": "recognizer", "path": ...}`` or
``{"type": "hf", "path": ..., "layer": "mean"}``); once loaded, :meth:`SemanticEncoder.spec` returns
the architecture alone (``"config"`` instead of ``"path"``), which rebuilds the teacher without its
weights. The X-Codec's own ``model.safetensors`` then holds them.

Teachers never train: parameters are frozen, the module stays in eval mode, features are computed
under ``torch.no_grad``. A teacher returns ``ceil(N / hop)`` frames at its own rate, frame k
describing the audio around samples k · hop (HuBERT's conv stack alone yields
``floor((N - 400) / 320) + 1`` frames at 16 kHz; padded with hop / 2 samples on each side, as the
X-Codec reference does, its frames line up with the codec's at a constant offset);
:meth:`SemanticEncoder.features` resamples them linearly in time only where the two frame rates
differ.

A teacher's context is bounded so that a long file encodes in chunks with the codes of whole-file
encoding (:mod:`mmtok.codecs.chunked`): the recognizer by local attention (``attention_window``
frames per layer), a Hugging Face model by running on windows of ``window_seconds`` placed on a
fixed grid (each frame taken from the window it is most central in). ``None`` for either means
unbounded: the whole input at once.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from mmtok.hub import resolve_file


class SemanticEncoder(nn.Module, ABC):
    """A frozen feature extractor. ``features(audio [B, 1, N], lengths, num_frames) -> [B, dim, num_frames]``."""

    def __init__(self, *, sample_rate: int):
        super().__init__()
        self.sample_rate = sample_rate

    @property
    @abstractmethod
    def dim(self) -> int:
        """Feature channels D."""

    @property
    @abstractmethod
    def hop_length(self) -> int:
        """Samples per teacher frame at ``sample_rate``."""

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    @abstractmethod
    def context_seconds(self) -> float | None:
        """How far (each side) a frame's features depend on the audio; None: on all of it."""

    @property
    def alignment_seconds(self) -> float:
        """Features are the same function of the audio around a frame wherever the input starts, as
        long as it starts at a multiple of this (0: anywhere on a frame boundary)."""
        return 0.0

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON spec that rebuilds this teacher's architecture (weights are stored by the owner)."""

    @abstractmethod
    def _features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """audio [B, 1, N] at ``self.sample_rate`` -> [B, D, ceil(N / hop_length)] at the teacher's rate."""

    def freeze(self) -> SemanticEncoder:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> SemanticEncoder:  # a teacher stays in eval mode (no dropout)
        return super().train(False)

    @torch.no_grad()
    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None, *, num_frames: int,
                 sample_rate: int | None = None) -> torch.Tensor:
        """Features of ``audio`` (at ``sample_rate``, default the teacher's) at ``num_frames`` frames:
        the teacher's own when it has that many (equal frame rates), else resampled linearly."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"audio must be [B, 1, N], got shape {tuple(audio.shape)}")
        if lengths is None:
            lengths = torch.full((audio.shape[0],), audio.shape[-1], dtype=torch.long, device=audio.device)
        if sample_rate is not None and sample_rate != self.sample_rate:
            audio = torchaudio.functional.resample(audio, sample_rate, self.sample_rate)
            lengths = torch.div(lengths * self.sample_rate + sample_rate - 1, sample_rate, rounding_mode="floor")
        features = self._features(audio, lengths)
        if features.shape[-1] != num_frames:
            features = F.interpolate(features, size=num_frames, mode="linear", align_corners=False)
        return features


class RecognizerEncoder(SemanticEncoder):
    """The encoder output of a :class:`mmtok.asr.PhonemeRecognizer` (the embedded teacher), with its
    attention limited to ± ``attention_window`` frames per layer (None: full attention)."""

    def __init__(self, recognizer, *, attention_window: int | None = None):
        super().__init__(sample_rate=recognizer.sample_rate)
        if attention_window is not None and attention_window < 1:
            raise ValueError(f"attention_window must be ≥ 1 frame or None (full attention), got {attention_window}")
        self.recognizer = recognizer
        self.attention_window = attention_window
        self.freeze()

    @property
    def dim(self) -> int:
        return self.recognizer.head.in_features

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate / self.recognizer.frame_rate)

    @property
    def context_seconds(self) -> float | None:
        frames = self.recognizer.context_frames(self.attention_window)
        return None if frames is None else frames / self.recognizer.frame_rate

    def spec(self) -> dict[str, Any]:
        return {"type": "recognizer", "config": self.recognizer.hub_config,
                "attention_window": self.attention_window}

    def _features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        features, _ = self.recognizer.features(audio, lengths, attention_window=self.attention_window)
        return features


class HFSpeechEncoder(SemanticEncoder):
    """A ``transformers`` speech SSL model; ``layer="mean"`` averages every hidden state (embeddings
    output included), an integer picks one (0 = the input of the first transformer layer).

    ``normalize`` is the feature extractor's ``do_normalize`` (zero mean, unit variance per utterance,
    or per window, which WavLM-Large and wav2vec2-large-lv60 expect and HuBERT-Base does not).
    ``window_seconds`` bounds the context: inputs longer than that run as windows of that length
    starting every half window, and each frame comes from the window it is most central in."""

    def __init__(self, model, *, layer: int | str = "mean", normalize: bool = False, sample_rate: int = 16000,
                 window_seconds: float | None = None):
        super().__init__(sample_rate=sample_rate)
        num_states = model.config.num_hidden_layers + 1
        if layer != "mean" and not (isinstance(layer, int) and 0 <= layer < num_states):
            raise ValueError(f"layer must be 'mean' or an int in 0..{num_states - 1}, got {layer!r}")
        self.model = model
        self.layer = layer
        self.normalize = normalize
        self._hop = math.prod(getattr(model.config, "conv_stride", (320,)))
        if window_seconds is not None and round(window_seconds * sample_rate / self._hop) < 4:
            raise ValueError(f"window_seconds must span at least 4 teacher frames ({4 * self._hop / sample_rate} s) "
                             f"or be None (whole input), got {window_seconds}")
        self.window_seconds = window_seconds
        self.freeze()

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def hop_length(self) -> int:
        return self._hop

    @property
    def _window_frames(self) -> int | None:
        return None if self.window_seconds is None else round(self.window_seconds * self.frame_rate)

    @property
    def context_seconds(self) -> float | None:
        return None if self.window_seconds is None else self._window_frames / self.frame_rate

    @property
    def alignment_seconds(self) -> float:
        return 0.0 if self.window_seconds is None else (self._window_frames // 2) / self.frame_rate

    def spec(self) -> dict[str, Any]:
        return {"type": "hf", "config": self.model.config.to_dict(), "layer": self.layer,
                "normalize": self.normalize, "sample_rate": self.sample_rate, "window_seconds": self.window_seconds}

    def _features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hop, window = self.hop_length, self._window_frames
        total = math.ceil(audio.shape[-1] / hop)
        if window is None or total <= window:
            return self._window_features(audio, lengths)
        # Windows start every `stride` frames; frames [start + margin, start + margin + stride) come from
        # window `start` (the first window also gives the frames before, the last those after).
        stride = window // 2
        margin = (window - stride) // 2
        pieces, kept, start = [], 0, 0
        while kept < total:
            end = total if start + margin + stride >= total else start + margin + stride
            piece = audio[..., start * hop: (start + window) * hop]
            piece_lengths = (lengths - start * hop).clamp(min=1, max=piece.shape[-1])
            pieces.append(self._window_features(piece, piece_lengths)[..., kept - start: end - start])
            kept, start = end, start + stride
        return torch.cat(pieces, dim=-1)

    def _window_features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, 1, N] -> [B, D, ceil(N / hop)]: the model on the audio padded by hop / 2 on each side."""
        hop = self.hop_length
        x = audio[:, 0]
        valid = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
        if self.normalize:
            count = valid.sum(-1, keepdim=True).clamp(min=1)
            mean = (x * valid).sum(-1, keepdim=True) / count
            var = (((x - mean) * valid) ** 2).sum(-1, keepdim=True) / count
            x = (x - mean) / torch.sqrt(var + 1e-7) * valid
        # The padding is part of the input (each item's own: its samples past `lengths` are zero).
        x = F.pad(x, (hop // 2, hop // 2))
        valid = torch.arange(x.shape[-1], device=x.device)[None, :] < (lengths + 2 * (hop // 2))[:, None]
        # Base models with group-norm feature extractors were trained without attention masks.
        mask = valid.long() if getattr(self.model.config, "feat_extract_norm", "layer") == "layer" else None
        out = self.model(x, attention_mask=mask, output_hidden_states=True)
        states = out.hidden_states
        hidden = (torch.stack(states).mean(0) if self.layer == "mean" else states[self.layer]).transpose(1, 2)
        frames = math.ceil(audio.shape[-1] / hop)  # one frame short when N mod hop < the kernel overhang
        if hidden.shape[-1] < frames:
            hidden = F.pad(hidden, (0, frames - hidden.shape[-1]), mode="replicate")
        return hidden[..., :frames]


def _hf_normalize_flag(path: str) -> bool:
    """``do_normalize`` from a local folder's ``preprocessor_config.json``; False when there is none."""
    config = Path(path) / "preprocessor_config.json"
    return bool(json.loads(config.read_text()).get("do_normalize", False)) if config.is_file() else False


def build_semantic_encoder(spec: dict[str, Any]) -> SemanticEncoder:
    """A teacher from its spec: ``{"type": "recognizer" | "hf", "path": ...}`` loads weights;
    ``"config"`` instead of ``"path"`` builds the architecture only (weights come from the owner)."""
    if not isinstance(spec, dict) or spec.get("type") not in ("recognizer", "hf", "ssl"):
        raise ValueError(f"semantic teacher spec must be a dict with type 'recognizer', 'hf' or 'ssl', got {spec!r}")
    spec = {key: value for key, value in spec.items() if value is not None}
    if ("path" in spec) == ("config" in spec):
        raise ValueError(f"semantic teacher spec needs exactly one of 'path' (a local folder or Hub repo id) or "
                         f"'config', got {spec!r}; e.g. --model.codec.init_args.teacher "
                         f"'{{\"type\": \"hf\", \"path\": \"/models/hubert-base-ls960\"}}'")
    if "path" in spec:  # a clear error for a missing folder, before anything tries the Hub
        resolve_file(str(spec["path"]), "config.json")
    if spec["type"] == "recognizer":
        from mmtok.asr import PhonemeRecognizer

        window = spec.get("attention_window")
        if "path" in spec:
            return RecognizerEncoder(PhonemeRecognizer.from_pretrained(spec["path"]), attention_window=window)
        return RecognizerEncoder(PhonemeRecognizer(**spec["config"]), attention_window=window)
    if spec["type"] == "ssl":
        from mmtok.codecs.vectok import SpeechSSL, SSLEncoder

        model = SpeechSSL.from_pretrained(spec["path"]) if "path" in spec else SpeechSSL(**spec["config"])
        return SSLEncoder(model, layer=spec.get("layer", model.num_layers // 2))
    return _build_hf(spec)


def _build_hf(spec: dict[str, Any]) -> HFSpeechEncoder:
    import transformers

    options = {"layer": spec.get("layer", "mean"), "sample_rate": spec.get("sample_rate", 16000),
               "window_seconds": spec.get("window_seconds")}
    if "path" in spec:
        path = str(spec["path"])
        model = transformers.AutoModel.from_pretrained(path)
        normalize = spec.get("normalize", _hf_normalize_flag(path))
    else:
        config = dict(spec["config"])
        model = transformers.AutoModel.from_config(transformers.AutoConfig.for_model(config.pop("model_type"),
                                                                                     **config))
        normalize = spec.get("normalize", False)
    return HFSpeechEncoder(model, normalize=normalize, **options)
