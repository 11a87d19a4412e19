"""X-Codec: semantic features fused before residual VQ, a semantic reconstruction loss after it.

Ye et al., 2024, "Codec Does Matter: Exploring the Semantic Shortcoming of Codec for Audio Language
Model" (the architecture figure and the training objective):

    acoustic  A = Enc_a(x)                                  [B, D_a, T]   (the RVQ codec's encoder)
    semantic  S = teacher(x)  (frozen, resampled to T)      [B, D_t, T]
    fused     z = fc_prior([A ; Enc_s(S)])                  [B, D,   T]   (concatenation, then a linear layer)
    quantized ẑ = RVQ(z)
    outputs   x̂ = Dec_a(ẑ),   Ŝ = Dec_s(ẑ)                              (fc_post_a / fc_post_s are the
                                                                          first convolutions of each head)
    loss      L = L_acoustic + λ_s · L_semantic(Ŝ, S)                     (MSE, or 1 − cosine)

Encoding needs the teacher; decoding does not: :meth:`decode` runs only the RVQ codebooks and the
acoustic decoder, exactly as :class:`~mmtok.codecs.rvq.RVQCodec` does, so every tool that reads
tokens (``mmtok decode``, generators) works unchanged. The teacher's weights are part of this
model's ``model.safetensors`` and its architecture part of ``config.json`` (see
:mod:`mmtok.codecs.semantic`), so a Hub folder is self-contained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmtok.codecs.base import ReceptiveField
from mmtok.codecs.rvq import CodecOutput, RVQCodec, frame_mask
from mmtok.codecs.seanet import ConvEncoder, FrameConvNet, conv_receptive_field
from mmtok.codecs.semantic import build_semantic_encoder

SEMANTIC_LOSSES = ("mse", "cosine")


def semantic_reconstruction_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                                 kind: str = "mse") -> torch.Tensor:
    """Mean over valid frames (``mask [B, T]``) of ‖Ŝ − S‖² / D (``"mse"``) or 1 − cos(Ŝ, S) (``"cosine"``)."""
    if kind == "mse":
        per_frame = (predicted - target).pow(2).mean(1)
    elif kind == "cosine":
        per_frame = 1 - F.cosine_similarity(predicted, target, dim=1)
    else:
        raise ValueError(f"semantic loss must be one of {SEMANTIC_LOSSES}, got {kind!r}")
    mask = mask.to(per_frame.dtype)
    return (per_frame * mask).sum() / mask.sum().clamp(min=1)


class XCodec(RVQCodec):
    """An :class:`RVQCodec` whose quantized vector also carries a frozen teacher's semantic features.

    ``teacher`` is a semantic-encoder spec (:func:`mmtok.codecs.semantic.build_semantic_encoder`), e.g.
    ``{"type": "recognizer", "path": "checkpoints/phoneme-recognizer"}`` or
    ``{"type": "hf", "path": "/models/hubert-base", "layer": "mean"}``.
    """

    def __init__(
        self,
        *,
        teacher: dict[str, Any],
        sample_rate: int = 16000,
        strides: Sequence[int] = (2, 4, 5, 8),
        encoder_channels: int = 32,
        decoder_channels: int = 512,
        acoustic_dim: int = 128,
        semantic_dim: int = 128,
        semantic_channels: int = 256,
        latent_dim: int = 128,
        semantic_loss: str = "mse",
        num_quantizers: int = 8,
        codebook_size: int = 1024,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 1.0,
        quantizer_dropout: float = 0.5,
    ):
        if semantic_loss not in SEMANTIC_LOSSES:
            raise ValueError(f"semantic_loss must be one of {SEMANTIC_LOSSES}, got {semantic_loss!r}")
        super().__init__(sample_rate=sample_rate, strides=strides, encoder_channels=encoder_channels,
                         decoder_channels=decoder_channels, latent_dim=latent_dim, num_quantizers=num_quantizers,
                         codebook_size=codebook_size, ema_decay=ema_decay, kmeans_init=kmeans_init,
                         kmeans_iters=kmeans_iters, dead_code_threshold=dead_code_threshold,
                         commitment_weight=commitment_weight, quantizer_dropout=quantizer_dropout)
        self.teacher = build_semantic_encoder(teacher)
        # Store the architecture, not the path: the saved folder then rebuilds the teacher by itself.
        self.record_config(teacher=self.teacher.spec())
        self.semantic_loss_kind = semantic_loss
        self.encoder = ConvEncoder(channels=encoder_channels, strides=strides, latent_dim=acoustic_dim)
        self.semantic_encoder = FrameConvNet(in_dim=self.teacher.dim, out_dim=semantic_dim, channels=semantic_channels)
        self.fc_prior = nn.Conv1d(acoustic_dim + semantic_dim, latent_dim, 1)
        self.semantic_decoder = FrameConvNet(in_dim=latent_dim, out_dim=self.teacher.dim, channels=semantic_channels)

    @property
    def receptive_field(self) -> ReceptiveField | None:
        """The acoustic branch's, or the teacher's context plus the semantic encoder's, whichever is
        larger; None when the teacher's context is unbounded."""
        base = super().receptive_field
        teacher_seconds = self.teacher.context_seconds
        if teacher_seconds is None:
            return None
        semantic = math.ceil(teacher_seconds * self.frame_rate + conv_receptive_field(self.semantic_encoder))
        alignment = self.teacher.alignment_seconds * self.frame_rate
        if abs(alignment - round(alignment)) > 1e-6:
            raise ValueError(f"the teacher's window grid ({self.teacher.alignment_seconds} s) is not a whole number "
                             f"of codec frames ({1 / self.frame_rate} s)")
        return ReceptiveField(encode_context=max(base.encode_context, semantic), decode_context=base.decode_context,
                              alignment=max(1, round(alignment)))

    def teacher_features(self, audio: torch.Tensor, lengths: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        """The frozen teacher's features S, [B, D_t, num_frames]."""
        return self.teacher.features(audio, lengths, num_frames=num_frames, sample_rate=self.sample_rate)

    def _fuse(self, audio: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        acoustic = self.encoder(self._pad(audio))
        return self.fc_prior(torch.cat([acoustic, self.semantic_encoder(target)], dim=1))

    def _latent(self, audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        return self._fuse(audio, self.teacher_features(audio, lengths, math.ceil(audio.shape[-1] / self.hop_length)))

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> CodecOutput:
        num_samples = audio.shape[-1]
        mask = frame_mask(lengths, num_samples, self.hop_length, audio.shape[0], audio.device)
        target = self.teacher_features(audio, lengths, mask.shape[1])
        latent = self._fuse(audio, target)
        dropout = self.training and self._draw_dropout(audio.device)
        quantized, codes, commitment = self._quantize(latent, mask, dropout=dropout)
        reconstruction = self.decoder(quantized)[..., :num_samples]
        semantic = semantic_reconstruction_loss(self.semantic_decoder(quantized), target, mask,
                                                self.semantic_loss_kind)
        return CodecOutput(audio=reconstruction, codes=codes, commitment_loss=commitment, latent=latent,
                           semantic_loss=semantic)
