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


class Throughput(L.Callback):
    """Logs ``train/<name>_per_s`` for what each training batch holds, as the data module measures it
    (``batch_measures(batch)``: samples, and seconds of audio, frames or tokens per modality; the
    batch's first dimension when the data module has no such method), averaged over the last
    ``window`` batches of training time: data loading is counted, validation is not. The values
    reach the logger (the run folder's metrics) and :class:`PlainProgress`'s lines.
    """

    def __init__(self, window: int = 20) -> None:
        import collections

        self.window = window
        self._marks: collections.deque = collections.deque(maxlen=window + 1)
        self._paused = 0.0
        self._validation_started: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self._marks.clear()
        self._marks.append((time.perf_counter(), {}))
        self._paused = 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        if self._validation_started is not None:
            self._paused += time.perf_counter() - self._validation_started
            self._validation_started = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        import time

        if batch is None or not self._marks:
            return
        self._marks.append((time.perf_counter() - self._paused, _measures(trainer, batch)))
        (start, _), (end, _) = self._marks[0], self._marks[-1]
        if end <= start:
            return
        totals: dict[str, float] = {}
        for _, measures in list(self._marks)[1:]:
            for name, value in measures.items():
                totals[name] = totals.get(name, 0.0) + value
        for name, value in totals.items():
            pl_module.log(f"train/{name}_per_s", value * trainer.world_size / (end - start), on_step=True,
                          on_epoch=False, batch_size=1, rank_zero_only=True)


def _measures(trainer: L.Trainer, batch) -> dict[str, float]:
    measure = getattr(trainer.datamodule, "batch_measures", None)
    if measure is not None:
        return measure(batch)
    first = batch if not isinstance(batch, dict) else next(iter(batch.values()))
    return {"samples": len(first)}


class RandomStates(L.Callback):
    """Saves every process's random generators (torch, CUDA, numpy, python) with the run and puts them
    back when it resumes, and runs each validation on its own generators seeded with
    ``validation_seed``, so that validating (or not) never moves training's draws and a validation's
    random draws (masks, noise) are the same at every step.

    With :mod:`mmtok.data.loading` (batches from ``(seed, epoch)``, loader position checkpointed)
    this makes a resumed run, mid-epoch included, bit-identical to the uninterrupted one on CPU.
    The states are gathered from every process (rank r gets its own back) and stored as integer
    tensors, so the checkpoint stays loadable with ``weights_only``.
    """

    def __init__(self, validation_seed: int = 0) -> None:
        self.validation_seed = validation_seed
        self._to_restore: dict | None = None
        self._training_states: dict | None = None
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        states = _pack_random_states()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # every rank takes part (the checkpoint is dumped on all)
            return {key: trainer.strategy.all_gather(value).cpu() for key, value in states.items()}
        return {key: value[None] for key, value in states.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Puts the saved generators back right before the first resumed step (after the restore, the
        sanity check and the loaders' first fetch, none of which may move them)."""
        if self._to_restore is None:
            return
        states, self._to_restore = self._to_restore, None
        if states["torch"].shape[0] != trainer.world_size:
            import warnings

            warnings.warn(f"RandomStates: the checkpoint holds the generators of {states['torch'].shape[0]} "
                          f"process(es), this run has {trainer.world_size}: they are not restored", stacklevel=1)
            return
        _unpack_random_states({key: value[trainer.global_rank] for key, value in states.items()})

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import random

        import numpy as np
        import torch

        self._training_states = _pack_random_states()
        # not seed_everything: it would also set PL_GLOBAL_SEED, the run's own seed for later processes
        torch.manual_seed(self.validation_seed)  # CUDA's generators too
        np.random.seed(self.validation_seed)
        random.seed(self.validation_seed)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._training_states is not None:
            _unpack_random_states(self._training_states)
            self._training_states = None


def _pack_random_states() -> dict:
    """This process's generator states as int64 tensors (no pickled numpy or python objects)."""
    import random

    import numpy as np
    import torch

    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    python_gauss = [0, 0] if gauss_next is None else [1, int(np.float64(gauss_next).view(np.int64))]
    states = {
        "torch": torch.get_rng_state().long(),
        "numpy": torch.tensor([*keys.tolist(), position, has_gauss,
                               int(np.float64(gauss).view(np.int64))], dtype=torch.long),
        "python": torch.tensor([version, *python_gauss, *python_state], dtype=torch.long),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all()).long()
    return states


def _unpack_random_states(states: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(states["torch"].to(torch.uint8))
    numpy = states["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(numpy[:624], dtype=np.uint32), numpy[624], numpy[625],
                         float(np.int64(numpy[626]).view(np.float64))))
    python = states["python"].tolist()
    gauss_next = float(np.int64(python[2]).view(np.float64)) if python[1] else None
    random.setstate((python[0], tuple(python[3:]), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"].to(torch.uint8)))
