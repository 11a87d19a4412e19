"""Evaluation metrics (audio codec distances, SI-SDR, bitrate, error rates)."""

from mmtok.metrics.audio import bitrate, codec_metrics, mel_distance, si_sdr, stft_distance
from mmtok.metrics.text import edit_distance, error_rate

__all__ = ["bitrate", "codec_metrics", "edit_distance", "error_rate", "mel_distance", "si_sdr", "stft_distance"]
