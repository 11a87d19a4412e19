"""Vec-Tok (Zhu et al. 2023, "Vec-Tok Speech: speech vectorization and tokenization for neural
speech generation"): speech vectors + semantic tokens + BPE, a vocoder and an inverse k-means model.

No code of the paper was released; this file is mmtok's implementation of its Sec. 3:

- **Speech vectors** ``[B, D, T]`` at 50 frames/s: a layer of a speech SSL model (the paper uses
  WavLM-Large layer 6), any :class:`~mmtok.codecs.semantic.SemanticEncoder` spec: a ``transformers``
  model from a local folder (``{"type": "hf", "path": ..., "layer": 6}``) or the embedded
  :class:`SpeechSSL` (``{"type": "ssl", "path": ..., "layer": 3}``), a small HuBERT-style model
  trained here (Hsu et al. 2021: masked prediction of k-means targets, iteration 1 on MFCC clusters).
  Vectors are standardised per channel with statistics fitted on the corpus.
- **Semantic tokens**: the nearest of K k-means centroids (K = 300 in the paper) to each standardised
  vector, optionally standardised per utterance too (``utterance_norm``): ``Tokens [B, 1, T]`` at 50 Hz;
  and **BPE** over those unit sequences (Hugging Face ``tokenizers``, unit k written as one character),
  which shortens them; BPE ids are ``Tokens`` without a frame rate and ``decode`` undoes the BPE exactly.
- **Vocoder**: vectors -> waveform, a SEANet decoder (:class:`~mmtok.codecs.seanet.ConvDecoder`)
  behind a frame convolution net, GAN-trained with the codecs' discriminators and losses
  (:class:`mmtok.training.vectok.VecTokModule`).
- **Inverse k-means**: units + a prompt's vectors (3 s of the target voice) -> vectors, a
  bidirectional transformer over ``[prompt vectors ; unit embeddings]`` (the prompt as a prefix, so
  the units attend to the voice). Trained with the prompt cut from the same utterance and the loss on
  the other frames only, so copying the prompt's content does not pay; without a prompt, the stored
  default prompt (a corpus utterance) gives the corpus' default voice.

``decode(tokens, prompt=...)`` = inverse k-means then vocoder: resynthesis in any voice, which is
zero-shot voice conversion when the units come from another speaker (:meth:`VecTok.convert`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import nn

from mmtok.asr import centred_log_mel
from mmtok.codecs.base import Tokenizer
from mmtok.codecs.rvq import CodecOutput
from mmtok.codecs.seanet import ConvDecoder, FrameConvNet
from mmtok.codecs.semantic import SemanticEncoder, build_semantic_encoder
from mmtok.hub import HubMixin
from mmtok.nn import Transformer
from mmtok.tokens import Tokens

FRAME_HOP = 320  # samples per frame at 16 kHz: 50 frames/s, the codecs' rate
VOCODER_STRIDES = (8, 5, 4, 2)  # the RVQ codec decoder's, so the vocoder can start from its weights


# -- the embedded speech SSL model ------------------------------------------------------------------
def mfcc_frames(audio: torch.Tensor, lengths: torch.Tensor | None = None, *, sample_rate: int = 16000,
                num_frames: int | None = None) -> torch.Tensor:
    """HuBERT's iteration-1 features: 13 MFCCs with deltas and delta-deltas (39 dims) per 20 ms frame,
    standardised per utterance over its valid frames. audio [B, 1, N] -> [B, 39, ceil(N / hop)]."""
    hop = sample_rate * FRAME_HOP // 16000
    num_frames = num_frames or math.ceil(audio.shape[-1] / hop)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=2 * hop, hop_length=hop, n_mels=40,
                                               win_length=25 * sample_rate // 1000, center=False).to(audio.device)
    log_mel = centred_log_mel(mel, audio[:, 0], num_frames=num_frames)
    dct = torchaudio.functional.create_dct(13, 40, norm="ortho").to(audio.device)
    mfcc = torch.einsum("bmt,mc->bct", log_mel, dct)
    deltas = torchaudio.functional.compute_deltas(mfcc)
    features = torch.cat([mfcc, deltas, torchaudio.functional.compute_deltas(deltas)], dim=1)
    valid = _frame_valid(lengths, hop, num_frames, audio)[:, None, :].to(features.dtype)
    count = valid.sum(-1, keepdim=True).clamp(min=1)
    mean = (features * valid).sum(-1, keepdim=True) / count
    std = (((features - mean) * valid).pow(2).sum(-1, keepdim=True) / count).sqrt()
    return (features - mean) / (std + 1e-5) * valid


def _frame_valid(lengths: torch.Tensor | None, hop: int, num_frames: int, audio: torch.Tensor) -> torch.Tensor:
    if lengths is None:
        return torch.ones(audio.shape[0], num_frames, dtype=torch.bool, device=audio.device)
    frames = torch.div(lengths + hop - 1, hop, rounding_mode="floor")
    return torch.arange(num_frames, device=audio.device)[None, :] < frames[:, None]


def span_mask(valid: torch.Tensor, *, start_prob: float, span: int, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """wav2vec 2.0 / HuBERT masking (Baevski et al. 2020 Sec. 3.1; Hsu et al. 2021 Sec. IV-C): each
    valid frame starts a masked span of ``span`` frames with probability ``start_prob`` (spans may
    overlap; 0.08 and 10 mask about half the frames). valid [B, T] -> mask [B, T]."""
    starts = (torch.rand(valid.shape, generator=generator, device=valid.device) < start_prob) & valid
    # frame t is masked when a span starts at one of t - span + 1 .. t
    mask = F.max_pool1d(F.pad(starts[:, None].float(), (span - 1, 0)), kernel_size=span, stride=1)[:, 0]
    return (mask > 0) & valid


class SpeechSSL(nn.Module, HubMixin):
    """A small HuBERT-style speech model: log-mel (10 ms) -> two convolutions (the second with stride
    2, so 50 frames/s) -> a bidirectional transformer; pre-trained by masked prediction of cluster
    targets (:class:`mmtok.training.vectok.SpeechSSLModule`).

    ``target_centroids`` [num_targets, 39] are the k-means centroids of MFCC frames (HuBERT
    iteration 1), fitted by the training module before the first step and stored with the weights.
    The prediction head is a linear layer over the targets (HuBERT scores cosine similarity to
    learned target embeddings; a linear layer is the same family with fewer knobs).
    """

    def __init__(self, *, sample_rate: int = 16000, n_mels: int = 80, dim: int = 256, num_layers: int = 6,
                 num_heads: int = 4, dropout: float = 0.1, num_targets: int = 100):
        super().__init__()
        self.sample_rate = sample_rate
        self.hop_length = sample_rate // 100
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=512 * sample_rate // 16000, win_length=25 * sample_rate // 1000,
            hop_length=self.hop_length, n_mels=n_mels, center=False)
        self.input_norm = nn.LayerNorm(n_mels)
        self.frontend = nn.Sequential(nn.Conv1d(n_mels, dim, 3, padding=1), nn.GELU(),
                                      nn.Conv1d(dim, dim, 3, stride=2, padding=1), nn.GELU())
        self.mask_embedding = nn.Parameter(torch.randn(dim) * 0.02)
        self.encoder = Transformer(dim=dim, num_layers=num_layers, num_heads=num_heads, dropout=dropout)
        self.head = nn.Linear(dim, num_targets)
        self.register_buffer("target_centroids", torch.zeros(num_targets, 39))

    @property
    def dim(self) -> int:
        return self.head.in_features

    @property
    def num_layers(self) -> int:
        return len(self.encoder.blocks)

    @property
    def frame_hop(self) -> int:
        return 2 * self.hop_length

    def frame_valid(self, audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """BoolTensor [B, ceil(N / frame_hop)]: frames that hold valid samples."""
        return _frame_valid(lengths, self.frame_hop, math.ceil(audio.shape[-1] / self.frame_hop), audio)

    def targets(self, audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """The nearest MFCC centroid of each frame, LongTensor [B, T]."""
        mfcc = mfcc_frames(audio, lengths, sample_rate=self.sample_rate,
                           num_frames=math.ceil(audio.shape[-1] / self.frame_hop))
        return nearest_centroid(rearrange(mfcc, "b d t -> b t d"), self.target_centroids)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None, num_layers: int | None = None) -> torch.Tensor:
        """audio [B, 1, N] -> hidden states [B, T, dim] after ``num_layers`` transformer layers (None:
        all, final norm included); frames where ``mask`` [B, T] is True see the mask embedding."""
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"audio must be [B, 1, N], got shape {tuple(audio.shape)}")
        valid = self.frame_valid(audio, lengths)
        log_mel = centred_log_mel(self.mel, audio[:, 0], num_frames=2 * valid.shape[1])
        x = self.frontend(rearrange(self.input_norm(rearrange(log_mel, "b m t -> b t m")), "b t m -> b m t"))
        x = rearrange(x, "b d t -> b t d")
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        return self.encoder(x, valid=valid, num_layers=num_layers)

    def masked_prediction_loss(self, audio: torch.Tensor, lengths: torch.Tensor | None, *, start_prob: float = 0.08,
                               span: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """HuBERT's loss with α = 1 (Hsu et al. 2021 eq. 2-3: cross-entropy on masked frames only) ->
        (loss, accuracy on masked frames)."""
        valid = self.frame_valid(audio, lengths)
        mask = span_mask(valid, start_prob=start_prob, span=span)
        targets = self.targets(audio, lengths)
        logits = self.head(self(audio, lengths, mask=mask))[mask]
        loss = F.cross_entropy(logits, targets[mask])
        return loss, (logits.argmax(-1) == targets[mask]).float().mean()


def nearest_centroid(vectors: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """k-means assignment: vectors [..., D], centroids [K, D] -> LongTensor [...] of the nearest
    centroid in Euclidean distance (``‖x‖² − 2 x·c + ‖c‖²``, the first on ties)."""
    flat = vectors.reshape(-1, vectors.shape[-1]).to(centroids.dtype)
    distances = (centroids.pow(2).sum(-1)[None, :] - 2 * flat @ centroids.T)  # ‖x‖² does not change the argmin
    return distances.argmin(-1).reshape(vectors.shape[:-1])


class SSLEncoder(SemanticEncoder):
    """A :class:`SpeechSSL`'s hidden states after ``layer`` transformer layers (no final norm), frozen:
    speech vectors. The layers above ``layer`` never run, so they are dropped: the owner stores, and
    its spec rebuilds, the truncated model."""

    def __init__(self, model: SpeechSSL, *, layer: int):
        super().__init__(sample_rate=model.sample_rate)
        if not 0 <= layer <= model.num_layers:
            raise ValueError(f"layer must be in 0..{model.num_layers} (the SSL model's layers), got {layer}")
        if layer < model.num_layers:
            model.encoder.blocks = model.encoder.blocks[:layer]
            model.record_config(num_layers=layer)
        self.model = model
        self.layer = layer
        self.freeze()

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def hop_length(self) -> int:
        return self.model.frame_hop

    @property
    def context_seconds(self) -> float | None:
        return None

    def spec(self) -> dict[str, Any]:
        return {"type": "ssl", "config": self.model.hub_config, "layer": self.layer}

    def _features(self, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return rearrange(self.model(audio, lengths, num_layers=self.layer), "b t d -> b d t")


def fit_kmeans(vectors: torch.Tensor, num_clusters: int, *, seed: int = 0) -> torch.Tensor:
    """Centroids [K, D] of scikit-learn's mini-batch k-means (Sculley 2010) over vectors [N, D]."""
    from sklearn.cluster import MiniBatchKMeans

    if vectors.dim() != 2 or vectors.shape[0] < num_clusters:
        raise ValueError(f"k-means with {num_clusters} clusters needs at least as many vectors [N, D], "
                         f"got shape {tuple(vectors.shape)}")
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, batch_size=4096, n_init=3,
                             max_iter=100, compute_labels=False)
    kmeans.fit(vectors.detach().double().cpu().numpy())
    return torch.from_numpy(kmeans.cluster_centers_).float()


