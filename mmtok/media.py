"""Media files, one reader and one writer per kind: audio (read whole or block by block, any rate to
mono at the rate asked), wav files, mel spectrograms and their plots, metric tables, png images and
grids, mp4 and gif videos, and the image and video readers the data loaders use.

Audio is written with soundfile (torchaudio's own file I/O moved to torchcodec), spectrograms are
computed with ``torchaudio.transforms`` and drawn on matplotlib Agg canvases outside pyplot, so
nothing here needs a display or touches pyplot's global state. Images are written and read with
Pillow, videos with PyAV (mp4: libx264, yuv420p; gif: FFmpeg's gif encoder with one palette per
clip); ``.npz`` videos hold the exact uint8 frames.

Shapes: an image is ``[C, H, W]`` (or ``[H, W]``), a video ``[C, T, H, W]`` (or ``[T, H, W]``),
C = 1 (gray), 3 (RGB) or, for png only, 4 (RGBA). Float pixels are mapped from ``value_range``
(default (0, 1); pass (-1, 1) for model outputs in that range) to 0..255, clipped and rounded;
uint8 tensors/arrays are written as they are. Readers return float32 in [0, 1].
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mmtok.errors import DataError
from mmtok.files import atomic_path, write_text_atomic

AudioLike = torch.Tensor | np.ndarray


class MediaBytes:
    """A media file held in memory (a shard's item): its bytes and the name it had, whose suffix picks
    the decoder and which error messages name. The readers below take it wherever they take a path."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data = name, data
        self.suffix = Path(name).suffix

    def __str__(self) -> str:
        return self.name

    def __len__(self) -> int:
        return len(self.data)

    def open(self):
        import io

        return io.BytesIO(self.data)


def _source(path) -> Path | MediaBytes:
    return path if isinstance(path, MediaBytes) else Path(path)


def _readable(source: Path | MediaBytes):
    """What a decoder opens: the file's name, or a binary stream over bytes in memory."""
    return source.open() if isinstance(source, MediaBytes) else str(source)


def _exists(source: Path | MediaBytes) -> bool:
    return isinstance(source, MediaBytes) or source.is_file()


# ----------------------------------------------------------------------------- audio files

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


class AudioFileError(DataError):
    """An audio file that cannot be used: undecodable, truncated, empty, or holding NaN/Inf."""


def _check_wav_complete(path: Path | MediaBytes) -> None:
    """Raises AudioFileError when a RIFF/WAVE file's data chunk is shorter than its header says.

    libsndfile reads such files silently, returning only the samples present.
    """
    size = len(path) if isinstance(path, MediaBytes) else path.stat().st_size
    with path.open() if isinstance(path, MediaBytes) else path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return  # not RIFF/WAVE (or too short for it): soundfile decides
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                if chunk_size not in (0, 0xFFFFFFFF) and offset + 8 + chunk_size > size:
                    raise AudioFileError(
                        f"{path}: truncated wav: the header declares {chunk_size} data bytes, "
                        f"the file holds {size - offset - 8}"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)


def load_audio(path: str | Path | MediaBytes, *, sample_rate: int) -> torch.Tensor:
    """Reads an audio file of any rate and channel count as mono at ``sample_rate``.

    Returns FloatTensor [1, N] (float32, the mean of the channels). Raises AudioFileError naming
    the file when it cannot be decoded (missing, truncated, not audio), has no samples, or holds
    NaN/Inf.
    """
    path = _source(path)
    try:
        _check_wav_complete(path)
        data, rate = sf.read(_readable(path), dtype="float32", always_2d=True)  # [N, C]
    except (sf.SoundFileError, OSError) as error:
        raise AudioFileError(f"{path}: cannot decode audio ({error})") from error
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioFileError(f"{path}: empty audio file (0 samples)")
    if not np.isfinite(data).all():
        raise AudioFileError(f"{path}: audio holds NaN or Inf values")
    audio = torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)  # [1, N]
    if rate != sample_rate:
        audio = torchaudio.functional.resample(audio, int(rate), int(sample_rate))
    return audio


