"""VQGAN-style image tokenizer: a convolutional encoder and decoder around residual discrete codes.

References: VQGAN (Esser et al., 2021, "Taming Transformers for High-Resolution Image Synthesis":
conv encoder E, quantizer q, conv decoder G, x̂ = G(q(E(x))), trained with a reconstruction loss, a
perceptual loss, a commitment loss and a PatchGAN discriminator whose weight is set adaptively,
eq. 7), VQ-VAE (van den Oord et al., 2017; codebooks updated by EMA as in VQ-VAE-2 / EnCodec),
RQ-VAE (Lee et al., 2022) / SoundStream (Zeghidour et al., 2021, Algorithm 1) for residual
quantization of image features, FSQ (Mentzer et al., 2023) and LFQ (MAGVIT-v2, Yu et al., 2023)
as code-free alternatives, LPIPS (Zhang et al., 2018) for the perceptual distance and PatchGAN
(Isola et al., 2017) for the discriminator.

The encoder and decoder are diffusers' VAE ``Encoder`` / ``Decoder`` (``DownEncoderBlock2D`` /
``UpDecoderBlock2D``, group-normed ResNet blocks, an optional mid-block attention); ``n`` entries
in ``block_channels`` downsample by ``f = 2 ** (n - 1)``. The quantizer is chosen by name (
:data:`QUANTIZERS`): ``"vq"`` (vector-quantize-pytorch ``ResidualVQ``, EMA codebooks, k-means
init, dead-code expiry), ``"fsq"`` (``ResidualFSQ``) or ``"lfq"`` (``ResidualLFQ``), each with
``num_quantizers`` residual levels, so any first q codebooks decode.

Losses (computed by :class:`mmtok.training.image_tokenizer.ImageTokenizerModule`):
``λ_1 |x − x̂|₁ + λ_2 ‖x − x̂‖² + λ_p · PerceptualLoss(x, x̂) + λ_commit · commitment (+ the LFQ
entropy term) + λ_adv · w · hinge_G(D(x̂))``, with ``w = ‖∇_L rec‖ / (‖∇_L adv‖ + 1e-4)`` at the
decoder's last layer L (VQGAN eq. 7). The perceptual network is any frozen model with a
``feature_maps(images)`` method (here the digit classifier trained by mmtok: no downloaded VGG).

Shapes: ``images: FloatTensor [B, C, H, W]`` in [0, 1]; ``latent: [B, D, h, w]`` with
``(h, w) = (H / f, W / f)``; ``codes: LongTensor [B, Q, h · w]`` in raster order (cell (i, j) is
step ``i · w + j``), ``Tokens.grid == (h, w)``. 32 x 32 digits with f = 4 give an 8 x 8 grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder, Encoder
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import ResidualFSQ, ResidualLFQ

from mmtok.codecs.base import Tokenizer, check_image_batch
from mmtok.codecs.quantizers import (codewords, dequantize, draw_dropout, nearest_codes, residual_vq,
                                     share_across_ranks)
from mmtok.tokens import Tokens


@dataclass
class ImageTokenizerOutput:
    """What a training forward pass returns.

    images: FloatTensor [B, C, H, W] reconstruction (not clamped), or [B, C, F, H, W] for video;
    codes: LongTensor [B, Q, N] (-1 for dropped quantizers); quantizer_loss: scalar (commitment, +
    LFQ's entropy term); latent: the vectors before quantization; lengths: LongTensor [B] of the
    frames reconstructed per video item (None for images).
    """

    images: torch.Tensor
    codes: torch.Tensor
    quantizer_loss: torch.Tensor
    latent: torch.Tensor
    lengths: torch.Tensor | None = None


# ----------------------------------------------------------------------------- quantizers
# Each maps latent vectors [B, N, D] to codes [B, N, Q]: ``forward`` in training (may update EMA
# codebooks), ``nearest_codes`` as a pure function of the codebooks, ``dequantize`` from any first Q' ≤ Q.


class ResidualVQQuantizer(nn.Module):
    """``ResidualVQ`` with every argument explicit (:func:`mmtok.codecs.quantizers.residual_vq`)."""

    def __init__(self, *, dim: int, num_quantizers: int, codebook_size: int, ema_decay: float, kmeans_init: bool,
                 kmeans_iters: int, dead_code_threshold: float, commitment_weight: float, dropout: bool):
        super().__init__()
        self.codebook_sizes = [codebook_size] * num_quantizers
        self.rvq = residual_vq(dim=dim, num_quantizers=num_quantizers, codebook_size=codebook_size,
                               ema_decay=ema_decay, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                               dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight,
                               dropout=dropout)

    def forward(self, latent: torch.Tensor, *, dropout: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.rvq.quantize_dropout = dropout
        quantized, codes, losses = self.rvq(latent)  # [B, N, D], [B, N, Q], [Q]
        return quantized, codes, losses.sum()

    def nearest_codes(self, latent: torch.Tensor) -> torch.Tensor:
        """A pure residual nearest-codeword search (:func:`mmtok.codecs.quantizers.nearest_codes`)."""
        return nearest_codes(self.rvq, latent)[0]

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, N, Q'] (entries of -1 skipped) -> [B, N, D]: Σ of the chosen codewords."""
        return dequantize(self.rvq, codes)

    def codebook_vectors(self) -> list[torch.Tensor]:
        return codewords(self.rvq)

    def enable_distributed_sync(self) -> bool:
        return share_across_ranks(self.rvq)


class _ImplicitQuantizer(nn.Module):
    """Shared by FSQ and LFQ: fixed (implicit) codebooks, so the forward pass is already pure;
    level q's codewords are ``codebooks[q]`` times ``scale(q)``."""

    module: ResidualFSQ | ResidualLFQ

    def forward(self, latent: torch.Tensor, *, dropout: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.module.quantize_dropout = dropout
        quantized, codes, *losses = self.module(latent)  # [B, N, D], [B, N, Q], (LFQ: [Q])
        return quantized, codes.long(), losses[0].sum() if losses else latent.new_zeros(())

    def nearest_codes(self, latent: torch.Tensor) -> torch.Tensor:
        dropout, self.module.quantize_dropout = self.module.quantize_dropout, False
        try:
            return self.module(latent)[1].long()  # FSQ's indices are int32
        finally:
            self.module.quantize_dropout = dropout

    def scale(self, q: int) -> torch.Tensor | float:
        return 1.0

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        vectors = 0
        for q, codebook in enumerate(self.module.codebooks[: codes.shape[-1]]):  # [V, d]
            index = codes[..., q]
            vectors = vectors + codebook[index.clamp(min=0)] * self.scale(q) * (index >= 0).unsqueeze(-1)
        return self.module.project_out(vectors)

    def codebook_vectors(self) -> list[torch.Tensor]:
        return [self.module.project_out(codebook * self.scale(q)).detach()
                for q, codebook in enumerate(self.module.codebooks)]


class ResidualFSQQuantizer(_ImplicitQuantizer):
    """``ResidualFSQ``: each level rounds a ``len(levels)``-dim projection to a fixed grid of
    ``prod(levels)`` points, scaled by ``levels ** -q`` at level q."""

    def __init__(self, *, dim: int, num_quantizers: int, levels: Sequence[int], dropout: bool):
        super().__init__()
        self.module = ResidualFSQ(dim=dim, levels=list(levels), num_quantizers=num_quantizers, quantize_dropout=dropout,
                                  quantize_dropout_cutoff_index=0, bound_hard_clamp=True)
        self.codebook_sizes = [int(self.module.codebook_size)] * num_quantizers

    def scale(self, q: int) -> torch.Tensor:
        return self.module.scales[q]


class ResidualLFQQuantizer(_ImplicitQuantizer):
    """``ResidualLFQ``: each level takes the signs of a log2(V)-dim projection (codewords ±2^-q),
    with MAGVIT-v2's entropy loss (per-sample entropy down, batch entropy up) and a commitment loss."""

    def __init__(self, *, dim: int, num_quantizers: int, codebook_size: int, entropy_weight: float,
                 commitment_weight: float, dropout: bool):
        super().__init__()
        if codebook_size < 2 or codebook_size & (codebook_size - 1):
            raise ValueError(f"lfq needs a codebook_size that is a power of 2, got {codebook_size}")
        self.module = ResidualLFQ(
            dim=dim, num_quantizers=num_quantizers, codebook_size=codebook_size, quantize_dropout=dropout,
            quantize_dropout_cutoff_index=0, entropy_loss_weight=entropy_weight,
            commitment_loss_weight=commitment_weight, diversity_gamma=1.0, frac_per_sample_entropy=1.0,
            spherical=False, experimental_softplus_entropy_loss=False, orthogonal_rotation=False,
        )
        self.codebook_sizes = [codebook_size] * num_quantizers


QUANTIZERS = {"vq": ResidualVQQuantizer, "fsq": ResidualFSQQuantizer, "lfq": ResidualLFQQuantizer}


def make_quantizer(name: str, *, dim: int, num_quantizers: int, dropout: bool, codebook_size: int,
                   fsq_levels: Sequence[int], ema_decay: float, kmeans_init: bool, kmeans_iters: int,
                   dead_code_threshold: float, commitment_weight: float, lfq_entropy_weight: float) -> nn.Module:
    """The quantizer ``name`` (:data:`QUANTIZERS`) from a tokenizer's options; each takes the ones it uses."""
    common = {"dim": dim, "num_quantizers": num_quantizers, "dropout": dropout}
    if name == "vq":
        return ResidualVQQuantizer(**common, codebook_size=codebook_size, ema_decay=ema_decay, kmeans_init=kmeans_init,
                                   kmeans_iters=kmeans_iters, dead_code_threshold=dead_code_threshold,
                                   commitment_weight=commitment_weight)
    if name == "fsq":
        return ResidualFSQQuantizer(**common, levels=fsq_levels)
    if name == "lfq":
        return ResidualLFQQuantizer(**common, codebook_size=codebook_size, entropy_weight=lfq_entropy_weight,
                                    commitment_weight=commitment_weight)
    raise ValueError(f"quantizer must be one of {sorted(QUANTIZERS)}, got {name!r}")


# ----------------------------------------------------------------------------- the tokenizer


class VQImageTokenizer(Tokenizer):
    """Images ⇄ residual codes on an (h, w) grid; ``decode(encode(x))`` is ``[B, C, H, W]`` in [0, 1].

    ``image_size`` (an int for square images, or (H, W)) and ``channels`` are the shape it encodes;
    ``block_channels`` the widths of diffusers' encoder blocks (reversed in the decoder);
    ``latent_dim`` the size of the vectors quantized. ``quantizer`` picks ``"vq"`` (``codebook_size``,
    ``ema_decay``, ``kmeans_init``, ``kmeans_iters``, ``dead_code_threshold``, ``commitment_weight``),
    ``"fsq"`` (``fsq_levels``; codebook size their product) or ``"lfq"`` (``codebook_size`` a power
    of 2, ``lfq_entropy_weight``, ``commitment_weight``). ``quantizer_dropout``: the fraction of
    training batches that use a random first 1..Q levels only (SoundStream), so prefixes decode well.
    """

    modality = "image"
    dropped_code = -1  # a dropped level (quantizer dropout) contributes nothing when decoding

    def __init__(
        self,
        *,
        image_size: int | Sequence[int] = 32,
        channels: int = 1,
        block_channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_groups: int = 16,
        mid_attention: bool = False,
        latent_dim: int = 32,
        quantizer: str = "vq",
        num_quantizers: int = 2,
        codebook_size: int = 512,
        fsq_levels: Sequence[int] = (8, 8, 8),
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 0.25,
        lfq_entropy_weight: float = 0.1,
        quantizer_dropout: float = 0.0,
    ):
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        factor = 2 ** (len(block_channels) - 1)
        if len(size) != 2 or min(size) < 1 or size[0] % factor or size[1] % factor:
            raise ValueError(f"image_size must be (H, W) divisible by the downsampling factor {factor} "
                             f"({len(block_channels)} blocks), got {image_size}")
        if any(c % norm_groups for c in block_channels):
            raise ValueError(f"every block width must be a multiple of norm_groups={norm_groups}, got {block_channels}")
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {sorted(QUANTIZERS)}, got {quantizer!r}")
        if num_quantizers < 1 or not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"need num_quantizers ≥ 1 and quantizer_dropout in [0, 1], got {num_quantizers}, "
                             f"{quantizer_dropout}")
        self.image_size, self.channels, self.downsample_factor = size, channels, factor
        self.quantizer_dropout = quantizer_dropout
        blocks = len(block_channels)
        self.encoder = Encoder(in_channels=channels, out_channels=latent_dim,
                               down_block_types=("DownEncoderBlock2D",) * blocks,
                               block_out_channels=tuple(block_channels), layers_per_block=layers_per_block,
                               norm_num_groups=norm_groups, act_fn="silu", double_z=False,
                               mid_block_add_attention=mid_attention)
        self.decoder = Decoder(in_channels=latent_dim, out_channels=channels,
                               up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=tuple(block_channels),
                               layers_per_block=layers_per_block, norm_num_groups=norm_groups, act_fn="silu",
                               norm_type="group", mid_block_add_attention=mid_attention)
        self.quantizer = make_quantizer(
            quantizer, dim=latent_dim, num_quantizers=num_quantizers,
            dropout=quantizer_dropout > 0 and num_quantizers > 1, codebook_size=codebook_size, fsq_levels=fsq_levels,
            ema_decay=ema_decay, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
            dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight,
            lfq_entropy_weight=lfq_entropy_weight)
        self._distributed_sync = False

    # -- facts ---------------------------------------------------------------------------------
    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.quantizer.codebook_sizes)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.downsample_factor, self.image_size[1] // self.downsample_factor)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output conv weight: where VQGAN's adaptive GAN weight compares gradients."""
        return self.decoder.conv_out.weight

    # -- pieces --------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        check_image_batch(images, channels=self.channels, image_size=self.image_size)

    def _latent(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] in [0, 1] -> latent [B, D, h, w]."""
        self._check_images(images)
        return self.encoder(images * 2.0 - 1.0)

    def _pixels(self, latent: torch.Tensor) -> torch.Tensor:
        """quantized latent [B, D, h, w] -> images [B, C, H, W], ≈ [0, 1] (not clamped)."""
        return (self.decoder(latent) + 1.0) / 2.0

    def nearest_codes(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, D, h, w] -> codes [B, Q, h · w] (raster order), a pure function of the codebooks."""
        codes = self.quantizer.nearest_codes(rearrange(latent, "b d h w -> b (h w) d"))  # [B, h·w, Q]
        return rearrange(codes, "b n q -> b q n")

    def codebook_vectors(self) -> list[torch.Tensor]:
        """Per codebook, its codewords in the latent space, [V, latent_dim]."""
        return self.quantizer.codebook_vectors()

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q', h · w] with Q' ≤ Q (entries of -1 skipped) -> latent [B, D, h, w]."""
        if codes.shape[1] > self.num_codebooks:
            raise ValueError(f"codes have {codes.shape[1]} codebooks, the model has {self.num_codebooks}")
        h, w = self.grid
        if codes.shape[-1] != h * w:
            raise ValueError(f"codes have {codes.shape[-1]} steps, the {h}x{w} grid needs {h * w}")
        latent = self.quantizer.dequantize(rearrange(codes, "b q n -> b n q"))  # [B, h·w, D]
        return rearrange(latent, "b (h w) d -> b d h w", h=h, w=w)

    # -- training ------------------------------------------------------------------------------
    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q, h · w] -> images [B, C, H, W], differentiable and not clamped: what a decoder-only
        fine-tune trains through (:meth:`decode` is the contract's, for inference)."""
        return self._pixels(self.dequantize(codes))

    def forward(self, images: torch.Tensor) -> ImageTokenizerOutput:
        """Encode, quantize (with dropout on a ``quantizer_dropout`` fraction of training batches),
        decode. In eval mode the quantizer is the pure :meth:`nearest_codes` search."""
        latent = self._latent(images)
        h, w = latent.shape[-2:]
        if self.training:
            dropout = self._draw_dropout(images.device)
            vectors, codes, loss = self.quantizer(rearrange(latent, "b d h w -> b (h w) d"), dropout=dropout)
            quantized = rearrange(vectors, "b (h w) d -> b d h w", h=h, w=w)
            codes = rearrange(codes, "b n q -> b q n")
        else:
            codes = self.nearest_codes(latent)
            quantized = self.dequantize(codes)
            loss = F.mse_loss(latent, quantized)
        return ImageTokenizerOutput(images=self._pixels(quantized), codes=codes, quantizer_loss=loss, latent=latent)

    def _draw_dropout(self, device: torch.device) -> bool:
        if self.quantizer_dropout == 0 or self.num_codebooks == 1:
            return False
        return draw_dropout(self.quantizer_dropout, device=device, synced=self._distributed_sync)

    def enable_distributed_sync(self) -> None:
        """Called by the training module once the process group is up (see ``RVQCodec``)."""
        if hasattr(self.quantizer, "enable_distributed_sync"):
            self._distributed_sync = self.quantizer.enable_distributed_sync()

    # -- the tokenizer contract ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *,
               num_quantizers: int | None = None) -> Tokens:
        """images [B, C, H, W] in [0, 1] -> Tokens(codes [B, Q, h · w], grid (h, w))."""
        if lengths is not None:
            raise ValueError("images have no lengths: every image is image_size")
        codes = self.nearest_codes(self._latent(x))
        return Tokens(codes=codes[:, : self._check_num_quantizers(num_quantizers)], grid=self.grid)

    @torch.no_grad()
    def decode(self, tokens: Tokens, *, num_quantizers: int | None = None) -> torch.Tensor:
        """Tokens (grid (h, w)) -> images [B, C, H, W] clamped to [0, 1]; ``num_quantizers`` (or tokens
        with fewer codebooks) decodes from the first levels only."""
        self.check_tokens(tokens)  # codebooks, code ranges, grid and its number of steps
        codes = tokens.codes[:, : self._check_num_quantizers(num_quantizers)]
        return self._pixels(self.dequantize(codes)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- training losses


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al., 2017; VQGAN's ``NLayerDiscriminator``): strided 4x4 convs, each
    judging an overlapping patch. images [B, C, H, W] in [0, 1] -> logits [B, 1, H', W'].

    ``num_layers`` stride-2 convs (widths ``channels · 2^i``, at most 8 ·``channels``), then one
    stride-1 conv and a 1-channel stride-1 conv; GroupNorm instead of BatchNorm (batch independent).
    """

    def __init__(self, *, in_channels: int = 1, channels: int = 32, num_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2 ** i, 8)
            layers += [nn.Conv2d(width, out, 4, stride=2 if i < num_layers else 1, padding=1, bias=False),
                       nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0)


class PerceptualLoss(nn.Module):
    """LPIPS-style distance (Zhang et al., 2018, eq. 1 with unit channel weights) in the feature maps
    of a frozen network: each map ``[B, C_l, H_l, W_l]`` is unit-normalised over its channels at every
    position, and the squared differences are summed over channels, averaged over positions, then
    averaged over the maps. x, y: [B, C, H, W] in [0, 1] -> [B] distances (``reduce`` gives their mean).

    ``network`` has ``feature_maps(images) -> list[Tensor]``; it stays in eval mode and takes no
    gradient (its parameters are never trained here).
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        if not hasattr(network, "feature_maps"):
            raise ValueError(f"the perceptual network must have feature_maps(images), {type(network).__name__} has not")
        self.network = network.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, folder: str) -> PerceptualLoss:
        from mmtok.hub import load_pretrained

        return cls(load_pretrained(folder))

    def train(self, mode: bool = True) -> PerceptualLoss:
        return self  # the network's dropout and norm statistics stay as they were trained

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, reduce: bool = True) -> torch.Tensor:
        with torch.no_grad():
            targets = self.network.feature_maps(y)
        distance = 0
        features = self.network.feature_maps(x)
        if len(features) != len(targets) or not features:
            raise ValueError(f"feature_maps gave {len(features)} and {len(targets)} maps for two inputs")
        for a, b in zip(features, targets):
            a, b = F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10)
            distance = distance + (a - b).pow(2).sum(1).flatten(1).mean(1)  # [B]
        distance = distance / len(features)
        return distance.mean() if reduce else distance


