"""Phenaki's C-ViViT: a video tokenizer, causal in time, for any number of frames.

Reference: Villegas et al. 2022, "Phenaki: Variable Length Video Generation From Open Domain Textual
Descriptions", Sec. 2.1 and Fig. 2. The first frame is cut into p x p patches and embedded on its
own; every later group of ``pt`` frames is cut into pt x p x p tubelets and embedded with another
linear map, so a clip of F = 1 + k · pt frames becomes t = 1 + k groups of an (h, w) = (H / p, W / p)
grid. A spatial transformer attends within each group (bidirectionally, 2-D rotary positions), then a
**causal** temporal transformer attends along t at each grid cell (a group sees itself and the past
only, 1-D rotary positions); the vectors are quantized (vector-quantize-pytorch VQ, FSQ or LFQ, as in
:mod:`mmtok.codecs.vq_image`), and the decoder mirrors the encoder (causal temporal transformer,
spatial transformer, linear maps back to the first frame's patches and to tubelets).

Causality is what makes the tokens usable for variable-length generation: the codes of the first j
groups depend on the first 1 + (j - 1) · pt frames only, so encoding a prefix of a clip gives the
prefix of its codes, decoding a prefix of the codes gives the prefix of its frames, any length
1 + k · pt encodes with the same model (rotary positions carry no trained length), and a clip can be
continued by priming a generator with the codes of its last frames.

Shapes: ``video: FloatTensor [B, C, F, H, W]`` in [0, 1] with per-item ``lengths`` (frames, each
1 + k · pt; the batch zero-padded along F); ``codes: LongTensor [B, Q, t · h · w]`` in raster order
over (t, h, w), ``Tokens.grid == (t, h, w)`` of the longest item, ``Tokens.lengths`` each item's
t_i · h · w and ``Tokens.media_lengths`` its frames. Padding sits at the end of the time axis and
attention is causal there, so an item's codes do not depend on what it is batched with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmtok.codecs.base import Tokenizer
from mmtok.codecs.quantizers import draw_dropout
from mmtok.codecs.vq_image import ImageTokenizerOutput, make_quantizer
from mmtok.errors import DataError
from mmtok.nn import Transformer, grid_window_mask
from mmtok.tokens import Tokens


def valid_frame_counts(count: int, temporal_patch_size: int) -> tuple[int, ...]:
    """The frame counts of the form 1 + k · pt nearest to ``count`` (one if it is valid itself)."""
    if count >= 1 and (count - 1) % temporal_patch_size == 0:
        return (count,)
    below = 1 + max(0, (count - 1) // temporal_patch_size) * temporal_patch_size
    return (below, below + temporal_patch_size) if count > 1 else (1,)


class CViViTTokenizer(Tokenizer):
    """Video clips ⇄ codes on a (t, h, w) grid with causal time; ``decode(encode(x, lengths))`` is
    ``[B, C, F, H, W]`` with each item's frames beyond its length zero.

    ``frame_size`` (an int or (H, W)) and ``channels`` are the frames it reads; ``patch_size`` p and
    ``temporal_patch_size`` pt the tubelet; ``dim``, ``num_heads`` the transformers' width;
    ``spatial_layers`` / ``temporal_layers`` the depth of each transformer in the encoder and the
    decoder alike. ``latent_dim`` is the size of the vectors quantized; ``quantizer`` and its options
    are those of :class:`~mmtok.codecs.vq_image.VQImageTokenizer`. ``fps`` is the frame rate written
    to decoded files.

    ``encoder_window`` (cells; None: the whole frame, as in Phenaki) limits the encoder's spatial
    attention to the cells within that distance on both axes, 0 to each cell alone: a code then
    describes its own tubelet and that cell's past rather than the whole frame. With whole-frame
    attention a cell's code also carries where it sits relative to the content, so on moving digits
    black cells took about 750 different codes (docs/benchmarks.md, issue 17), tokens a generator cannot
    predict. The decoder always attends over the whole frame.
    """

    modality = "video"
    dropped_code = -1

    def __init__(
        self,
        *,
        frame_size: int | Sequence[int] = 48,
        channels: int = 1,
        patch_size: int = 8,
        temporal_patch_size: int = 4,
        dim: int = 128,
        num_heads: int = 4,
        spatial_layers: int = 2,
        temporal_layers: int = 2,
        latent_dim: int = 32,
        quantizer: str = "vq",
        num_quantizers: int = 1,
        codebook_size: int = 1024,
        fsq_levels: Sequence[int] = (8, 5, 5, 5),
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 0.25,
        lfq_entropy_weight: float = 0.1,
        quantizer_dropout: float = 0.0,
        encoder_window: int | None = None,
        fps: float = 10.0,
    ):
        super().__init__()
        size = (frame_size, frame_size) if isinstance(frame_size, int) else tuple(int(s) for s in frame_size)
        if len(size) != 2 or min(size) < 1 or size[0] % patch_size or size[1] % patch_size:
            raise ValueError(f"frame_size must be (H, W) divisible by patch_size {patch_size}, got {frame_size}")
        if temporal_patch_size < 1 or channels < 1 or fps <= 0:
            raise ValueError(f"need temporal_patch_size ≥ 1, channels ≥ 1 and fps > 0, got {temporal_patch_size}, "
                             f"{channels}, {fps}")
        self.frame_size, self.channels, self.fps = size, channels, float(fps)
        self.patch_size, self.temporal_patch_size = patch_size, temporal_patch_size
        self.quantizer_dropout = quantizer_dropout
        pixels = channels * patch_size * patch_size
        self.first_embed = nn.Linear(pixels, dim)
        self.tubelet_embed = nn.Linear(pixels * temporal_patch_size, dim)
        self.encoder_spatial = Transformer(dim=dim, num_layers=spatial_layers, num_heads=num_heads, position_axes=2)
        self.encoder_temporal = Transformer(dim=dim, num_layers=temporal_layers, num_heads=num_heads)
        self.to_latent = nn.Linear(dim, latent_dim)
        self.from_latent = nn.Linear(latent_dim, dim)
        self.decoder_temporal = Transformer(dim=dim, num_layers=temporal_layers, num_heads=num_heads)
        self.decoder_spatial = Transformer(dim=dim, num_layers=spatial_layers, num_heads=num_heads, position_axes=2)
        self.first_out = nn.Linear(dim, pixels)
        self.tubelet_out = nn.Linear(dim, pixels * temporal_patch_size)
        self.quantizer = make_quantizer(
            quantizer, dim=latent_dim, num_quantizers=num_quantizers,
            dropout=quantizer_dropout > 0 and num_quantizers > 1, codebook_size=codebook_size, fsq_levels=fsq_levels,
            ema_decay=ema_decay, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
            dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight,
            lfq_entropy_weight=lfq_entropy_weight)
        h, w = self.spatial_grid
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        self.register_buffer("_cell_positions", torch.stack([rows, cols], -1).flatten(0, 1), persistent=False)
        self.encoder_window = encoder_window
        self.register_buffer("_encoder_window_mask", None if encoder_window is None
                             else grid_window_mask(self._cell_positions, encoder_window), persistent=False)
        self._distributed_sync = False

    # -- facts ---------------------------------------------------------------------------------
    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.quantizer.codebook_sizes)

    @property
    def spatial_grid(self) -> tuple[int, int]:
        """(h, w): the grid of one frame group."""
        return (self.frame_size[0] // self.patch_size, self.frame_size[1] // self.patch_size)

    @property
    def grid(self) -> tuple[None, int, int]:
        """(None, h, w): frame groups of h · w cells along an open time axis."""
        return (None, *self.spatial_grid)

    @property
    def image_size(self) -> tuple[int, int]:
        """The frame size (H, W): what per-frame losses and writers read."""
        return self.frame_size

    @property
    def last_layer(self) -> torch.Tensor:
        """The later frames' output map: where the adaptive GAN weight compares gradients."""
        return self.tubelet_out.weight

    def groups(self, frames: int | torch.Tensor) -> int | torch.Tensor:
        """Frame groups of a clip of ``frames`` frames (1 + k · pt -> 1 + k)."""
        return (frames - 1) // self.temporal_patch_size + 1

    def frames(self, groups: int | torch.Tensor) -> int | torch.Tensor:
        """Frames of ``groups`` frame groups: 1 + (groups - 1) · pt."""
        return 1 + (groups - 1) * self.temporal_patch_size

    def usable_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Each length rounded down to the nearest 1 + k · pt (what training reconstructs of a clip
        cropped to any length)."""
        return self.frames(self.groups(lengths.clamp(min=1)))

    # -- checks --------------------------------------------------------------------------------
    def check_frame_count(self, count: int, *, name: str = "video") -> None:
        """Raise DataError naming ``count`` and the nearest valid counts unless it is 1 + k · pt."""
        nearest = valid_frame_counts(int(count), self.temporal_patch_size)
        if nearest != (int(count),):
            options = " or ".join(str(n) for n in nearest)
            raise DataError(f"{name}: {int(count)} frames; this C-ViViT reads 1 + k·{self.temporal_patch_size} "
                            f"frames (1, {1 + self.temporal_patch_size}, {1 + 2 * self.temporal_patch_size}, ...): "
                            f"nearest {options}")

    def _check_video(self, video: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        expected = (self.channels, *self.frame_size)
        if video.dim() != 5 or (video.shape[1], *video.shape[3:]) != expected:
            raise ValueError(f"video must be [B, {expected[0]}, F, {expected[1]}, {expected[2]}] (B, C, F, H, W), "
                             f"got shape {tuple(video.shape)}")
        if lengths is None:
            lengths = torch.full((video.shape[0],), video.shape[2], dtype=torch.long, device=video.device)
        if lengths.shape != (video.shape[0],) or int(lengths.max()) > video.shape[2] or int(lengths.min()) < 1:
            raise ValueError(f"lengths must be [B] = {video.shape[0]} frame counts in 1..{video.shape[2]}, "
                             f"got {lengths.tolist()}")
        for count in lengths.unique().tolist():
            self.check_frame_count(count)
        return lengths.to(video.device)

    def check_tokens(self, tokens: Tokens, *, source: str = "tokens", allow_empty: bool = False) -> None:
        """The base checks (a grid (t, h, w) of this model's (h, w), whole frame groups of steps) and
        each item's length in whole frame groups."""
        super().check_tokens(tokens, source=source, allow_empty=allow_empty)
        cells = self.spatial_grid[0] * self.spatial_grid[1]
        if tokens.lengths is not None and bool((tokens.lengths % cells).any()):
            raise DataError(f"{source}: lengths {tokens.lengths.tolist()} are not whole frame groups of {cells} steps")

    # -- pieces --------------------------------------------------------------------------------
    def _pad_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Zero frames at the end up to the next 1 + k · pt (padding never reaches earlier frames)."""
        target = valid_frame_counts(video.shape[2], self.temporal_patch_size)[-1]
        return F.pad(video, (0, 0, 0, 0, 0, target - video.shape[2]))

    def _features(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, C, F, H, W] in [0, 1] with F = 1 + k · pt -> latent [B, t, h · w, latent_dim]."""
        p, pt = self.patch_size, self.temporal_patch_size
        video = video * 2.0 - 1.0
        first = rearrange(video[:, :, :1], "b c 1 (h p) (w q) -> b 1 (h w) (c p q)", p=p, q=p)
        rest = rearrange(video[:, :, 1:], "b c (t r) (h p) (w q) -> b t (h w) (c r p q)", r=pt, p=p, q=p)
        x = torch.cat([self.first_embed(first), self.tubelet_embed(rest)], 1)  # [B, t, h·w, D]
        x = self._spatial(self.encoder_spatial, x, window=self._encoder_window_mask)
        x = self._temporal(self.encoder_temporal, x)
        return self.to_latent(x)

    def _pixels(self, latent: torch.Tensor) -> torch.Tensor:
        """quantized latent [B, t, h · w, latent_dim] -> video [B, C, 1 + (t - 1) · pt, H, W], ≈ [0, 1]."""
        (h, w), p, pt = self.spatial_grid, self.patch_size, self.temporal_patch_size
        x = self._temporal(self.decoder_temporal, self.from_latent(latent))
        x = self._spatial(self.decoder_spatial, x)
        first = rearrange(self.first_out(x[:, :1]), "b 1 (h w) (c p q) -> b c 1 (h p) (w q)", h=h, w=w, p=p, q=p)
        rest = rearrange(self.tubelet_out(x[:, 1:]), "b t (h w) (c r p q) -> b c (t r) (h p) (w q)",
                         h=h, w=w, r=pt, p=p, q=p)
        return (torch.cat([first, rest], 2) + 1.0) / 2.0

    def _spatial(self, transformer: Transformer, x: torch.Tensor, *,
                 window: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional attention within each frame group (within ``window``, a [h·w, h·w] mask, if
        given): [B, t, h · w, D] -> the same."""
        batch = x.shape[0]
        out = transformer(rearrange(x, "b t n d -> (b t) n d"), positions=self._cell_positions, window=window)
        return rearrange(out, "(b t) n d -> b t n d", b=batch)

    def _temporal(self, transformer: Transformer, x: torch.Tensor) -> torch.Tensor:
        """Causal attention along the groups at each grid cell: [B, t, h · w, D] -> the same."""
        cells = x.shape[2]
        out = transformer(rearrange(x, "b t n d -> (b n) t d"), causal=True)
        return rearrange(out, "(b n) t d -> b t n d", n=cells)

    def _valid_cells(self, lengths: torch.Tensor, groups: int) -> torch.Tensor:
        """BoolTensor [B, t, h · w]: the grid cells of each item's own frame groups."""
        cells = self.spatial_grid[0] * self.spatial_grid[1]
        valid = torch.arange(groups, device=lengths.device)[None, :] < self.groups(lengths)[:, None]  # [B, t]
        return valid[:, :, None].expand(-1, -1, cells)

    def nearest_codes(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, t, h · w, latent_dim] -> codes [B, Q, t · h · w], a pure function of the codebooks."""
        codes = self.quantizer.nearest_codes(latent.flatten(1, 2))  # [B, t·h·w, Q]
        return rearrange(codes, "b n q -> b q n")

    def codebook_vectors(self) -> list[torch.Tensor]:
        """Per codebook, its codewords in the latent space, [V, latent_dim]."""
        return self.quantizer.codebook_vectors()

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q', t · h · w] (Q' ≤ Q, entries of -1 skipped) -> latent [B, t, h · w, latent_dim]."""
        cells = self.spatial_grid[0] * self.spatial_grid[1]
        if codes.shape[-1] % cells:
            raise ValueError(f"codes have {codes.shape[-1]} steps, not whole frame groups of {cells}")
        latent = self.quantizer.dequantize(rearrange(codes, "b q n -> b n q"))  # [B, t·h·w, D]
        return rearrange(latent, "b (t n) d -> b t n d", n=cells)

    # -- training ------------------------------------------------------------------------------
    def decoder_modules(self) -> list[nn.Module]:
        return [self.from_latent, self.decoder_temporal, self.decoder_spatial, self.first_out, self.tubelet_out]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Q, t · h · w] -> video [B, C, 1 + (t - 1) · pt, H, W], differentiable and not clamped:
        what a decoder-only fine-tune trains through (:meth:`decode` is the contract's, for inference)."""
        return self._pixels(self.dequantize(codes))

    def forward(self, video: torch.Tensor, lengths: torch.Tensor | None = None) -> ImageTokenizerOutput:
        """Encode, quantize, decode for training. Each item's length is first rounded down to
        1 + k · pt (:meth:`usable_frames`); only its own grid cells are quantized (the padding never
        updates a codebook). Returns the reconstruction [B, C, F', H, W], codes [B, Q, t · h · w] (-1 at
        padding), the quantizer loss and the latent, with ``lengths`` the frames reconstructed."""
        if lengths is None:
            lengths = torch.full((video.shape[0],), video.shape[2], dtype=torch.long, device=video.device)
        lengths = self.usable_frames(lengths.to(video.device))
        video = self._pad_frames(video[:, :, : int(lengths.max())])
        latent = self._features(video)  # [B, t, h·w, D]
        valid = self._valid_cells(lengths, latent.shape[1])
        quantized = torch.zeros_like(latent)
        codes = latent.new_full((*latent.shape[:3], self.num_codebooks), -1, dtype=torch.long)
        if self.training:
            dropout = self.quantizer_dropout > 0 and draw_dropout(self.quantizer_dropout, device=video.device,
                                                                  synced=self._distributed_sync)
            vectors, chosen, loss = self.quantizer(latent[valid][None], dropout=dropout)  # [1, N, D], [1, N, Q]
            quantized[valid], codes[valid] = vectors[0], chosen[0]
        else:
            codes[valid] = self.quantizer.nearest_codes(latent[valid][None])[0]
            quantized[valid] = self.quantizer.dequantize(codes[valid][None])[0]
            loss = F.mse_loss(latent[valid], quantized[valid])
        pixels = self._pixels(quantized)
        return ImageTokenizerOutput(images=pixels, codes=rearrange(codes, "b t n q -> b q (t n)"),
                                    quantizer_loss=loss, latent=latent, lengths=lengths)

    def enable_distributed_sync(self) -> None:
        """Called by the training module once the process group is up (see ``RVQCodec``)."""
        if hasattr(self.quantizer, "enable_distributed_sync"):
            self._distributed_sync = self.quantizer.enable_distributed_sync()

    # -- the tokenizer contract ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, *,
               num_quantizers: int | None = None) -> Tokens:
        """video [B, C, F, H, W] in [0, 1] (each length 1 + k · pt) -> Tokens(codes [B, Q, t · h · w],
        grid (t, h, w), lengths t_i · h · w, media_lengths the frames)."""
        lengths = self._check_video(x, lengths)
        x = self._pad_frames(x[:, :, : int(lengths.max())])
        latent = self._features(x)
        codes = self.nearest_codes(latent)[:, : self._check_num_quantizers(num_quantizers)]
        (h, w), groups = self.spatial_grid, latent.shape[1]
        valid = self._valid_cells(lengths, groups).flatten(1)  # [B, t·h·w]
        codes = codes.masked_fill(~valid[:, None], 0)  # padding: any in-range code, never decoded as a frame
        return Tokens(codes=codes, lengths=self.groups(lengths) * h * w, grid=(groups, h, w), media_lengths=lengths)

    @torch.no_grad()
    def decode(self, tokens: Tokens, *, num_quantizers: int | None = None) -> torch.Tensor:
        """Tokens (grid (t, h, w)) -> video [B, C, F, H, W] clamped to [0, 1], F = 1 + (t - 1) · pt;
        each item's frames past its ``media_lengths`` (or its ``lengths`` in whole groups) are zero."""
        self.check_tokens(tokens)
        codes = tokens.codes[:, : self._check_num_quantizers(num_quantizers)]
        video = self._pixels(self.dequantize(codes)).clamp(0.0, 1.0)
        frames = tokens.media_lengths
        if frames is None and tokens.lengths is not None:
            frames = self.frames(tokens.lengths // (tokens.grid[1] * tokens.grid[2]))
        if frames is not None:
            keep = torch.arange(video.shape[2], device=video.device)[None, :] < frames.to(video.device)[:, None]
            video = video * keep[:, None, :, None, None]
        return video


@torch.no_grad()
def evaluate_video_tokenizer(tokenizer: CViViTTokenizer, data: str, *, split: str = "test",
                             frame_counts: Sequence[int] = (1, 5, 9, 17, 33), max_items: int | None = None,
                             judge: nn.Module | None = None, batch_size: int = 16) -> list[dict]:
    """Per-frame PSNR of the reconstructions of ``split``'s clips cut to each of ``frame_counts`` (the
    clips at least that long, their first frames), one row per count, all through the same model.

    With ``judge`` (the digit classifier) and a moving-digits corpus (one digit per clip, its positions
    in the manifest), each row also has ``judge_accuracy``: the digit read in each reconstructed frame's
    crop at the digit's true position, next to ``judge_accuracy_real`` on the real frames' crops (the
    floor of what the reconstruction can reach).
    """
    from mmtok.data.manifest import read_manifest
    from mmtok.data.video import corpus_digit_size, digit_crops
    from mmtok.media import read_video
    from mmtok.metrics.image import classifier_accuracy, codebook_usage, psnr

    entries = [e for e in read_manifest(data, key="video") if e.get("split", split) == split]
    if not entries:
        raise DataError(f"{data}: the {split} split holds no clips")
    tokenizer = tokenizer.eval()
    digit_size = corpus_digit_size(Path(data) if Path(data).is_dir() else Path(data).parent)
    rows = []
    for count in frame_counts:
        tokenizer.check_frame_count(count, name="frame_counts")
        chosen = [e for e in entries if e.get("num_frames", count) >= count][:max_items]
        if not chosen:
            continue
        real, fake, crops_real, crops_fake, labels, codes = [], [], [], [], [], []
        for start in range(0, len(chosen), batch_size):
            batch = chosen[start:start + batch_size]
            video = torch.stack([read_video(e["video"], channels=tokenizer.channels)[0][:, :count] for e in batch])
            tokens = tokenizer.encode(video)
            decoded = tokenizer.decode(tokens)  # [B, C, F, H, W]
            codes.append(tokens.codes.flatten(1))
            for entry, clip, again in zip(batch, video.transpose(1, 2), decoded.transpose(1, 2)):  # [F, C, H, W]
                real.append(clip)
                fake.append(again)
                if judge is not None and digit_size is not None and len(entry.get("digits", ())) == 1:
                    positions = entry["positions"][0][:count]
                    crops_real.append(digit_crops(clip, positions, digit_size=digit_size))
                    crops_fake.append(digit_crops(again, positions, digit_size=digit_size))
                    labels.append(torch.full((count,), int(entry["digits"][0])))
        real, fake = torch.cat(real), torch.cat(fake)
        usage = codebook_usage(torch.cat(codes), tokenizer.codebook_sizes[0])
        row = {"frames": count, "clips": len(chosen), "tokens": int(tokenizer.groups(count)) * math.prod(
            tokenizer.spatial_grid), "psnr": float(psnr(real, fake).mean()),
            "mse": float((real - fake).pow(2).mean()), **usage}
        if crops_real:
            labels = torch.cat(labels)
            row.update(judge_accuracy=classifier_accuracy(torch.cat(crops_fake), labels, judge),
                       judge_accuracy_real=classifier_accuracy(torch.cat(crops_real), labels, judge))
        rows.append(row)
    return rows
