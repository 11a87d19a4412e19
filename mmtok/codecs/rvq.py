"""RVQ audio codec: convolutional encoder/decoder around residual vector quantization.

References: SoundStream (Zeghidour et al., 2021; residual VQ, Algorithm 1, and quantizer dropout so
one model serves many bitrates), EnCodec (Défossez et al., 2022; EMA codebooks with decay 0.99,
k-means initialisation, dead-code expiry at 2, commitment loss) and DAC (Kumar et al., 2023; Snake
activations, multi-scale mel loss, dropout applied to a fraction of the batches).

At 16 kHz with strides (2, 4, 5, 8) the hop is 320 samples, i.e. 50 frames/s; the default 8 codebooks
of 1024 entries give 8 × 10 bit × 50 /s = 4 kbps, and any first ``n`` codebooks decode at n × 500 bps.

Shapes: ``audio: FloatTensor [B, 1, N]``, ``latent: [B, D, T]``, ``codes: LongTensor [B, Q, T]``
with ``T = ceil(N / hop_length)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from mmtok.codecs.base import ReceptiveField, Tokenizer
from mmtok.codecs.quantizers import codewords, dequantize, draw_dropout, nearest_codes, residual_vq, share_across_ranks
from mmtok.codecs.seanet import ConvDecoder, ConvEncoder, conv_receptive_field
from mmtok.tokens import Tokens


@dataclass
class CodecOutput:
    """What a training forward pass returns.

    audio: FloatTensor [B, 1, N] reconstruction; codes: LongTensor [B, Q, T] (-1 for dropped
    quantizers); commitment_loss: scalar; latent: FloatTensor [B, D, T] before quantization;
    semantic_loss: scalar for codecs with a semantic head (X-Codec) or a semantic reconstruction
    (Vec-Tok's inverse k-means), else None; target: FloatTensor [B, 1, N'] the audio ``audio`` is
    compared with when it is not the input (a vocoder trained on windows), else None.
    """

    audio: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor
    latent: torch.Tensor
    semantic_loss: torch.Tensor | None = None
    target: torch.Tensor | None = None


def frame_mask(lengths: torch.Tensor | None, num_samples: int, hop_length: int, batch: int,
               device: torch.device) -> torch.Tensor:
    """BoolTensor [B, T]: which frames hold at least one valid sample."""
    num_frames = math.ceil(num_samples / hop_length)
    if lengths is None:
        return torch.ones(batch, num_frames, dtype=torch.bool, device=device)
    frames = torch.div(lengths + hop_length - 1, hop_length, rounding_mode="floor")
    return torch.arange(num_frames, device=device)[None, :] < frames[:, None]


class RVQCodec(Tokenizer):
    """Waveform codec with residual VQ and quantizer dropout.

    Every quantizer setting is explicit (:func:`mmtok.codecs.quantizers.residual_vq`): the library's
    defaults are not the ones EnCodec and X-Codec were trained with. A code of -1 (a dropped
    quantizer) contributes nothing when decoding.
    """

    dropped_code = -1

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        strides: Sequence[int] = (2, 4, 5, 8),
        encoder_channels: int = 32,
        decoder_channels: int = 512,
        latent_dim: int = 128,
        num_quantizers: int = 8,
        codebook_size: int = 1024,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 1.0,
        quantizer_dropout: float = 0.5,
    ):
        super().__init__()
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must be a probability in [0, 1], got {quantizer_dropout}")
        self._sample_rate = sample_rate
        self.hop_length = math.prod(strides)
        self.quantizer_dropout = quantizer_dropout
        self._distributed_sync = False
        self.encoder = ConvEncoder(channels=encoder_channels, strides=strides, latent_dim=latent_dim)
        self.decoder = ConvDecoder(channels=decoder_channels, strides=tuple(reversed(strides)),
                                   latent_dim=latent_dim)
        self.quantizer = residual_vq(dim=latent_dim, num_quantizers=num_quantizers, codebook_size=codebook_size,
                                     ema_decay=ema_decay, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                                     dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight,
                                     dropout=quantizer_dropout > 0)

    # -- facts ---------------------------------------------------------------------------------
    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.quantizer.codebook_sizes)

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def frame_rate(self) -> float:
        return self._sample_rate / self.hop_length

    @property
    def receptive_field(self) -> ReceptiveField:
        """Conv encoder and decoder: finite, the whole receptive field width on each side (a safe
        bound: the convolutions are centred, so half would do)."""
        return ReceptiveField(encode_context=self._acoustic_context(),
                              decode_context=math.ceil(conv_receptive_field(self.decoder)))

    def _acoustic_context(self) -> int:
        return math.ceil(conv_receptive_field(self.encoder) / self.hop_length)

    # -- pieces --------------------------------------------------------------------------------
    def _latent(self, audio: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """audio [B, 1, N] with ``lengths`` valid samples (None: all) -> the vector the RVQ quantizes,
        [B, D, ceil(N / hop)]. The conv encoder needs no lengths: padding stays past the valid frames."""
        return self.encoder(self._pad(audio))

    def _pad(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"audio must be [B, 1, N], got shape {tuple(audio.shape)}")
        remainder = audio.shape[-1] % self.hop_length
        return F.pad(audio, (0, self.hop_length - remainder)) if remainder else audio

    def _quantize(self, latent: torch.Tensor, mask: torch.Tensor, *, dropout: bool):
        """latent [B, D, T] -> (quantized [B, D, T], codes [B, Q, T], commitment loss scalar); outside
        training a pure function (no k-means initialisation, no EMA update)."""
        if not self.training:
            codes, commitment = self._residual_search(latent)
            return self.dequantize(codes), codes, commitment
        self.quantizer.quantize_dropout = dropout
        quantized, indices, losses = self.quantizer(rearrange(latent, "b d t -> b t d"), mask=mask)
        return rearrange(quantized, "b t d -> b d t"), rearrange(indices, "b t q -> b q t"), losses.sum()

    def nearest_codes(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, D, T] -> codes [B, Q, T]: the quantizer's codes in eval mode, as a pure function of
        the codebooks (:func:`mmtok.codecs.quantizers.nearest_codes`)."""
        return self._residual_search(latent)[0]

    def _residual_search(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, commitment = nearest_codes(self.quantizer, rearrange(latent, "b d t -> b t d"))
        return rearrange(codes, "b t q -> b q t"), commitment

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q', T] with Q' ≤ Q (entries of -1 skipped) -> latent [B, D, T]: Σ of the chosen codewords."""
        if codes.shape[1] > self.num_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} codebooks, the model has {self.num_codebooks}")
        return rearrange(dequantize(self.quantizer, rearrange(codes, "b q t -> b t q")), "b t d -> b d t")

    def codebook_vectors(self) -> list[torch.Tensor]:
        """Per codebook, its codewords [V, D] in the latent space the decoder reads (their sum is
        :meth:`dequantize`)."""
        return codewords(self.quantizer)

    # -- training ------------------------------------------------------------------------------
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> CodecOutput:
        """Encode, quantize (with dropout on a ``quantizer_dropout`` fraction of training batches), decode."""
        num_samples = audio.shape[-1]
        mask = frame_mask(lengths, num_samples, self.hop_length, audio.shape[0], audio.device)
        latent = self._latent(audio, lengths)
        dropout = self.training and self._draw_dropout(audio.device)
        quantized, codes, commitment = self._quantize(latent, mask, dropout=dropout)
        reconstruction = self.decoder(quantized)[..., :num_samples]
        return CodecOutput(audio=reconstruction, codes=codes, commitment_loss=commitment, latent=latent)

    def _draw_dropout(self, device: torch.device) -> bool:
        return draw_dropout(self.quantizer_dropout, device=device, synced=self._distributed_sync)

    def enable_distributed_sync(self) -> None:
        """Share k-means init, EMA codebook statistics and the dropout draw across DDP ranks (called by
        the training module once the process group is up; see
        :func:`mmtok.codecs.quantizers.share_across_ranks`)."""
        self._distributed_sync = share_across_ranks(self.quantizer)

    # -- the tokenizer contract ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *,
               num_quantizers: int | None = None) -> Tokens:
        num_quantizers = self._check_num_quantizers(num_quantizers)
        num_samples = x.shape[-1]
        mask = frame_mask(lengths, num_samples, self.hop_length, x.shape[0], x.device)
        codes = self.nearest_codes(self._latent(x, lengths))
        media_lengths = lengths if lengths is not None else torch.full(
            (x.shape[0],), num_samples, dtype=torch.long, device=x.device)
        return Tokens(
            codes=codes[:, :num_quantizers],
            lengths=mask.sum(-1) if lengths is not None else None,
            frame_rate=self.frame_rate,
            sample_rate=self.sample_rate,
            media_lengths=media_lengths.long(),
        )

    @torch.no_grad()
    def decode(self, tokens: Tokens, *, num_quantizers: int | None = None) -> torch.Tensor:
        """Tokens -> audio [B, 1, N]; N is the encoded length when known, else T · hop_length.
        Samples past an item's ``media_lengths`` are zero. ``num_quantizers`` uses only the first
        codebooks of ``tokens`` (a lower bitrate)."""
        self.check_tokens(tokens, allow_empty=True)
        codes = tokens.codes[:, : self._check_num_quantizers(num_quantizers)]
        audio = self.decoder(self.dequantize(codes))
        if tokens.media_lengths is None:
            return audio
        audio = audio[..., : int(tokens.media_lengths.max())]
        valid = torch.arange(audio.shape[-1], device=audio.device)[None, :] < tokens.media_lengths[:, None]
        return audio * valid[:, None, :]
