"""Batches of Distilled Decoding's teacher pairs (:mod:`mmtok.distill.pairs`): noise, the teacher's codes
and their conditions, with the pairs drawn first when the folder is missing or short."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mmtok.data.loading import random_states_kept, split_key, training_loader
from mmtok.distill.flow import FLOW_STEPS
from mmtok.distill.pairs import build_pairs, read_pairs


class PairDataset(Dataset):
    """Items ``{"noise": [S, Q, d], "codes": [Q, T], "lengths": T, <condition key>: value}``."""

    def __init__(self, noise: torch.Tensor, codes: torch.Tensor, conditions: dict):
        self.noise, self.codes, self.conditions = noise, codes, conditions

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, _ = split_key(key)  # nothing is drawn per item
        return {"noise": self.noise[index], "codes": self.codes[index], "lengths": self.codes.shape[-1],
                **{key: values[index] for key, values in self.conditions.items()}}


class PairDataModule(L.LightningDataModule):
    """``pairs`` is a pairs folder; with ``teacher`` (an AR generator's Hub folder) the missing pairs of
    the first ``count`` are drawn there first (``prepare_data``, resumable), as ``mmtok distill-pairs``
    would. The last ``valid_count`` pairs are held out for validation."""

    def __init__(self, *, pairs: str, teacher: str | None = None, count: int = 20000, shard_size: int = 1000,
                 seed: int = 0, vector_dim: int = 8, flow_steps: int = FLOW_STEPS, pair_batch_size: int = 250,
                 valid_count: int = 500, batch_size: int = 64, valid_batch_size: int = 100, num_workers: int = 0):
        super().__init__()
        if not 0 < valid_count < count:
            raise ValueError(f"valid_count {valid_count}: must be in 1 .. count - 1 ({count - 1})")
        self.save_hyperparameters()
        self.datasets: dict[str, PairDataset] = {}

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.teacher is not None:
            with random_states_kept():
                build_pairs(hp.teacher, hp.pairs, count=hp.count, shard_size=hp.shard_size, seed=hp.seed,
                            vector_dim=hp.vector_dim, flow_steps=hp.flow_steps, batch_size=hp.pair_batch_size)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        info, noise, codes, conditions = read_pairs(hp.pairs, limit=hp.count)
        if noise.shape[-1] != hp.vector_dim:
            raise ValueError(f"{hp.pairs}: pairs of vector_dim {noise.shape[-1]}, the data module's is {hp.vector_dim}")
        cut = len(codes) - hp.valid_count
        if cut < 1:
            raise ValueError(f"{hp.pairs}: {len(codes)} pairs, fewer than valid_count {hp.valid_count} + 1")
        self.info = info
        self.datasets = {"train": PairDataset(noise[:cut], codes[:cut], {k: v[:cut] for k, v in conditions.items()}),
                         "valid": PairDataset(noise[cut:], codes[cut:], {k: v[cut:] for k, v in conditions.items()})}

    def batch_measures(self, batch: dict) -> dict[str, float]:
        """Teacher pairs."""
        return {"samples": len(batch["codes"])}

    def train_dataloader(self) -> DataLoader:
        """Shuffled, resumable mid-epoch and sharded over processes (:mod:`mmtok.data.loading`)."""
        return training_loader(self, self.datasets["train"], batch_size=self.hparams.batch_size, seed=self.hparams.seed,
                               drop_last=True, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["valid"], batch_size=self.hparams.valid_batch_size,
                          num_workers=self.hparams.num_workers,
                          generator=torch.Generator().manual_seed(self.hparams.seed))