# -- BPE over unit sequences ------------------------------------------------------------------------
class UnitBPE:
    """Byte-pair encoding of unit sequences with Hugging Face ``tokenizers``: unit k is written as the
    character ``chr(UNIT_BASE + k)``, an utterance as one word (no pre-tokenizer, so merges may span
    any units), and an id decodes to its characters, so ``decode(encode(units)) == units`` exactly."""

    UNIT_BASE = 0x4E00  # CJK ideographs: 20,992 single characters, none of them special to the library

    def __init__(self, serialized: str):
        from tokenizers import Tokenizer as HFTokenizer

        self.tokenizer = HFTokenizer.from_str(serialized)

    @classmethod
    def train(cls, sequences: list[list[int]], *, num_units: int, vocab_size: int) -> UnitBPE:
        """Learn merges on ``sequences`` until ``vocab_size`` symbols (the ``num_units`` single units
        included, so every unit sequence encodes)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, trainers

        if vocab_size < num_units:
            raise ValueError(f"bpe_vocab_size ({vocab_size}) must be at least the number of units ({num_units})")
        tokenizer = HFTokenizer(models.BPE())
        alphabet = [chr(cls.UNIT_BASE + k) for k in range(num_units)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False,
                                      limit_alphabet=num_units)
        tokenizer.train_from_iterator([cls._text(units) for units in sequences], trainer)
        return cls(tokenizer.to_str())

    @classmethod
    def _text(cls, units: list[int]) -> str:
        return "".join(chr(cls.UNIT_BASE + k) for k in units)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def serialize(self) -> str:
        return self.tokenizer.to_str()

    def encode(self, units: list[int]) -> list[int]:
        return self.tokenizer.encode(self._text(units)).ids if units else []

    def decode(self, ids: list[int]) -> list[int]:
        text = "".join(self.tokenizer.id_to_token(i) for i in ids)
        return [ord(c) - self.UNIT_BASE for c in text]


def _padded_codes(sequences: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item id lists -> (codes LongTensor [B, 1, longest] zero-padded, lengths [B])."""
    codes = torch.zeros(len(sequences), 1, max(map(len, sequences), default=0), dtype=torch.long)
    for i, item in enumerate(sequences):
        codes[i, 0, :len(item)] = torch.tensor(item, dtype=torch.long)
    return codes.to(device), torch.tensor([len(item) for item in sequences], device=device)


