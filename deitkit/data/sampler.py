"""Epoch samplers for 1..N processes, with repeated augmentation, that yield replayable keys.

Each item is a `SampleKey(index, epoch, position)`: the dataset index, the epoch and the
item's position in the epoch's global order. `SeededTransformDataset` seeds the augmentation
of each item from (run seed, epoch, position), so a view depends on nothing but those numbers:
not on worker count, worker reuse or where a run was resumed. That makes resume exact and lets
an augmented view be replayed.

Repeated augmentation (Hoffer et al. 2020; DeiT's RASampler) is written here because timm's
`RepeatAugSampler` and the official RASampler need an initialised process group and
(officially) floor the epoch to a multiple of 256 images, so a single-process run or a dataset
under 256 images gets nothing. Each epoch: a seeded permutation of the indices, each repeated
`repeats` times, dealt round-robin to the ranks; each rank keeps ceil(N / world) items, so an
epoch still shows about N images in all. repeats=1 is a plain seeded shuffle.
"""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    index: int
    epoch: int
    position: int


class RepeatedAugSampler(Sampler[SampleKey]):
    def __init__(self, n: int, repeats: int = 3, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0):
        if n <= 0:
            raise ValueError("the training set is empty")
        self.n, self.repeats, self.world, self.rank = n, repeats, num_replicas, rank
        self.seed, self.epoch = seed, 0
        self.num_samples = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def epoch_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (dataset indices, positions in the epoch's global order), [num_samples]
        each: what `__iter__` yields as keys, as tensors (the device loader's form)."""
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        rep = order.repeat_interleave(self.repeats)              # a,a,a,b,b,b,...
        total = math.ceil(len(rep) / self.world) * self.world
        if total > len(rep):
            rep = torch.cat([rep, rep[: total - len(rep)]])
        positions = torch.arange(self.rank, total, self.world)[: self.num_samples]
        mine = rep[self.rank::self.world][: self.num_samples]
        return mine, positions

    def __iter__(self) -> Iterator[SampleKey]:
        mine, positions = self.epoch_order()
        return iter([SampleKey(int(i), self.epoch, int(p))
                     for i, p in zip(mine.tolist(), positions.tolist())])


class ShardSampler(Sampler[int]):
    """Evaluation: rank r takes items r, r + world, ...; no padding, so after a sum over ranks
    every validation image is counted exactly once, whatever the world size."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(rank, n, num_replicas))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
