"""A callback that `mmtok fit` subprocesses load (``--trainer.callbacks+=ddp_probe.RecordRank``, with this
folder on PYTHONPATH) to show what each DDP process did: ``<MMTOK_DDP_PROBE>/rank<r>.json`` holds every
training item it saw (its file when the batch names files, else a digest of its row of the batch's first
tensor) and a digest of its final parameters (buffers such as BatchNorm's running statistics are each
process's own under DDP; the checkpoint keeps rank 0's)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class RecordRank(L.Callback):
    def __init__(self) -> None:
        self.items: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "path" in batch:  # a crop of silence can be the same in two files
            self.items += list(batch["path"])
        else:
            first = next(value for value in batch.values() if isinstance(value, torch.Tensor))
            self.items += [_digest(row) for row in first]

    def on_train_end(self, trainer, pl_module) -> None:
        weights = hashlib.sha1()
        for name, value in sorted(pl_module.named_parameters()):
            weights.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        out = Path(os.environ["MMTOK_DDP_PROBE"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world_size": trainer.world_size, "items": self.items,
                                   "weights": weights.hexdigest()}))
