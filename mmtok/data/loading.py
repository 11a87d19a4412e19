"""Training batches that a run resumes exactly, on one process or many.

An epoch's order and every random draw inside an item (a crop, a caption's phrasing, a voice prompt)
come from ``(seed, epoch)`` alone, never from torch's global generator, a DataLoader worker's seed or
where the run was resumed:

- :class:`EpochSampler` (a :class:`~torch.utils.data.DistributedSampler`, so Lightning leaves it in
  place under DDP) hands this process its share of the epoch's permutation, each index paired with
  an item seed. A dataset's ``__getitem__`` takes either a plain index (evaluation, direct use) or
  such a key: :func:`split_key`.
- :class:`ResumableLoader` is the DataLoader over it that Lightning saves with the run
  (``state_dict`` / ``load_state_dict``: the epoch and how many batches of it were trained on) and
  restores mid-epoch, so a resumed run sees the batches the uninterrupted run would have seen.

The model's own draws (quantizer dropout, masks, noise) are the other half of an exact resume:
:class:`mmtok.training.callbacks.RandomStates` saves and restores the generators.
"""

from __future__ import annotations

import contextlib
import logging
import random

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)

_SEED_BOUND = 2**62


def split_key(key: int | tuple[int, int]) -> tuple[int, random.Random | None]:
    """``(index, the item's own generator)`` for an :class:`EpochSampler` key, ``(index, None)`` for a
    plain index (no draws were seeded for it)."""
    if isinstance(key, tuple):
        index, seed = key
        return int(index), random.Random(seed)
    return int(key), None


@contextlib.contextmanager
def random_states_kept():
    """Runs a block (a data module's ``prepare_data``: building a token cache loads a tokenizer, whose
    construction draws initial weights) without moving the torch, numpy and python generators, so a
    run draws the same whether or not its cache had to be built first."""
    import numpy as np

    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def unseeded_rng() -> random.Random:
    """A generator for an item drawn without a seeded key, seeded from torch's global generator (so
    ``seed_everything`` still makes such a run repeatable)."""
    return random.Random(int(torch.randint(0, _SEED_BOUND, (1,))))


class EpochSampler(DistributedSampler):
    """This process's share of epoch ``e``'s shuffled order (the permutation DistributedSampler draws
    from ``seed + e``), each index given as ``(index, item seed)`` with the item seed drawn, per dataset
    index, from ``(seed, e)``: the same item in the same epoch gets the same draws on any number of
    processes. ``skip`` leaves that many of the first indices out of the next pass only (a resumed
    epoch)."""

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        draws = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 1)
        item_seeds = torch.randint(0, _SEED_BOUND, (len(self.dataset),), generator=draws).tolist()
        skip, self.skip = self.skip, 0
        return iter([(index, item_seeds[index]) for index in indices[skip:]])


class ResumableLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` whose position Lightning checkpoints.

    The loader is one stream of epochs: a pass (``iter``) continues the epoch in progress until all
    its batches are out, then the next pass starts the next epoch. ``state_dict()`` is ``{"epoch",
    "batches", "seed", "num_replicas", "batch_size"}``, the epoch in progress and how many of its
    batches were handed out (Lightning fetches nothing ahead from a loader with a length);
    ``load_state_dict`` puts the stream back there. Saved by a run on another number of processes or
    batch size, it logs a warning and the stream starts over.

    Why the loader keeps its own count instead of following ``set_epoch`` and Lightning's epochs: a
    run that stops at ``max_steps`` saves a checkpoint whose loop counters Lightning resumes with an
    epoch number one ahead, and sometimes with an epoch that ends before the data's does; following
    them, the rest of the interrupted epoch would come from another epoch's order.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False, **loader_options) -> None:
        sampler = EpochSampler(dataset, num_replicas=num_replicas, rank=rank, seed=seed)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                         generator=torch.Generator().manual_seed(seed), **loader_options)
        self._epoch, self._handed_out = -1, 0  # -1: no epoch yet

    def __iter__(self):
        if self._epoch < 0 or self._handed_out >= len(self):
            self._epoch, self._handed_out = self._epoch + 1, 0
        self.sampler.set_epoch(self._epoch)
        self.sampler.skip = self._handed_out * self.batch_size
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def _identity(self) -> dict:
        return {"seed": self.sampler.seed, "num_replicas": self.sampler.num_replicas, "batch_size": self.batch_size}

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches": self._handed_out, **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        saved = {key: state.get(key) for key in self._identity()}
        if saved != self._identity():
            log.warning("resuming a run saved with %s on %s: the data order cannot continue where it stopped, the "
                        "epochs start over", saved, self._identity())
            return
        self._epoch, self._handed_out = state["epoch"], state["batches"]


def training_loader(datamodule: L.LightningDataModule, dataset: Dataset, *, batch_size: int, seed: int,
                    **loader_options) -> ResumableLoader:
    """The :class:`ResumableLoader` of a data module's train split, sharded over the processes of the
    trainer it is attached to (one process outside a Trainer)."""
    trainer = getattr(datamodule, "trainer", None)
    replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    return ResumableLoader(dataset, batch_size=batch_size, seed=seed, num_replicas=replicas, rank=rank,
                           **loader_options)