# -- the tokenizer ------------------------------------------------------------------------------------
class VecTok(Tokenizer):
    """Speech vectors + semantic tokens (+ BPE), a vocoder and inverse k-means (see the module docstring).

    ``vectors`` is a speech-vector spec (:func:`mmtok.codecs.semantic.build_semantic_encoder`); the
    saved config holds its architecture and ``model.safetensors`` its weights, so a Hub folder is
    self-contained. The vector statistics, centroids, default prompt and BPE are fitted by
    :meth:`fit_units` (the training module calls it before the first step).
    """

    takes_voice_prompt = True

    def __init__(self, *, vectors: dict[str, Any], num_units: int = 300, bpe_vocab_size: int = 1000,
                 bpe: str | None = None, prompt_seconds: float = 3.0, vocoder_channels: int = 256,
                 vocoder_latent_dim: int = 128, inverse_dim: int = 256, inverse_layers: int = 4,
                 inverse_heads: int = 4, dropout: float = 0.1, vocoder_window_seconds: float = 0.5,
                 train_prompt_seconds: tuple[float, float] = (1.0, 3.0), predicted_vector_fraction: float = 0.5,
                 utterance_norm: bool = False):
        super().__init__()
        if not 0.0 <= predicted_vector_fraction <= 1.0:
            raise ValueError(f"predicted_vector_fraction must be in [0, 1], got {predicted_vector_fraction}")
        if not 0 < train_prompt_seconds[0] <= train_prompt_seconds[1]:
            raise ValueError(f"train_prompt_seconds must be (shortest, longest) with 0 < shortest ≤ longest, "
                             f"got {train_prompt_seconds}")
        self.vectors = build_semantic_encoder(vectors)
        if self.vectors.hop_length != math.prod(VOCODER_STRIDES):
            raise ValueError(f"vectors: {self.vectors.hop_length} samples per frame, the vocoder upsamples by "
                             f"{math.prod(VOCODER_STRIDES)} (50 frames/s at 16 kHz)")
        self.record_config(vectors=self.vectors.spec())
        dim = self.vectors.dim
        self.num_units = num_units
        self.bpe_vocab_size = bpe_vocab_size
        self.bpe = None if bpe is None else UnitBPE(bpe)
        self.prompt_frames = round(prompt_seconds * self.frame_rate)
        self.register_buffer("vector_mean", torch.zeros(dim))
        self.register_buffer("vector_std", torch.ones(dim))
        self.register_buffer("centroids", torch.zeros(num_units, dim))
        self.register_buffer("default_prompt", torch.zeros(dim, self.prompt_frames))
        self.vocoder_input = FrameConvNet(in_dim=dim, out_dim=vocoder_latent_dim, channels=vocoder_latent_dim)
        self.vocoder = ConvDecoder(channels=vocoder_channels, strides=VOCODER_STRIDES, latent_dim=vocoder_latent_dim)
        self.unit_embedding = nn.Embedding(num_units, inverse_dim)
        self.prompt_input = nn.Linear(dim, inverse_dim)
        self.segment_embedding = nn.Embedding(2, inverse_dim)  # 0: prompt vector, 1: unit
        self.inverse_transformer = Transformer(dim=inverse_dim, num_layers=inverse_layers, num_heads=inverse_heads,
                                               dropout=dropout)
        self.inverse_output = nn.Linear(inverse_dim, dim)
        self.vocoder_frames = max(1, round(vocoder_window_seconds * self.frame_rate))
        self.train_prompt_frames = tuple(max(1, round(s * self.frame_rate)) for s in train_prompt_seconds)
        self.predicted_vector_fraction = predicted_vector_fraction
        self.utterance_norm = utterance_norm

    # -- facts -----------------------------------------------------------------------------------
    @property
    def codebook_sizes(self) -> list[int]:
        return [self.num_units]

    @property
    def sample_rate(self) -> int:
        return self.vectors.sample_rate

    @property
    def hop_length(self) -> int:
        return self.vectors.hop_length

    @property
    def frame_rate(self) -> float:
        return self.vectors.frame_rate

    @property
    def units_fitted(self) -> bool:
        return bool(self.centroids.abs().sum() > 0)

    # -- vectors and units -----------------------------------------------------------------------
    def speech_vectors(self, audio: torch.Tensor, lengths: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised speech vectors [B, D, T] (T = ceil(N / hop)) and the valid frames [B, T]."""
        num_frames = math.ceil(audio.shape[-1] / self.hop_length)
        raw = self.vectors.features(audio, lengths, num_frames=num_frames)
        valid = _frame_valid(lengths, self.hop_length, num_frames, audio)
        return (raw - self.vector_mean[:, None]) / self.vector_std[:, None], valid

    def unit_features(self, vectors: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """What k-means clusters: the standardised vectors [B, D, T], or with ``utterance_norm`` each item's
        vectors standardised again over its own valid frames (``valid`` [B, T]), which takes out the
        speaker's mean and scale per channel (the vocoder and inverse k-means still see the vectors)."""
        if not self.utterance_norm:
            return vectors
        if valid is None:
            valid = torch.ones(vectors.shape[0], vectors.shape[-1], dtype=torch.bool, device=vectors.device)
        weight = valid[:, None].to(vectors.dtype)
        count = weight.sum(-1, keepdim=True).clamp(min=1)
        mean = (vectors * weight).sum(-1, keepdim=True) / count
        std = (((vectors - mean) * weight).pow(2).sum(-1, keepdim=True) / count).sqrt()
        return (vectors - mean) / (std + 1e-5)

    def units(self, vectors: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised vectors [B, D, T] (``valid`` [B, T]: the frames of each item, None: all) -> units
        LongTensor [B, T]: the nearest centroid to each frame's :meth:`unit_features`."""
        self._check_fitted()
        return nearest_centroid(rearrange(self.unit_features(vectors, valid), "b d t -> b t d"), self.centroids)

    def _check_fitted(self) -> None:
        if not self.units_fitted:
            from mmtok.errors import UsageError

            raise UsageError("this VecTok has no k-means centroids yet: train it (mmtok fit -c "
                             "recipes/vectok/vectok_speech.yaml) or load a trained folder")

    @torch.no_grad()
    def fit_units(self, batches, *, max_frames: int = 200_000, seed: int = 0) -> dict[str, float]:
        """Fit the vector statistics, the k-means centroids, the default prompt and the BPE on the
        audio batches (dicts with ``audio`` and ``lengths``) until ``max_frames`` frames; the first
        item with a full prompt's frames becomes the default voice. Returns what was fitted."""
        pieces, frames = [], 0
        for batch in batches:
            if batch is None:
                continue
            num_frames = math.ceil(batch["audio"].shape[-1] / self.hop_length)
            raw = self.vectors.features(batch["audio"], batch["lengths"], num_frames=num_frames)
            valid = _frame_valid(batch["lengths"], self.hop_length, num_frames, batch["audio"])
            pieces += [item[:, :int(v.sum())] for item, v in zip(raw, valid)]
            frames += int(valid.sum())
            if frames >= max_frames:
                break
        if not pieces:
            raise ValueError("no audio to fit Vec-Tok's units on (every batch was empty or skipped)")
        flat = torch.cat(pieces, dim=1).T
        self.vector_mean.copy_(flat.mean(0))
        self.vector_std.copy_(flat.std(0).clamp(min=1e-5))
        standardised = [(p - self.vector_mean[:, None]) / self.vector_std[:, None] for p in pieces]
        features = [self.unit_features(p[None])[0] for p in standardised]
        self.centroids.copy_(fit_kmeans(torch.cat(features, dim=1).T, self.num_units, seed=seed))
        prompt = next((p for p in standardised if p.shape[1] >= self.prompt_frames), None)
        if prompt is None:
            raise ValueError(f"no utterance of at least {self.prompt_frames / self.frame_rate:g} s "
                             "(the prompt length) to take the default voice from")
        self.default_prompt.copy_(prompt[:, :self.prompt_frames])
        sequences = [self.units(p[None])[0].tolist() for p in standardised]
        self.bpe = UnitBPE.train(sequences, num_units=self.num_units, vocab_size=self.bpe_vocab_size)
        self.record_config(bpe=self.bpe.serialize())
        return {"frames": float(flat.shape[0]), "utterances": float(len(pieces)),
                "bpe_vocab": float(self.bpe.vocab_size)}

    def set_bpe(self, serialized: str) -> None:
        """Install a BPE fitted elsewhere (another rank), recorded in the config."""
        self.bpe = UnitBPE(serialized)
        self.record_config(bpe=serialized)

    # -- BPE ------------------------------------------------------------------------------------
    def to_bpe(self, tokens: Tokens) -> Tokens:
        """Unit tokens -> BPE ids: ``Tokens [B, 1, S]`` with per-item lengths and no frame rate (the
        mark of BPE tokens; ``media_lengths`` kept so decoding restores the length)."""
        bpe = self._require_bpe()
        ids = [bpe.encode(tokens[i].codes[0, 0].tolist()) for i in range(tokens.batch_size)]
        codes, lengths = _padded_codes(ids, tokens.codes.device)
        return Tokens(codes=codes, lengths=lengths, sample_rate=tokens.sample_rate, media_lengths=tokens.media_lengths)

    def from_bpe(self, tokens: Tokens) -> Tokens:
        """BPE ids -> unit tokens at the frame rate (exactly the units :meth:`to_bpe` was given)."""
        bpe = self._require_bpe()
        bad = (tokens.codes < 0) | (tokens.codes >= bpe.vocab_size)
        if bool(bad.any()):
            from mmtok.errors import DataError

            raise DataError(f"BPE tokens hold {int(tokens.codes[bad][0])}, expected ids in 0..{bpe.vocab_size - 1}")
        units = [bpe.decode(tokens[i].codes[0, 0].tolist()) for i in range(tokens.batch_size)]
        codes, lengths = _padded_codes(units, tokens.codes.device)
        return Tokens(codes=codes, lengths=lengths, frame_rate=self.frame_rate, sample_rate=self.sample_rate,
                      media_lengths=tokens.media_lengths)

    def _require_bpe(self) -> UnitBPE:
        if self.bpe is None:
            self._check_fitted()
            from mmtok.errors import UsageError

            raise UsageError("this VecTok has no BPE fitted")
        return self.bpe

    # -- inverse k-means and the vocoder -----------------------------------------------------------
    def inverse(self, units: torch.Tensor, valid: torch.Tensor, prompt: torch.Tensor | None = None,
                prompt_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Units [B, T] (``valid`` [B, T]) + a prompt's standardised vectors [B, D, P] (``prompt_valid``
        [B, P]; None: the default voice) -> standardised vectors [B, D, T]. Positions count from each
        item's prompt start, the units continuing after its last valid prompt frame."""
        if prompt is None:
            prompt = self.default_prompt[None].expand(units.shape[0], -1, -1)
        if prompt_valid is None:
            prompt_valid = torch.ones(prompt.shape[0], prompt.shape[-1], dtype=torch.bool, device=prompt.device)
        prompt_part = self.prompt_input(rearrange(prompt, "b d p -> b p d")) + self.segment_embedding.weight[0]
        unit_part = self.unit_embedding(units.clamp(min=0)) + self.segment_embedding.weight[1]
        steps = torch.arange(prompt.shape[-1] + units.shape[1], device=units.device)[None, :]
        prompt_length = prompt_valid.sum(-1, keepdim=True)
        positions = torch.where(steps < prompt.shape[-1], steps, steps - prompt.shape[-1] + prompt_length).float()
        hidden = self.inverse_transformer(torch.cat([prompt_part, unit_part], dim=1),
                                          valid=torch.cat([prompt_valid, valid], dim=1), positions=positions)
        return rearrange(self.inverse_output(hidden[:, prompt.shape[-1]:]), "b t d -> b d t")

    def vocode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Standardised vectors [B, D, T] -> waveform [B, 1, T · hop]."""
        return self.vocoder(self.vocoder_input(vectors))

    def prompt_vectors(self, audio: torch.Tensor, lengths: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``prompt_seconds`` of a prompt's standardised vectors [B, D, P] and validity [B, P]."""
        vectors, valid = self.speech_vectors(audio, lengths)
        return vectors[..., :self.prompt_frames], valid[:, :self.prompt_frames]

    # -- training --------------------------------------------------------------------------------
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> CodecOutput:
        """One training pass of both learned parts (the vectors and units are fixed):

        - inverse k-means: the first P frames of each item (P drawn in ``train_prompt_seconds``, at most
          half the shortest item) are the prompt, the rest the target; the loss is the L1 distance to
          the standardised vectors on the target frames (``semantic_loss`` of the output);
        - vocoder: a window of ``vocoder_window_seconds`` after the prompt, vocoded from the true
          vectors or, in a ``predicted_vector_fraction`` of the batches, from the inverse model's
          (detached) prediction, so that the vocoder also learns the smoother vectors it is given when
          decoding tokens. ``audio`` of the output is that window, ``target`` the real audio under it.
        """
        vectors, valid = self.speech_vectors(audio, lengths)
        units = self.units(vectors, valid)
        frames = int(valid.sum(-1).min())
        if frames < 2:
            raise ValueError(f"Vec-Tok training needs items of at least 2 frames ({2 / self.frame_rate:g} s)")
        shortest, longest = self.train_prompt_frames
        longest = max(1, min(longest, frames // 2))
        prompt = int(torch.randint(min(shortest, longest), longest + 1, ()))
        predicted = self.inverse(units[:, prompt:], valid[:, prompt:], vectors[..., :prompt], valid[:, :prompt])
        target_valid = valid[:, prompt:, None].to(predicted.dtype).transpose(1, 2)
        inverse_loss = ((predicted - vectors[..., prompt:]).abs() * target_valid).sum() / (
            target_valid.sum() * predicted.shape[1]).clamp(min=1)

        window = min(self.vocoder_frames, vectors.shape[-1] - prompt)
        start = prompt + int(torch.randint(0, max(1, frames - prompt - window + 1), ()))
        use_predicted = bool(torch.rand(()) < self.predicted_vector_fraction)
        source = predicted[..., start - prompt: start - prompt + window].detach() if use_predicted else \
            vectors[..., start: start + window]
        hop = self.hop_length
        target = audio[..., start * hop: (start + window) * hop]
        target = F.pad(target, (0, window * hop - target.shape[-1]))
        return CodecOutput(audio=self.vocode(source), codes=units[:, None], commitment_loss=vectors.new_zeros(()),
                           latent=vectors, semantic_loss=inverse_loss, target=target)

    # -- the tokenizer contract ------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *, num_quantizers: int | None = None,
               bpe: bool = False) -> Tokens:
        """audio [B, 1, N] -> units ``Tokens [B, 1, T]`` at 50 Hz, or with ``bpe`` their BPE ids."""
        self._check_num_quantizers(num_quantizers)
        vectors, valid = self.speech_vectors(x, lengths)
        media_lengths = lengths if lengths is not None else torch.full((x.shape[0],), x.shape[-1], device=x.device)
        tokens = Tokens(codes=self.units(vectors, valid)[:, None],
                        lengths=valid.sum(-1) if lengths is not None else None, frame_rate=self.frame_rate,
                        sample_rate=self.sample_rate, media_lengths=media_lengths.long())
        return self.to_bpe(tokens) if bpe else tokens

    @torch.no_grad()
    def decode(self, tokens: Tokens, *, num_quantizers: int | None = None, prompt: torch.Tensor | None = None,
               prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Units (or BPE ids: tokens without a frame rate) -> audio [B, 1, N] in the voice of ``prompt``
        (audio [B or 1, 1, N'] at ``sample_rate``, its first ``prompt_seconds`` used), else the default
        voice. N is the encoded length when known; samples past an item's length are zero."""
        self._check_num_quantizers(num_quantizers)
        if tokens.frame_rate is None:
            tokens = self.from_bpe(tokens)
        self.check_tokens(tokens, allow_empty=True)
        units = tokens.codes[:, 0]
        valid = torch.ones_like(units, dtype=torch.bool) if tokens.lengths is None else (
            torch.arange(units.shape[1], device=units.device)[None, :] < tokens.lengths[:, None])
        prompt_vectors = prompt_valid = None
        if prompt is not None:
            prompt_vectors, prompt_valid = self.prompt_vectors(prompt, prompt_lengths)
            if prompt_vectors.shape[0] == 1 and units.shape[0] > 1:
                prompt_vectors = prompt_vectors.expand(units.shape[0], -1, -1)
                prompt_valid = prompt_valid.expand(units.shape[0], -1)
        audio = self.vocode(self.inverse(units, valid, prompt_vectors, prompt_valid))
        samples = valid.sum(-1) * self.hop_length if tokens.media_lengths is None else tokens.media_lengths
        audio = audio[..., :int(samples.max())] if samples.numel() else audio
        return audio * (torch.arange(audio.shape[-1], device=audio.device)[None, :] < samples[:, None])[:, None]

    @torch.no_grad()
    def convert(self, source: torch.Tensor, prompt: torch.Tensor, *, source_lengths: torch.Tensor | None = None,
                prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Zero-shot voice conversion: the units of ``source`` spoken in the voice of ``prompt``."""
        return self.decode(self.encode(source, source_lengths), prompt=prompt, prompt_lengths=prompt_lengths)