@torch.no_grad()
def evaluate_image_tokenizer(tokenizer: Tokenizer, data: str, *, split: str = "test", max_items: int | None = None,
                             judge: nn.Module | None = None, batch_size: int = 64) -> list[dict]:
    """L1, MSE and PSNR of the reconstructions of ``split`` from the first n codebooks, one row per n
    (1, 2, 4, ... and all), with the usage and perplexity of each codebook over the split's codes.

    With ``judge`` (a classifier, logits [N, K], e.g. the digit classifier) each row also has
    ``judge_accuracy`` of the reconstructions against the corpus labels, next to
    ``judge_accuracy_real`` on the originals.
    """
    from mmtok.data.images import ImageDataModule
    from mmtok.metrics.image import classifier_accuracy, codebook_usage, psnr

    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    tokenizer = tokenizer.eval()
    module = ImageDataModule(path=str(data), channels=tokenizer.channels, image_size=tokenizer.image_size,
                             valid_batch_size=batch_size)
    module.setup("test")
    loader = module.test_dataloader() if split == "test" else module.val_dataloader()
    batches = [(batch["image"], batch.get("labels")) for batch in loader]
    images = torch.cat([b[0] for b in batches])[:max_items]  # [N, C, H, W]
    if len(images) == 0:
        raise ValueError(f"{data}: the {split} split holds no images")
    codes = torch.cat([tokenizer.encode(images[s:s + batch_size]).codes
                       for s in range(0, len(images), batch_size)])  # [N, Q, h·w]
    labels = torch.cat([b[1] for b in batches])[:max_items] if judge is not None else None
    real_accuracy = classifier_accuracy(images, labels, judge) if judge is not None else None
    h, w = tokenizer.grid
    rows = []
    for n in sorted({n for n in (1, 2, 4, 8, 16) if n < tokenizer.num_codebooks} | {tokenizer.num_codebooks}):
        reconstruction = torch.cat([tokenizer.decode(Tokens(codes=codes[s:s + batch_size, :n], grid=(h, w)))
                                    for s in range(0, len(images), batch_size)])
        usage = codebook_usage(codes[:, n - 1], tokenizer.codebook_sizes[n - 1])
        row = {"codebooks": n, "tokens": h * w * n,
               "bits_per_image": round(h * w * sum(math.log2(v) for v in tokenizer.codebook_sizes[:n]), 1),
               "l1": float((reconstruction - images).abs().mean()),
               "mse": float((reconstruction - images).pow(2).mean()),
               "psnr": float(psnr(images, reconstruction).mean()), **usage, "images": len(images)}
        if judge is not None:
            row.update(judge_accuracy=classifier_accuracy(reconstruction, labels, judge),
                       judge_accuracy_real=real_accuracy)
        rows.append(row)
    return rows
