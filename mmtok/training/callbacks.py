"""Callbacks shared by the recipes."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` that saves to ``<trainer.default_root_dir>/checkpoints`` by default.

    Lightning's own default depends on the logger (wandb puts it under a random run id), which makes
    ``--ckpt_path <run>/checkpoints/last.ckpt`` unpredictable; one ``default_root_dir`` per run keeps
    the run folder self-contained and the resume command obvious.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)