class AudioReader:
    """An audio file read block by block, mono at ``sample_rate``: memory bounded by the block, not
    the file. ``len(reader)`` is the file's length in samples at ``sample_rate``; ``reader.read(start,
    stop)`` a FloatTensor [1, stop - start] (the same samples :func:`load_audio` gives there).

    A file at another rate is resampled per block from a source window that starts on the phase grid
    of the two rates and reaches ``margin`` samples past the block on each side, so the samples equal
    whole-file resampling up to rounding."""

    def __init__(self, path: str | Path, *, sample_rate: int, margin: int = 1024):
        self.path, self.sample_rate, self.margin = Path(path), int(sample_rate), margin
        try:
            _check_wav_complete(self.path)
            info = sf.info(str(self.path))
        except (sf.SoundFileError, OSError) as error:
            raise AudioFileError(f"{self.path}: cannot decode audio ({error})") from error
        if info.frames == 0 or info.channels == 0:
            raise AudioFileError(f"{self.path}: empty audio file (0 samples)")
        self.source_rate, self.source_frames = int(info.samplerate), int(info.frames)
        common = math.gcd(self.source_rate, self.sample_rate)
        self.period = self.sample_rate // common  # target samples per whole number of source samples

    def __len__(self) -> int:
        return math.ceil(self.source_frames * self.sample_rate / self.source_rate)

    def _source(self, start: int, stop: int) -> torch.Tensor:
        """Source samples [start, stop) as mono [1, n]."""
        try:
            data = sf.read(str(self.path), start=start, stop=stop, dtype="float32", always_2d=True)[0]
        except (sf.SoundFileError, OSError) as error:
            raise AudioFileError(f"{self.path}: cannot decode audio ({error})") from error
        if not np.isfinite(data).all():
            raise AudioFileError(f"{self.path}: audio holds NaN or Inf values")
        return torch.from_numpy(np.ascontiguousarray(data.T)).mean(dim=0, keepdim=True)

    def read(self, start: int, stop: int) -> torch.Tensor:
        stop = min(stop, len(self))
        if self.source_rate == self.sample_rate:
            return self._source(start, stop)
        first = max(0, start - self.margin) // self.period * self.period  # on the phase grid
        source_start = first * self.source_rate // self.sample_rate
        source_stop = min(self.source_frames, math.ceil((stop + self.margin) * self.source_rate / self.sample_rate))
        block = torchaudio.functional.resample(self._source(source_start, source_stop), self.source_rate,
                                               self.sample_rate)
        return block[:, start - first: stop - first]


def _as_channels(audio: AudioLike, *, name: str = "audio") -> torch.Tensor:
    """Returns audio as a float32 CPU tensor [C, N]; accepts [N], [1, N] or [C, N]."""
    tensor = torch.as_tensor(audio).detach().cpu().float()
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2:
        raise ValueError(f"mmtok/media.py: {name} must be [N] or [C, N], got shape {tuple(tensor.shape)}")
    return tensor


def write_wav(path: str | Path, audio: AudioLike, *, sample_rate: int) -> Path:
    """Writes ``audio`` (tensor or array [N], [1, N] or [C, N], floats in [-1, 1]) as 16-bit PCM.

    Values outside [-1, 1] are clipped; parent folders are created. Returns the path written.
    """
    if sample_rate <= 0:
        raise ValueError(f"mmtok/media.py write_wav: sample_rate must be > 0, got {sample_rate}")
    channels = _as_channels(audio).clamp(-1.0, 1.0)  # [C, N]
    with atomic_path(path) as temporary:
        sf.write(str(temporary), channels.T.numpy(), int(sample_rate), subtype="PCM_16", format="WAV")
    return Path(path)


