"""Writers shared by every command: wav files, mel spectrograms, spectrogram plots, metric tables.

Audio is written with soundfile (torchaudio's own file I/O moved to torchcodec), spectrograms are
computed with ``torchaudio.transforms`` and drawn on matplotlib Agg canvases outside pyplot, so
nothing here needs a display or touches pyplot's global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

AudioLike = torch.Tensor | np.ndarray


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), channels.T.numpy(), int(sample_rate), subtype="PCM_16", format="WAV")
    return path


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
    mono = _as_channels(audio).mean(dim=0)  # [N]
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0
    )
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
    dpi: int = 100,
) -> Path:
    """Writes :func:`spectrogram_figure` to a png at ``path`` (parents created); returns the path."""
    fig = spectrogram_figure(audio, sample_rate=sample_rate, title=title, reference=reference)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text
