"""Seeded sampling: every random draw of an iteration is a function of (seed, epoch, position).

The sampler pairs each index with its own seed and the dataset wrapper seeds python, numpy and
torch from it before the transform, so an augmentation does not depend on which worker process
loads the sample or on where a resumed run started.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from edgeseg.errors import EdgesegError


def mix_seeds(*values: int) -> int:
    """One well-mixed 32-bit seed from several integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


class SeededSampler(Sampler):
    """Shuffled indices per epoch, sharded by rank, each paired with its own augmentation seed."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.skip_batches = 0, 0
        per_rank = n // world
        self.num_batches = per_rank // batch_size
        if self.num_batches == 0:
            raise EdgesegError(
                f"the training split has {n} images, fewer than one batch of {batch_size} per process; lower train.batch_size"
            )

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        return (self.num_batches - self.skip_batches) * self.batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(mix_seeds(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()[self.rank :: self.world]
        order = order[: self.num_batches * self.batch]
        for pos in range(self.skip_batches * self.batch, len(order)):
            yield order[pos], mix_seeds(self.seed, self.epoch, pos, self.rank)


class SeededDataset(torch.utils.data.Dataset):
    """Seeds python/numpy/torch RNGs from the sampler's per-sample seed before the transform."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return self.dataset[index]