def write_wav_blocks(path: str | Path, blocks, *, sample_rate: int, channels: int = 1) -> Path:
    """Writes audio given block by block (an iterable of [C, n] tensors or arrays) as 16-bit PCM, so
    that memory holds one block, not the file; atomically, like :func:`write_wav`."""
    if sample_rate <= 0:
        raise ValueError(f"mmtok/media.py write_wav_blocks: sample_rate must be > 0, got {sample_rate}")
    with atomic_path(path) as temporary:
        with sf.SoundFile(str(temporary), mode="w", samplerate=int(sample_rate), channels=channels,
                          subtype="PCM_16", format="WAV") as handle:
            for block in blocks:
                handle.write(_as_channels(block).clamp(-1.0, 1.0).T.numpy())
    return Path(path)


def mel_spectrogram_db(
    audio: AudioLike,
    *,
    sample_rate: int,
    n_mels: int = 80,
    n_fft: int = 1024,
    hop_length: int = 256,
    top_db: float | None = 80.0,
) -> torch.Tensor:
    """Log-mel spectrogram in dB of a mono mix of ``audio`` ([N], [1, N] or [C, N]).

    Returns FloatTensor [n_mels, frames] with frames = N // hop_length + 1, in dB relative to its
    own maximum (so the maximum is 0 dB) and floored at ``-top_db``; ``top_db=None`` returns the
    unnormalised dB of the mel power (10 log10, full-scale reference).
    """
    mono = _as_channels(audio).float().mean(dim=0)  # [N]
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0
    )
    with torch.autocast(mono.device.type, enabled=False):  # a run in bf16 mixed precision draws in float32
        power = transform(mono)  # [n_mels, frames]
    db = torchaudio.functional.amplitude_to_DB(power, multiplier=10.0, amin=1e-10, db_multiplier=0.0)
    if top_db is None:
        return db
    return (db - db.max()).clamp(min=-top_db)


def _draw(axis: Any, mel: torch.Tensor, *, seconds: float, title: str | None, top_db: float) -> Any:
    image = axis.imshow(
        mel.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=-top_db, vmax=0.0,
        extent=(0.0, seconds, 0, mel.shape[0]),
    )
    axis.set_xlabel("time (s)")
    axis.set_ylabel("mel bin")
    if title:
        axis.set_title(title)
    return image


def spectrogram_figure(
    audio: AudioLike,
    *,
    sample_rate: int,
    title: str | None = None,
    reference: AudioLike | None = None,
    reference_title: str = "reference",
    top_db: float = 80.0,
) -> Figure:
    """A matplotlib Figure of the log-mel spectrogram of ``audio`` ([N], [1, N] or [C, N]).

    With ``reference`` (e.g. the original of a reconstruction) the two are drawn side by side,
    the reference on the left, in dB relative to the louder of the two, so gain differences show.
    The figure is drawn on an Agg canvas outside pyplot: it needs no display and no closing.
    """
    signals = [audio] if reference is None else [reference, audio]
    titles = [title] if reference is None else [reference_title, title]
    mels = [mel_spectrogram_db(x, sample_rate=sample_rate, top_db=None) for x in signals]
    peak = max(float(m.max()) for m in mels)
    fig = Figure(figsize=(6 * len(signals), 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(signals), squeeze=False)[0]
    for axis, signal, mel, name in zip(axes, signals, mels, titles):
        seconds = _as_channels(signal).shape[-1] / sample_rate
        image = _draw(axis, (mel - peak).clamp(min=-top_db), seconds=seconds, title=name, top_db=top_db)
    fig.colorbar(image, ax=list(axes), format="%+.0f dB")
    return fig


def write_spectrogram_png(
    path: str | Path,
    audio: AudioLike,
    *,
    sample_rate: int,
    title: str | None = None,
    reference: AudioLike | None = None,
    reference_title: str = "reference",
    dpi: int = 100,
) -> Path:
    """Writes :func:`spectrogram_figure` to a png at ``path`` (parents created); returns the path."""
    fig = spectrogram_figure(audio, sample_rate=sample_rate, title=title, reference=reference,
                             reference_title=reference_title)
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=dpi, format="png")
    return Path(path)


