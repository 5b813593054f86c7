"""Epoch orders that are reproducible from (seed, epoch) and can start mid-epoch, for exact resumes."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffled indices of one epoch for one process, from `start` on.

    The permutation depends only on (seed, epoch); process `rank` of `world_size` takes every
    `world_size`-th index (padded by wrapping so all processes take the same number of steps).
    """

    def __init__(self, dataset_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.dataset_size = dataset_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Use `epoch`'s order, skipping this process's first `start` samples (already trained on)."""
        self.epoch = epoch
        self.start = start

    def per_process(self) -> int:
        return -(-self.dataset_size // self.world_size)

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.per_process() * self.world_size
        order = (order * (total // max(len(order), 1) + 1))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return self.per_process() - self.start
