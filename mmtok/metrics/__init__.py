"""Evaluation metrics (audio codec distances, SI-SDR, bitrate)."""

from mmtok.metrics.audio import bitrate, codec_metrics, mel_distance, si_sdr, stft_distance

__all__ = ["bitrate", "codec_metrics", "mel_distance", "si_sdr", "stft_distance"]
