"""Audio codec evaluation metrics, computed per item on the valid (unpadded) samples.

All distances take ``reference, estimate: FloatTensor [B, 1, N]`` and an optional
``lengths: LongTensor [B]`` (valid samples per item; samples past it are ignored) and return
FloatTensor [B].

- :func:`mel_distance`: mean L1 between log10 mel spectrograms (clamped at 1e-5) averaged over
  window lengths 512/1024/2048 — the "mel distance" reported by DAC and EnCodec evaluations.
- :func:`stft_distance`: multi-resolution STFT distance of Parallel WaveGAN (Yamamoto et al. 2020,
  eq. 3-5): spectral convergence + log STFT magnitude L1, averaged over resolutions.
- :func:`si_sdr`: scale-invariant SDR in dB (Le Roux et al. 2019, "SDR - half-baked or well done?").
- :func:`bitrate`: bits per second of an RVQ token stream.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from mmtok.losses import mel_transform

STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))


def _check_audio(reference: Tensor, estimate: Tensor, lengths: Tensor | None) -> Tensor:
    """Validate shapes and return lengths as a LongTensor [B] (full length when None)."""
    if reference.dim() != 3 or reference.shape[1] != 1 or reference.shape != estimate.shape:
        raise ValueError(
            f"reference and estimate must both be [B, 1, N], got {tuple(reference.shape)} "
            f"and {tuple(estimate.shape)}"
        )
    batch, _, n = reference.shape
    if lengths is None:
        return torch.full((batch,), n, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
    if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > n).any()):
        raise ValueError(f"lengths must be [B={batch}] with values in [1, {n}], got {lengths.tolist()}")
    return lengths


def _per_item(
    fn: Callable[[Tensor, Tensor], Tensor], reference: Tensor, estimate: Tensor, lengths: Tensor | None
) -> Tensor:
    """Apply ``fn(ref [1, 1, L], est [1, 1, L]) -> scalar`` to each item's valid slice -> [B]."""
    lengths = _check_audio(reference, estimate, lengths)
    values = [fn(reference[i:i + 1, :, :n], estimate[i:i + 1, :, :n]) for i, n in enumerate(lengths.tolist())]
    return torch.stack(values)


def _check_min_length(length: int, window: int, name: str) -> None:
    if length <= window // 2:
        raise ValueError(
            f"{name} needs more than {window // 2} valid samples per item for its {window}-sample "
            f"window (reflect padding), got {length}"
        )


def mel_distance(
    reference: Tensor,
    estimate: Tensor,
    *,
    sample_rate: int,
    lengths: Tensor | None = None,
    window_lengths: Sequence[int] = (512, 1024, 2048),
    n_mels: Sequence[int] = (40, 80, 160),
    clamp_eps: float = 1e-5,
) -> Tensor:
    """Multi-scale log-mel L1 distance, the common "mel distance" of DAC/EnCodec evaluations.

    For each window ``w`` (hop ``w // 4``, Hann, magnitude Slaney mel with ``n_mels`` bins: 80 at
    1024 and scaled with the window) the mean of ``|log10(max(M(est), eps)) - log10(max(M(ref), eps))|``
    over mel bins and frames; averaged over the scales.

    reference, estimate: FloatTensor [B, 1, N]; lengths: LongTensor [B] | None -> FloatTensor [B].
    """
    if len(window_lengths) != len(n_mels) or not window_lengths:
        raise ValueError(f"window_lengths {list(window_lengths)} and n_mels {list(n_mels)} must match")
    transforms = [
        mel_transform(sample_rate=sample_rate, window_length=w, n_mels=m).to(reference.device)
        for w, m in zip(window_lengths, n_mels)
    ]

    def item(ref: Tensor, est: Tensor) -> Tensor:
        _check_min_length(ref.shape[-1], max(window_lengths), "mel_distance")
        dists = [
            (t(est).clamp(min=clamp_eps).log10() - t(ref).clamp(min=clamp_eps).log10()).abs().mean()
            for t in transforms
        ]
        return torch.stack(dists).mean()

    return _per_item(item, reference, estimate, lengths)


def _stft_magnitude(x: Tensor, n_fft: int, hop: int, win: int) -> Tensor:
    """x: [1, 1, L] -> |STFT| [freq, frames], floored at sqrt(1e-7) as in Parallel WaveGAN."""
    window = torch.hann_window(win, device=x.device, dtype=x.dtype)
    spec = torch.stft(
        x.reshape(1, -1), n_fft, hop_length=hop, win_length=win, window=window, return_complex=True
    )  # [1, freq, frames]
    return (spec.real.square() + spec.imag.square()).clamp(min=1e-7).sqrt()[0]


