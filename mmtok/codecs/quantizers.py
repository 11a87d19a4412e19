"""Residual vector quantization shared by the tokenizers: vector-quantize-pytorch's ``ResidualVQ``
with every argument explicit, a pure nearest-codeword search, decoding from any first codebooks,
and what DDP needs.

vector-quantize-pytorch's defaults (EMA decay 0.8, rotation trick on, no dead-code expiry) are not
the ones the anchors trained with (EnCodec, X-Codec, VQGAN: EMA 0.99, k-means init, dead-code
threshold 2), so :func:`residual_vq` sets them all. Its forward pass k-means-initialises untrained
codebooks from the first input it is shown, in eval mode too; :func:`nearest_codes` gives the same
codes as a pure function of the codebooks, so codebooks are only ever initialised from training
batches.

Shapes: vectors ``[..., D]``, codes ``[..., Q]`` (-1: a dropped codebook, which adds nothing).
"""

from __future__ import annotations

import torch
from torch import distributed
from vector_quantize_pytorch import ResidualVQ


def residual_vq(*, dim: int, num_quantizers: int, codebook_size: int, ema_decay: float, kmeans_init: bool,
                kmeans_iters: int, dead_code_threshold: float, commitment_weight: float,
                dropout: bool) -> ResidualVQ:
    """EMA codebooks, k-means init, dead-code expiry, no rotation trick or straight-through estimator,
    quantizer dropout (SoundStream) from the first codebook on when ``dropout``."""
    return ResidualVQ(
        dim=dim, codebook_dim=dim, num_quantizers=num_quantizers, codebook_size=codebook_size, decay=ema_decay,
        ema_update=True, learnable_codebook=False, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
        sync_kmeans=True, threshold_ema_dead_code=dead_code_threshold, commitment_weight=commitment_weight,
        use_cosine_sim=False, rotation_trick=False, straight_through=False, stochastic_sample_codes=False,
        quantize_dropout=dropout, quantize_dropout_cutoff_index=0,
    )


def nearest_codes(rvq: ResidualVQ, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vectors [..., D] -> (codes [..., Q], commitment loss Σ_q mean ‖r_q − c_q‖²) by residual
    nearest-codeword search (SoundStream Algorithm 1); changes no buffer."""
    residual = rvq.project_in(vectors.reshape(1, -1, vectors.shape[-1]))  # [1, N, D], as the library packs it
    codes, commitment = [], vectors.new_zeros(())
    for codebook in rvq.codebooks:  # [V, D]
        index = torch.cdist(residual, codebook[None]).argmin(-1)  # [1, N]
        chosen = codebook[index]
        commitment = commitment + (residual - chosen).pow(2).mean()
        residual = residual - chosen
        codes.append(index[0])
    return torch.stack(codes, dim=-1).reshape(*vectors.shape[:-1], len(codes)), commitment


def dequantize(rvq: ResidualVQ, codes: torch.Tensor) -> torch.Tensor:
    """codes [..., Q'] with Q' ≤ Q (entries of -1 skipped) -> vectors [..., D]: Σ of the chosen codewords."""
    vectors = 0
    for q, codebook in enumerate(rvq.codebooks[: codes.shape[-1]]):  # [V, D]
        index = codes[..., q]
        vectors = vectors + codebook[index.clamp(min=0)] * (index >= 0).unsqueeze(-1)
    return rvq.project_out(vectors)


def codewords(rvq: ResidualVQ) -> list[torch.Tensor]:
    """Each codebook's codewords as decoding sees them, [V, D] per codebook (detached)."""
    return [rvq.project_out(codebook).detach() for codebook in rvq.codebooks]


def share_across_ranks(rvq: ResidualVQ) -> bool:
    """Share k-means init and EMA statistics across DDP ranks; True when there are several.

    vector-quantize-pytorch decides this from ``torch.distributed`` *when the module is built*, which
    under Lightning is before the process group exists, so every rank would keep its own codebooks.
    Training modules call this once the process group is up."""
    if not (distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1):
        return False
    from vector_quantize_pytorch.vector_quantize_pytorch import sample_vectors_distributed

    for layer in rvq.layers:
        codebook = layer._codebook
        codebook.use_ddp = True
        codebook.sample_fn = codebook.replace_sample_fn = sample_vectors_distributed
        codebook.kmeans_all_reduce_fn = codebook.all_reduce_fn = distributed.all_reduce
    return True


def draw_dropout(probability: float, *, device: torch.device, synced: bool) -> bool:
    """Whether a batch uses quantizer dropout; with ``synced`` the same answer on every DDP rank, since
    the number of quantizer layers run decides the number of collective calls each rank makes."""
    coin = torch.rand((), device=device)
    if synced:
        distributed.broadcast(coin, src=0)
    return float(coin) < probability
