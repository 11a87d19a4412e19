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


class PlainProgress(L.Callback):
    """One line per ``every_n_steps`` training steps on stdout when it is not a terminal (a log file,
    CI): ``fit step 500/4000 (12 %) | train/loss 2.345 | 1.02 s/step | 59.5 min left``, and one line of
    validation metrics after each validation.

    Lightning's progress bar (rich, when installed) draws only in a terminal, so a run sent to a file
    showed nothing until it ended. ``every_n_steps`` defaults to the trainer's ``log_every_n_steps``;
    ``always`` prints in a terminal too.
    """

    def __init__(self, every_n_steps: int | None = None, *, always: bool = False, stream=None):
        self.every_n_steps, self.always, self.stream = every_n_steps, always, stream
        self._started: tuple[float, int] | None = None

    def _enabled(self, stream) -> bool:
        return self.always or not (hasattr(stream, "isatty") and stream.isatty())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self._started = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        import sys
        import time

        stream = self.stream or sys.stdout
        every = self.every_n_steps or trainer.log_every_n_steps or 50
        step = trainer.global_step
        if not trainer.is_global_zero or not self._enabled(stream) or step % every or self._started is None:
            return
        seconds, first = self._started
        rate = (time.perf_counter() - seconds) / max(1, step - first)
        parts = [f"fit step {step}" + (f"/{trainer.max_steps} ({100 * step / trainer.max_steps:.0f} %)"
                                       if trainer.max_steps and trainer.max_steps > 0 else "")]
        parts += [f"{name} {float(value):.4g}" for name, value in sorted(trainer.callback_metrics.items())
                  if name.startswith("train") and getattr(value, "numel", lambda: 1)() == 1]
        parts.append(f"{rate:.3g} s/step")
        if trainer.max_steps and trainer.max_steps > step:
            parts.append(f"{rate * (trainer.max_steps - step) / 60:.1f} min left")
        print(" | ".join(parts), file=stream, flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``validation at step 500 | val/loss 1.234 | ...``: the validation metrics, which otherwise reach
        only the logger (a plain log never showed whether a run had started to overfit)."""
        import sys

        stream = self.stream or sys.stdout
        if not trainer.is_global_zero or not self._enabled(stream) or trainer.sanity_checking:
            return
        parts = [f"validation at step {trainer.global_step}"]
        parts += [f"{name} {float(value):.4g}" for name, value in sorted(trainer.callback_metrics.items())
                  if name.startswith("val") and getattr(value, "numel", lambda: 1)() == 1]
        print(" | ".join(parts), file=stream, flush=True)
