"""The litdata classes behind :mod:`mmtok.data.shards` (kept apart: importing litdata takes a second and a
half, which only a run that reads shards should pay)."""

from __future__ import annotations

import random
from typing import Callable

import torch
from litdata import StreamingDataLoader, StreamingDataset

from mmtok.data.shards import decode_item


class ShardItems(StreamingDataset):
    """One split's shard items made by ``make_item(entry, media_or_codes, rng)``, the data module's own
    item code; in training ``rng`` is the item's generator of this epoch, else None."""

    def __init__(self, folder: str, *, key: str | None, make_item: Callable, train: bool, seed: int) -> None:
        super().__init__(folder, shuffle=train, drop_last=train, seed=seed)
        self.key, self.make_item, self.train, self.item_seed = key, make_item, train, seed

    def __getitem__(self, index):
        raw = super().__getitem__(index)
        position = int(getattr(index, "index", index))
        rng = random.Random(hash((self.item_seed, self.current_epoch, position))) if self.train else None
        return self.make_item(*decode_item(raw, self.key), rng)


class ContinuingLoader(StreamingDataLoader):
    """A StreamingDataLoader whose next pass goes on with an epoch that was left before its last batch,
    with its own generator for the worker seeds (torch's global one is the model's, see
    :class:`mmtok.training.callbacks.RandomStates`).

    Lightning resumes a run stopped by ``max_steps`` with its own epoch one ahead of the data's and
    sometimes ends that epoch after one batch; a plain StreamingDataLoader would then start a new
    epoch and drop the rest of the interrupted one, or, its restored position still armed, repeat it
    (see :class:`mmtok.data.loading.ResumableLoader`).
    """

    def __init__(self, dataset: ShardItems, **options) -> None:
        super().__init__(dataset, generator=torch.Generator().manual_seed(dataset.item_seed), **options)
        self._restored = False

    def load_state_dict(self, obj: dict) -> None:
        super().load_state_dict(obj)
        self._restored = True

    def __iter__(self):
        if not self._restored:
            self.restore = False  # litdata keeps it set after a restored pass that was left early
            if 0 < self._num_samples_yielded_streaming < len(self) * self.batch_size:
                super().load_state_dict(self.state_dict())  # an unfinished epoch: go on from where it is
        self._restored = False
        yield from super().__iter__()
