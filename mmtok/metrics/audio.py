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

Speaker similarity (a judge's embedding, :class:`mmtok.judges.SpeakerEncoder`):

- :func:`speaker_similarity`: the cosine of the speaker embeddings of two lists of waveforms, pair by
  pair, e.g. prompted speech and its voice prompt; report it next to the cosine of two real
  utterances of the same speaker (``bench/speaker_encoder.py``), its floor.
- :func:`equal_error_rate`: the EER of a same/different score (speaker verification).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torchaudio
from torch import Tensor

from mmtok.errors import DataError
from mmtok.losses import mel_transform

if TYPE_CHECKING:
    from mmtok.judges.speakers import SpeakerEncoder

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


def equal_error_rate(scores: Tensor, same: Tensor) -> float:
    """Equal error rate of accepting a pair as "same" when its score is at least a threshold:
    the rate at which false acceptances (of different pairs) equal false rejections (of same pairs),
    linearly interpolated between the two thresholds where they cross (0 when some threshold
    separates the two sets). scores: FloatTensor [P]; same: BoolTensor [P] with both values present."""
    scores, same = scores.detach().double().reshape(-1).cpu(), same.detach().bool().reshape(-1).cpu()
    if scores.shape != same.shape or bool(same.all()) or not bool(same.any()):
        raise DataError(f"equal_error_rate: need one score per pair and both same and different pairs, got "
                        f"{scores.numel()} scores for {same.numel()} labels ({int(same.sum())} same)")
    order = torch.argsort(scores, descending=True)
    ranked, labels = scores[order], same[order]
    last = torch.cat([ranked[1:] != ranked[:-1], torch.tensor([True])])  # the last of each run of equal scores
    accepted_same = torch.cat([torch.zeros(1, dtype=torch.double), labels.double().cumsum(0)[last]])
    accepted_different = torch.cat([torch.zeros(1, dtype=torch.double), (~labels).double().cumsum(0)[last]])
    false_accept = accepted_different / (~same).sum()  # rises from 0 as the threshold falls
    false_reject = 1 - accepted_same / same.sum()  # falls to 0
    k = int(torch.nonzero(false_accept >= false_reject)[0])  # k >= 1: point 0 is (0, 1)
    before = float(false_reject[k - 1] - false_accept[k - 1])
    after = float(false_accept[k] - false_reject[k])
    w = before / (before + after)
    return float(false_accept[k - 1] + w * (false_accept[k] - false_accept[k - 1]))


def _mono(audio: Tensor, name: str) -> Tensor:
    """A waveform [N] or [1, N] -> [1, N]."""
    if audio.dim() == 1:
        audio = audio[None]
    if audio.dim() != 2 or audio.shape[0] != 1 or audio.shape[1] < 1:
        raise DataError(f"speaker_similarity: {name} must be a mono waveform [N] or [1, N], got {tuple(audio.shape)}")
    return audio


@torch.no_grad()
def speaker_embeddings_of(encoder: "SpeakerEncoder", audios: Sequence[Tensor], *, sample_rate: int,
                          batch_size: int = 16) -> Tensor:
    """Unit-norm speaker embeddings [N, D] of waveforms ([N_i] or [1, N_i]) at ``sample_rate``,
    resampled to the encoder's rate, in batches of ``batch_size`` (the encoder in eval mode)."""
    from mmtok.media import pad_audio

    if sample_rate <= 0 or batch_size < 1:
        raise DataError(f"speaker_similarity: need sample_rate > 0 and batch_size >= 1, got {sample_rate}, "
                        f"{batch_size}")
    audios = [_mono(audio, f"audio {i}") for i, audio in enumerate(audios)]
    if sample_rate != encoder.sample_rate:
        audios = [torchaudio.functional.resample(audio.float(), sample_rate, encoder.sample_rate) for audio in audios]
    device = encoder.centres.device
    training = encoder.training
    encoder.eval()
    try:
        out = []
        for start in range(0, len(audios), batch_size):
            batch, lengths = pad_audio(audios[start:start + batch_size])  # [b, 1, N], [b]
            out.append(encoder.embed(batch.to(device), lengths.to(device)).float().cpu())
    finally:
        encoder.train(training)
    return torch.cat(out) if out else torch.zeros(0, encoder.embedding_dim)


def speaker_similarity(encoder: "SpeakerEncoder", audio_a: Sequence[Tensor], audio_b: Sequence[Tensor],
                       sample_rate: int, *, batch_size: int = 16) -> Tensor:
    """Cosine of the speaker embeddings of ``audio_a[i]`` and ``audio_b[i]``, FloatTensor [N] in [-1, 1]
    (e.g. generated speech and its voice prompt). Waveforms are ``[N_i]`` or ``[1, N_i]`` at
    ``sample_rate`` (resampled to the encoder's rate), embedded whole, in batches."""
    if len(audio_a) != len(audio_b) or not len(audio_a):
        raise DataError(f"speaker_similarity: need two equally long, non-empty lists of waveforms, got "
                        f"{len(audio_a)} and {len(audio_b)}")
    a = speaker_embeddings_of(encoder, audio_a, sample_rate=sample_rate, batch_size=batch_size)
    b = speaker_embeddings_of(encoder, audio_b, sample_rate=sample_rate, batch_size=batch_size)
    return (a * b).sum(-1)