def stft_distance(
    reference: Tensor,
    estimate: Tensor,
    *,
    lengths: Tensor | None = None,
    resolutions: Sequence[tuple[int, int, int]] = STFT_RESOLUTIONS,
) -> Tensor:
    """Multi-resolution STFT distance (Parallel WaveGAN, eq. 3-5), averaged over resolutions:
    ``L_sc = || |S_ref| - |S_est| ||_F / || |S_ref| ||_F`` plus
    ``L_mag = mean | log|S_ref| - log|S_est| |`` for each (n_fft, hop, win) in ``resolutions``.

    reference, estimate: FloatTensor [B, 1, N]; lengths: LongTensor [B] | None -> FloatTensor [B].
    """
    if not resolutions:
        raise ValueError("resolutions must hold at least one (n_fft, hop, win) triple")

    def item(ref: Tensor, est: Tensor) -> Tensor:
        _check_min_length(ref.shape[-1], max(r[0] for r in resolutions), "stft_distance")
        dists = []
        for n_fft, hop, win in resolutions:
            mag_ref, mag_est = _stft_magnitude(ref, n_fft, hop, win), _stft_magnitude(est, n_fft, hop, win)
            sc = torch.linalg.norm(mag_ref - mag_est) / torch.linalg.norm(mag_ref)
            log_mag = (mag_ref.log() - mag_est.log()).abs().mean()
            dists.append(sc + log_mag)
        return torch.stack(dists).mean()

    return _per_item(item, reference, estimate, lengths)


def si_sdr(
    reference: Tensor, estimate: Tensor, *, lengths: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), on zero-mean signals:
    ``alpha = <est, ref> / ||ref||^2``, ``SI-SDR = 10 log10(||alpha ref||^2 / ||alpha ref - est||^2)``
    (``eps`` added to both energies). Computed in float64.

    reference, estimate: FloatTensor [B, 1, N]; lengths: LongTensor [B] | None -> FloatTensor [B].
    """

    def item(ref: Tensor, est: Tensor) -> Tensor:
        ref, est = ref.double().flatten(), est.double().flatten()
        ref, est = ref - ref.mean(), est - est.mean()
        alpha = (est @ ref) / (ref @ ref + eps)
        target = alpha * ref
        noise = est - target
        return 10 * torch.log10((target @ target + eps) / (noise @ noise + eps))

    return _per_item(item, reference, estimate, lengths).to(reference.dtype)


def bitrate(*, num_quantizers: int, codebook_size: int | Sequence[int], frame_rate: float) -> float:
    """Bits per second of ``num_quantizers`` codebooks at ``frame_rate`` frames/s:
    ``frame_rate * sum_q log2(codebook_size_q)``, e.g. 8 x log2(1024) x 50 = 4000.
    """
    sizes = [codebook_size] * num_quantizers if isinstance(codebook_size, int) else list(codebook_size)
    if num_quantizers < 1 or len(sizes) != num_quantizers:
        raise ValueError(
            f"need num_quantizers >= 1 and one codebook size per quantizer, got {num_quantizers} and {sizes}"
        )
    if any(s < 2 for s in sizes) or frame_rate <= 0:
        raise ValueError(f"codebook sizes must be >= 2 and frame_rate > 0, got {sizes} and {frame_rate}")
    return float(frame_rate * sum(math.log2(s) for s in sizes))


def codec_metrics(
    reference: Tensor, estimate: Tensor, *, sample_rate: int, lengths: Tensor | None = None
) -> dict[str, float]:
    """Batch means of ``mel_distance``, ``stft_distance`` and ``si_sdr`` (keys of those names).

    reference, estimate: FloatTensor [B, 1, N]; lengths: LongTensor [B] | None.
    """
    with torch.no_grad():
        reference, estimate = reference.float(), estimate.float()
        mel = mel_distance(reference, estimate, sample_rate=sample_rate, lengths=lengths)
        stft = stft_distance(reference, estimate, lengths=lengths)
        sdr = si_sdr(reference, estimate, lengths=lengths)
    return {"mel_distance": mel.mean().item(), "stft_distance": stft.mean().item(),
            "si_sdr": sdr.mean().item()}
