"""Frozen semantic teachers for X-Codec: speech -> features ``[B, D, T]`` at a codec's frame rate.

Two implementations of :class:`SemanticEncoder`:

- :class:`HFSpeechEncoder`: any Hugging Face speech SSL model (HuBERT, WavLM, wav2vec2) loaded with
  ``transformers`` from a local folder or a repo id. Features are the mean over all hidden states
  (X-Codec's choice, Ye et al. 2024) or one chosen layer.
- :class:`RecognizerEncoder`: the embedded default, the encoder of mmtok's CTC phoneme recognizer
  (:mod:`mmtok.asr`), trained on the espeak-ng speech corpus.

A teacher is described by a JSON spec, so that an X-Codec Hub folder is self-contained: the spec
given to a recipe names where the weights come from (``{"type": "recognizer", "path": ...}`` or
``{"type": "hf", "path": ..., "layer": "mean"}``); once loaded, :meth:`SemanticEncoder.spec` returns
the architecture alone (``"config"`` instead of ``"path"``), which rebuilds the teacher without its
weights. The X-Codec's own ``model.safetensors`` then holds them.

Teachers never train: parameters are frozen, the module stays in eval mode, features are computed
under ``torch.no_grad``. Their frame rate may differ from the codec's (HuBERT's conv stack yields
``floor((N - 400) / 320) + 1`` frames at 16 kHz); :meth:`SemanticEncoder.features` resamples them
linearly in time to exactly the number of frames asked for.
"""

from __future__ import annotations

import json
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

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON spec that rebuilds this teacher's architecture (weights are stored by the owner)."""

    @abstractmethod
    def _features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """audio [B, 1, N] at ``self.sample_rate`` -> [B, D, T'] at the teacher's own frame rate."""

    def freeze(self) -> SemanticEncoder:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> SemanticEncoder:  # a teacher stays in eval mode (no dropout)
        return super().train(False)

    @torch.no_grad()
    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None, *, num_frames: int,
                 sample_rate: int | None = None) -> torch.Tensor:
        """Features of ``audio`` (at ``sample_rate``, default the teacher's) resampled to ``num_frames``."""
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
    """The encoder output of a :class:`mmtok.asr.PhonemeRecognizer` (the embedded teacher)."""

    def __init__(self, recognizer):
        super().__init__(sample_rate=recognizer.sample_rate)
        self.recognizer = recognizer
        self.freeze()

    @property
    def dim(self) -> int:
        return self.recognizer.head.in_features

    def spec(self) -> dict[str, Any]:
        return {"type": "recognizer", "config": dict(self.recognizer._hub_mixin_config)}

    def _features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        features, _ = self.recognizer.features(audio, lengths)
        return features


class HFSpeechEncoder(SemanticEncoder):
    """A ``transformers`` speech SSL model; ``layer="mean"`` averages every hidden state (embeddings
    output included), an integer picks one (0 = the input of the first transformer layer).

    ``normalize`` is the feature extractor's ``do_normalize`` (zero mean, unit variance per utterance,
    which WavLM-Large and wav2vec2-large-lv60 expect and HuBERT-Base does not)."""

    def __init__(self, model, *, layer: int | str = "mean", normalize: bool = False, sample_rate: int = 16000):
        super().__init__(sample_rate=sample_rate)
        num_states = model.config.num_hidden_layers + 1
        if layer != "mean" and not (isinstance(layer, int) and 0 <= layer < num_states):
            raise ValueError(f"layer must be 'mean' or an int in 0..{num_states - 1}, got {layer!r}")
        self.model = model
        self.layer = layer
        self.normalize = normalize
        self.freeze()

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def spec(self) -> dict[str, Any]:
        return {"type": "hf", "config": self.model.config.to_dict(), "layer": self.layer,
                "normalize": self.normalize, "sample_rate": self.sample_rate}

    def _features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = audio[:, 0]
        valid = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
        if self.normalize:
            count = valid.sum(-1, keepdim=True).clamp(min=1)
            mean = (x * valid).sum(-1, keepdim=True) / count
            var = (((x - mean) * valid) ** 2).sum(-1, keepdim=True) / count
            x = (x - mean) / torch.sqrt(var + 1e-7) * valid
        # Base models with group-norm feature extractors were trained without attention masks.
        mask = valid.long() if getattr(self.model.config, "feat_extract_norm", "layer") == "layer" else None
        out = self.model(x, attention_mask=mask, output_hidden_states=True)
        states = out.hidden_states
        hidden = torch.stack(states).mean(0) if self.layer == "mean" else states[self.layer]
        return hidden.transpose(1, 2)


def _hf_normalize_flag(path: str) -> bool:
    """``do_normalize`` from a local folder's ``preprocessor_config.json``; False when there is none."""
    config = Path(path) / "preprocessor_config.json"
    return bool(json.loads(config.read_text()).get("do_normalize", False)) if config.is_file() else False


def build_semantic_encoder(spec: dict[str, Any]) -> SemanticEncoder:
    """A teacher from its spec: ``{"type": "recognizer" | "hf", "path": ...}`` loads weights;
    ``"config"`` instead of ``"path"`` builds the architecture only (weights come from the owner)."""
    if not isinstance(spec, dict) or spec.get("type") not in ("recognizer", "hf"):
        raise ValueError(f"semantic teacher spec must be a dict with type 'recognizer' or 'hf', got {spec!r}")
    spec = {key: value for key, value in spec.items() if value is not None}
    if ("path" in spec) == ("config" in spec):
        raise ValueError(f"semantic teacher spec needs exactly one of 'path' (a local folder or Hub repo id) or "
                         f"'config', got {spec!r}; e.g. --model.codec.init_args.teacher "
                         f"'{{\"type\": \"hf\", \"path\": \"/models/hubert-base-ls960\"}}'")
    if "path" in spec:  # a clear error for a missing folder, before anything tries the Hub
        resolve_file(str(spec["path"]), "config.json")
    if spec["type"] == "recognizer":
        from mmtok.asr import PhonemeRecognizer

        if "path" in spec:
            return RecognizerEncoder(PhonemeRecognizer.from_pretrained(spec["path"]))
        return RecognizerEncoder(PhonemeRecognizer(**spec["config"]))
    return _build_hf(spec)


def _build_hf(spec: dict[str, Any]) -> HFSpeechEncoder:
    import transformers

    options = {"layer": spec.get("layer", "mean"), "sample_rate": spec.get("sample_rate", 16000)}
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
