"""Media files as tokenizers read and write them, one reader and one writer per modality.

``read_media(path, tokenizer)`` gives a batch of one in the tokenizer's input format and
``write_media(path, media, tokenizer)`` writes one decoded item; ``MEDIA_SUFFIXES`` and
``MEDIA_KEYS`` name each modality's files and manifest key. What `mmtok encode`, `decode` and
`tokenize` use, so that they never ask which modality they carry.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmtok.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES

MEDIA_SUFFIXES = {"audio": AUDIO_SUFFIXES, "image": IMAGE_SUFFIXES, "video": VIDEO_SUFFIXES}
MEDIA_KEYS = {"audio": "audio", "image": "image", "video": "video"}  # the manifest key of each modality's files
WRITE_SUFFIXES = {"audio": ".wav", "image": ".png", "video": ".mp4"}


def _modality(tokenizer) -> str:
    if tokenizer.modality not in MEDIA_SUFFIXES:
        raise ValueError(f"no reader or writer for {tokenizer.modality!r} media")
    return tokenizer.modality


def read_media(path: str | Path, tokenizer, *, crop_frames: bool = False) -> torch.Tensor:
    """One media file as the tokenizer reads it, a batch of one: audio [1, 1, N] at its sample rate,
    an image [1, C, H, W] or a video [1, C, F, H, W] in [0, 1] with its channels (a frame size other
    than its own, or a frame count it cannot encode, is an error naming the file; with ``crop_frames``
    a video is cut to the most frames it can encode instead, as a token cache of clips of any length
    needs)."""
    modality = _modality(tokenizer)
    if modality == "audio":
        from mmtok.media import load_audio

        return load_audio(path, sample_rate=tokenizer.sample_rate)[None]
    from mmtok.media import MediaFileError, read_image, read_video

    pixels = read_image(path, channels=tokenizer.channels) if modality == "image" else read_video(
        path, channels=tokenizer.channels)[0]
    if tuple(pixels.shape[-2:]) != tuple(tokenizer.image_size):
        raise MediaFileError(f"{path}: {modality} is {pixels.shape[-2]}x{pixels.shape[-1]} (H x W), the tokenizer "
                             f"reads {tokenizer.image_size[0]}x{tokenizer.image_size[1]}")
    if modality == "video" and crop_frames:
        pixels = pixels[:, : int(tokenizer.usable_frames(torch.tensor(pixels.shape[1])))]
    if modality == "video":
        tokenizer.check_frame_count(pixels.shape[1], name=str(path))
    return pixels[None]


def open_media(path: str | Path, tokenizer):
    """What a chunked coder reads for a tokenizer on a time axis: an audio file as an
    :class:`~mmtok.data.audio.AudioReader` (read block by block); other media as :func:`read_media`."""
    if _modality(tokenizer) == "audio":
        from mmtok.media import AudioReader

        return AudioReader(path, sample_rate=tokenizer.sample_rate)
    return read_media(path, tokenizer)


def write_media(path: str | Path, media: torch.Tensor, tokenizer) -> Path:
    """Write one decoded item: audio [1, N] as a wav, an image [C, H, W] as a png, a video
    [C, F, H, W] by its suffix (mp4, gif or npz) at the tokenizer's ``fps``."""
    from mmtok.media import write_png, write_video, write_wav

    modality = _modality(tokenizer)
    if modality == "audio":
        return write_wav(path, media, sample_rate=tokenizer.sample_rate)
    if modality == "video":
        return write_video(path, media.clamp(0, 1), fps=tokenizer.fps)
    return write_png(path, media.clamp(0, 1))
