"""Evaluation metrics (audio codec distances, SI-SDR, bitrate, speaker similarity, error rates, image metrics)."""

from mmtok.metrics.audio import (bitrate, codec_metrics, equal_error_rate, mel_distance, si_sdr, speaker_similarity,
                                 stft_distance)
from mmtok.metrics.image import classifier_accuracy, codebook_usage, frechet_distance, psnr, ssim
from mmtok.metrics.text import edit_distance, error_rate, error_rate_difference_interval, error_rate_interval

__all__ = ["bitrate", "classifier_accuracy", "codebook_usage", "codec_metrics", "edit_distance", "equal_error_rate",
           "error_rate", "error_rate_difference_interval", "error_rate_interval", "frechet_distance", "mel_distance",
           "psnr", "si_sdr", "speaker_similarity", "ssim", "stft_distance"]
