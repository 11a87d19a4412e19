"""Write validation media to the run folder and, when the logger is wandb, log them there too."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from mmtok.media import image_grid, spectrogram_figure, write_png_grid, write_spectrogram_png, write_wav


def media_dir(module: L.LightningModule) -> Path:
    """``<default_root_dir>/media/step_<global step>``."""
    return Path(module.trainer.default_root_dir) / "media" / f"step_{module.global_step:07d}"


def log_audio_examples(module: L.LightningModule, audio: torch.Tensor, reconstruction: torch.Tensor,
                       lengths: torch.Tensor | None, *, suffix: str, count: int, with_original: bool) -> None:
    """Write ``count`` items (wav + spectrogram png) and log them to wandb as audio and images.

    audio, reconstruction: FloatTensor [B, 1, N]; lengths: LongTensor [B] of valid samples.
    """
    folder = media_dir(module)
    sample_rate = module.codec.sample_rate
    wandb_logger = next((lg for lg in module.loggers if isinstance(lg, WandbLogger)), None)
    for i in range(min(count, audio.shape[0])):
        n = int(lengths[i]) if lengths is not None else audio.shape[-1]
        original, recon = audio[i, :, :n].float().cpu(), reconstruction[i, :, :n].float().cpu()
        if with_original:
            write_wav(folder / f"{i}_original.wav", original, sample_rate=sample_rate)
        write_wav(folder / f"{i}_recon_{suffix}.wav", recon, sample_rate=sample_rate)
        write_spectrogram_png(folder / f"{i}_recon_{suffix}.png", recon, sample_rate=sample_rate,
                              reference=original, title=f"item {i}, {suffix}")
        if wandb_logger is not None:
            _log_to_wandb(wandb_logger, f"val_media/{i}_{suffix}", recon, sample_rate=sample_rate,
                          reference=original, step=module.global_step)


def _log_to_wandb(wandb_logger: WandbLogger, key: str, audio: torch.Tensor, *, sample_rate: int,
                  reference: torch.Tensor | None, step: int) -> None:
    import matplotlib.pyplot as plt

    wandb_logger.log_audio(key=key, audios=[audio.squeeze(0).numpy()], sample_rate=[sample_rate], step=step)
    figure = spectrogram_figure(audio, sample_rate=sample_rate, reference=reference, title=key)
    wandb_logger.log_image(key=f"{key}_mel", images=[figure], step=step)
    plt.close(figure)


def log_generated_audio(module: L.LightningModule, audios: list[torch.Tensor], references: list[torch.Tensor],
                        *, sample_rate: int) -> None:
    """Write generated items (wav + spectrogram png over the real utterance's) to the run's media
    folder, and log them to wandb when it is a logger. audios, references: FloatTensors [1, N]."""
    folder = media_dir(module)
    wandb_logger = next((lg for lg in module.loggers if isinstance(lg, WandbLogger)), None)
    for i, (audio, reference) in enumerate(zip(audios, references)):
        audio, reference = audio.float().cpu(), reference.float().cpu()
        write_wav(folder / f"{i}_generated.wav", audio, sample_rate=sample_rate)
        write_spectrogram_png(folder / f"{i}_generated.png", audio, sample_rate=sample_rate, reference=reference,
                              title=f"item {i}, generated", reference_title="real utterance (decoded tokens)")
        if wandb_logger is not None:
            _log_to_wandb(wandb_logger, f"val_media/{i}_generated", audio, sample_rate=sample_rate,
                          reference=reference, step=module.global_step)


def log_image_examples(module: L.LightningModule, images: torch.Tensor, reconstructions: list[torch.Tensor], *,
                       names: list[str], count: int, name: str = "reconstructions") -> Path:
    """Write one png grid, the first ``count`` originals in the top row and under them one row per entry
    of ``reconstructions`` (so each column is an image and its reconstructions), to the run's media
    folder as ``<name>.png``, and log it to wandb when it is a logger. Returns the png's path.

    images, reconstructions[i]: FloatTensor [B, C, H, W] in [0, 1]; names[i] names row i + 1.
    """
    count = min(count, images.shape[0])
    rows = torch.cat([images[:count], *(r[:count] for r in reconstructions)]).detach().float().cpu()
    path = write_png_grid(media_dir(module) / f"{name}.png", rows, nrow=count)
    wandb_logger = next((lg for lg in module.loggers if isinstance(lg, WandbLogger)), None)
    if wandb_logger is not None:
        wandb_logger.log_image(key=f"val_media/{name}", images=[image_grid(rows, nrow=count)],
                               caption=["rows: original, " + ", ".join(names)], step=module.global_step)
    return path