def _cell(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif value is None:
        text = ""
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """Markdown table of ``rows``; columns are the keys in order of first appearance.

    Floats are written with 4 significant digits, missing values as empty cells.
    """
    if not rows:
        raise ValueError("mmtok/media.py markdown_table: rows is empty, expected at least one dict")
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, rows: list[dict]) -> str:
    """Writes ``rows`` as a Markdown table to ``path`` (parents created) and returns the Markdown."""
    text = markdown_table(rows)
    write_text_atomic(path, text)
    return text


# ----------------------------------------------------------------------------- images and video

PixelLike = torch.Tensor | np.ndarray
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi", ".npz")
VIDEO_WRITE_SUFFIXES = (".mp4", ".gif", ".npz")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class MediaFileError(DataError):
    """An image or video file that cannot be used; the message starts with the file's path.

    Raised for a missing file, one that cannot be decoded (truncated, corrupt, not media), a
    video with 0 frames or whose frame size changes, and, in the data loaders, a frame size other
    than the one asked for.
    """


def _to_uint8(pixels: PixelLike, *, value_range: tuple[float, float], name: str) -> np.ndarray:
    """uint8 pixels pass through; float pixels map ``value_range`` to 0..255 (clipped, rounded)."""
    array = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"mmtok/media.py: {name} must hold floats or uint8, got dtype {array.dtype}")
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"mmtok/media.py: value_range must be (low, high) with high > low, got {value_range}")
    if not np.isfinite(array).all():
        raise ValueError(f"mmtok/media.py: {name} holds NaN or Inf values")
    scaled = (array.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _image_hwc(
    image: PixelLike, *, value_range: tuple[float, float], name: str = "image", channels: tuple[int, ...] = (1, 3, 4)
) -> np.ndarray:
    """image [H, W] or [C, H, W] -> uint8 [H, W, C]."""
    shape = tuple(image.shape)
    if len(shape) == 2:
        image = image[None]
    if len(shape) not in (2, 3) or image.shape[0] not in channels or 0 in shape:
        raise ValueError(
            f"mmtok/media.py: {name} must be [H, W] or [C, H, W] with C in {channels} and H, W > 0, "
            f"got shape {shape}"
        )
    return np.ascontiguousarray(np.moveaxis(_to_uint8(image, value_range=value_range, name=name), 0, -1))


def write_png(path: str | Path, image: PixelLike, *, value_range: tuple[float, float] = (0.0, 1.0)) -> Path:
    """Writes ``image`` ([H, W] or [C, H, W], C = 1, 3 or 4) as an 8-bit gray/RGB/RGBA png.

    Parents are created; returns the path. The same pixels always give the same bytes.
    """
    pixels = _image_hwc(image, value_range=value_range)  # [H, W, C]
    with atomic_path(path) as temporary:
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(temporary, format="PNG")
    return Path(path)


def image_grid(
    images: PixelLike | Sequence[PixelLike],
    *,
    nrow: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (0.0, 1.0),
    pad_value: int = 255,
) -> np.ndarray:
    """Tiles images row by row, ``nrow`` per row (default ceil(sqrt(B))), into one uint8 array.

    images: [B, C, H, W] or a sequence of B images [C, H, W] / [H, W] of one size, C = 1 or 3
    (gray images are repeated to RGB when mixed with RGB ones). Returns uint8 [H', W', C] with
    H' = rows * (H + padding) + padding, W' = nrow * (W + padding) + padding; the padding and the
    empty cells of the last row have the value ``pad_value`` (0..255).
    """
    items = [_image_hwc(image, value_range=value_range, name=f"images[{i}]", channels=(1, 3))
             for i, image in enumerate(images)]
    if not items:
        raise ValueError("mmtok/media.py image_grid: images is empty, expected at least one image")
    sizes = {item.shape[:2] for item in items}
    if len(sizes) > 1:
        raise ValueError(f"mmtok/media.py image_grid: images must share one size (H, W), got {sorted(sizes)}")
    if padding < 0 or not 0 <= pad_value <= 255:
        raise ValueError(f"mmtok/media.py image_grid: need padding >= 0 and 0 <= pad_value <= 255, "
                         f"got padding={padding}, pad_value={pad_value}")
    channels = max(item.shape[-1] for item in items)
    nrow = max(1, min(nrow or math.ceil(math.sqrt(len(items))), len(items)))
    rows = math.ceil(len(items) / nrow)
    (height, width), step_h, step_w = sizes.pop(), items[0].shape[0] + padding, items[0].shape[1] + padding
    grid = np.full((rows * step_h + padding, nrow * step_w + padding, channels), pad_value, dtype=np.uint8)
    for index, item in enumerate(items):
        top, left = padding + (index // nrow) * step_h, padding + (index % nrow) * step_w
        grid[top:top + height, left:left + width] = item  # [H, W, 1] broadcasts to RGB
    return grid


def write_png_grid(
    path: str | Path,
    images: PixelLike | Sequence[PixelLike],
    *,
    nrow: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (0.0, 1.0),
    pad_value: int = 255,
) -> Path:
    """Writes :func:`image_grid` of ``images`` ([B, C, H, W] or a list) as a png; returns the path."""
    grid = image_grid(images, nrow=nrow, padding=padding, value_range=value_range, pad_value=pad_value)
    return write_png(path, np.moveaxis(grid, -1, 0))


def _pil_to_array(image: Image.Image, *, channels: int) -> np.ndarray:
    """A decoded Pillow image -> float32 [H, W, channels] in [0, 1] (see :func:`read_image`)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        scale = 1.0 if image.mode == "F" else 65535.0
        gray = np.clip(np.asarray(image, dtype=np.float64) / scale, 0.0, 1.0)[..., None]  # [H, W, 1]
        rgb = np.repeat(gray, 3, axis=-1)
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64) / 255.0  # [H, W, 4]
        rgb = rgba[..., :3] * rgba[..., 3:]  # composited over black
    elif channels == 1:
        return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[..., None]
    else:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if channels == 3:
        return rgb.astype(np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's RGB -> L
    return luma[..., None].astype(np.float32)


def read_image(path: str | Path | MediaBytes, *, channels: int = 3) -> torch.Tensor:
    """Reads an image file as FloatTensor [channels, H, W] in [0, 1], channels = 1 or 3.

    Gray, gray + alpha, palette, RGBA, CMYK and 16-bit files are converted, not rejected: to RGB by
    repeating gray and compositing alpha over black (colour x alpha); to gray with ITU-R 601 luma.
    Raises MediaFileError naming the file when it is missing, truncated, corrupt or not an image.
    """
    if channels not in (1, 3):
        raise ValueError(f"mmtok/media.py read_image: channels must be 1 or 3, got {channels}")
    path = _source(path)
    if not _exists(path):
        raise MediaFileError(f"{path}: image file does not exist")
    try:
        with Image.open(_readable(path)) as image:
            image.load()  # decodes now: a truncated or corrupt file fails here, not later
            array = _pil_to_array(image, channels=channels)  # [H, W, C]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise MediaFileError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from error
    if 0 in array.shape:
        raise MediaFileError(f"{path}: empty image ({array.shape[1]}x{array.shape[0]} pixels)")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0)))


def _video_thwc(video: PixelLike, *, value_range: tuple[float, float]) -> np.ndarray:
    """video [C, T, H, W] or [T, H, W] -> uint8 [T, H, W, C], C = 1 or 3."""
    shape = tuple(video.shape)
    if len(shape) == 3:
        video = video[None]
    if len(shape) not in (3, 4) or video.shape[0] not in (1, 3) or 0 in shape:
        raise ValueError(
            f"mmtok/media.py: video must be [T, H, W] or [C, T, H, W] with C in (1, 3) and T, H, W > 0, "
            f"got shape {shape}"
        )
    return np.ascontiguousarray(np.moveaxis(_to_uint8(video, value_range=value_range, name="video"), 0, -1))


def _gif_palette_frames(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames uint8 [T, H, W, 3] -> (palette indices uint8 [T, H, W], ARGB palette uint8 [256, 4]).

    One median-cut palette of up to 256 colours for the whole clip (exact for clips with <= 256
    colours), no dithering, so the same frames always give the same gif.
    """
    count, height, width, _ = frames.shape
    stacked = Image.fromarray(frames.reshape(count * height, width, 3))
    quantized = stacked.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    colours = np.array(quantized.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]
    palette = np.zeros((256, 4), dtype=np.uint8)
    palette[:, 0] = 255  # opaque
    palette[: len(colours), 1:] = colours
    return np.asarray(quantized, dtype=np.uint8).reshape(count, height, width), palette


def write_video(
    path: str | Path,
    video: PixelLike,
    *,
    fps: float,
    value_range: tuple[float, float] = (0.0, 1.0),
    crf: int = 18,
) -> Path:
    """Writes ``video`` ([C, T, H, W] or [T, H, W], C = 1 or 3) by suffix; returns the path.

    - ``.mp4``: H.264 (libx264, yuv420p, constant quality ``crf``: 0 best .. 51 worst); H and W
      must be even. libx264 runs on one thread without its macroblock tree, so the same frames
      always give the same bytes.
    - ``.gif``: FFmpeg's gif encoder; gray clips are exact, RGB clips use one median-cut palette of
      256 colours per clip (exact when the clip has no more colours). Frame delays are whole
      hundredths of a second.
    - ``.npz``: the exact frames, ``frames`` uint8 [T, H, W, C], and ``fps``.
    Parents are created.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_WRITE_SUFFIXES:
        raise ValueError(f"mmtok/media.py write_video: {path}: suffix must be one of {VIDEO_WRITE_SUFFIXES}")
    if not fps > 0:
        raise ValueError(f"mmtok/media.py write_video: fps must be > 0, got {fps}")
    if not 0 <= crf <= 51:
        raise ValueError(f"mmtok/media.py write_video: crf must be in 0..51, got {crf}")
    frames = _video_thwc(video, value_range=value_range)  # [T, H, W, C]
    count, height, width, channels = frames.shape
    if suffix == ".mp4" and (height % 2 or width % 2):
        raise ValueError(f"mmtok/media.py write_video: {path}: mp4 (yuv420p) needs an even frame size, "
                         f"got {height}x{width} (H x W); crop or pad it, or write .gif/.npz")
    with atomic_path(path) as temporary:
        if suffix == ".npz":
            np.savez_compressed(temporary, frames=frames, fps=np.float64(fps))
        else:
            _encode_video(temporary, frames, fps=fps, crf=crf, suffix=suffix)
    return path


def _encode_video(path: Path, frames: np.ndarray, *, fps: float, crf: int, suffix: str) -> None:
    """frames uint8 [T, H, W, C] -> an mp4 (H.264) or gif at ``path``."""
    import av  # PyAV only where video is written or read: importing mmtok.media stays light

    height, width, channels = frames.shape[1:]
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4" if suffix == ".mp4" else "gif") as container:
        if suffix == ".mp4":
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv420p"
            # One thread, and no macroblock tree: x264's lookahead then reads uninitialised memory
            # for small frames, so equal input gave different bytes from one call to the next.
            stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
            stream.codec_context.thread_count = 1
            pictures = [(frame[..., 0] if channels == 1 else frame, "gray" if channels == 1 else "rgb24")
                        for frame in frames]
        else:
            stream = container.add_stream("gif", rate=rate)
            if channels == 1:
                stream.pix_fmt = "gray"
                pictures = [(frame[..., 0], "gray") for frame in frames]
            else:
                stream.pix_fmt = "pal8"
                indices, palette = _gif_palette_frames(frames)
                pictures = [((index, palette), "pal8") for index in indices]
        stream.width, stream.height = width, height
        for picture, pixel_format in pictures:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format=pixel_format)))
        container.mux(stream.encode(None))


def _read_npz_video(path: Path | MediaBytes) -> tuple[np.ndarray, float]:
    """An ``.npz`` written by :func:`write_video` -> (uint8 [T, H, W, C], fps)."""
    try:
        with np.load(path.open() if isinstance(path, MediaBytes) else path, allow_pickle=False) as data:
            frames, fps = data["frames"], float(data["fps"]) if "fps" in data else 0.0
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise MediaFileError(f"{path}: cannot read npz video ({type(error).__name__}: {error}); "
                             "expected arrays 'frames' uint8 [T, H, W(, C)] and 'fps'") from error
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] not in (1, 3)):
        raise MediaFileError(f"{path}: npz 'frames' must be uint8 [T, H, W] or [T, H, W, C] with C in (1, 3), "
                             f"got {frames.dtype} {tuple(frames.shape)}")
    return (frames[..., None] if frames.ndim == 3 else frames), fps


def read_video(path: str | Path | MediaBytes, *, channels: int = 3,
               max_frames: int | None = None) -> tuple[torch.Tensor, float]:
    """Reads a video file (mp4/webm/gif/mov/mkv/avi via PyAV, or .npz) as float32 in [0, 1].

    Returns (FloatTensor [channels, T, H, W], frames per second; 0.0 when the file does not say).
    ``max_frames`` stops decoding after that many frames. Raises MediaFileError naming the file
    when it is missing, cannot be opened or decoded, has no video stream, holds 0 frames, or when
    its frame size changes from one frame to the next (with the frame index).
    """
    if channels not in (1, 3):
        raise ValueError(f"mmtok/media.py read_video: channels must be 1 or 3, got {channels}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"mmtok/media.py read_video: max_frames must be >= 1 or None, got {max_frames}")
    path = _source(path)
    if not _exists(path):
        raise MediaFileError(f"{path}: video file does not exist")
    if path.suffix.lower() == ".npz":
        frames, fps = _read_npz_video(path)
        frames = frames[:max_frames]
    else:
        frames, fps = _decode_video(path, channels=channels, max_frames=max_frames)
    if frames.shape[0] == 0:
        raise MediaFileError(f"{path}: video holds 0 frames")
    if frames.shape[-1] != channels:
        weights = np.array([0.299, 0.587, 0.114])
        frames = np.repeat(frames, 3, axis=-1) if channels == 3 else np.rint(frames @ weights)[..., None]
    video = torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames, -1, 0))).float() / 255.0  # [C, T, H, W]
    return video, fps


def _decode_video(path: Path | MediaBytes, *, channels: int, max_frames: int | None) -> tuple[np.ndarray, float]:
    """PyAV decode of the first video stream -> (uint8 [T, H, W, channels], fps)."""
    import av

    pixel_format = "gray" if channels == 1 else "rgb24"
    pictures: list[np.ndarray] = []
    try:
        with av.open(_readable(path), mode="r") as container:
            if not container.streams.video:
                raise MediaFileError(f"{path}: no video stream (streams: {[s.type for s in container.streams]})")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if pictures and (frame.height, frame.width) != pictures[0].shape[:2]:
                        expected = "x".join(str(n) for n in pictures[0].shape[:2])
                        raise MediaFileError(f"{path}: frame {index} is {frame.height}x{frame.width} (H x W), "
                                             f"frame 0 is {expected}; a video must keep one frame size")
                    pictures.append(frame.to_ndarray(format=pixel_format).reshape(frame.height, frame.width, channels))
                    if max_frames is not None and len(pictures) >= max_frames:
                        break
            except av.error.EOFError:
                pass  # the demuxer's end of file: keep the frames decoded so far (none -> "0 frames" below)
    except (av.error.FFmpegError, OSError) as error:
        raise MediaFileError(f"{path}: cannot decode video ({type(error).__name__}: {error})") from error
    if not pictures:
        return np.zeros((0, 0, 0, channels), dtype=np.uint8), float(rate or 0.0)
    return np.stack(pictures), float(rate or 0.0)


def pad_audio(audios: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms [1, N_i] -> (zero-padded [B, 1, N], lengths [B])."""
    lengths = torch.tensor([a.shape[-1] for a in audios])
    batch = torch.zeros(len(audios), 1, int(lengths.max()))
    for row, audio in enumerate(audios):
        batch[row, :, : audio.shape[-1]] = audio
    return batch, lengths
