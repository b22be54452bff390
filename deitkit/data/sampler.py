"""Repeated augmentation (Hoffer et al. 2020; DeiT's RASampler), for 1..N processes.

Written here because timm's `RepeatAugSampler` and the official RASampler need an initialised
process group and (officially) floor the epoch to a multiple of 256 images, so a single-process
run or a dataset under 256 images gets nothing. Here: each epoch, a seeded permutation of the
indices, each repeated `repeats` times, is dealt round-robin to the ranks; each rank keeps
ceil(N / world) indices, so an epoch still shows about N images in all.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class RepeatedAugSampler(Sampler[int]):
    def __init__(self, n: int, repeats: int = 3, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0):
        if n <= 0:
            raise ValueError("the training set is empty")
        self.n, self.repeats, self.world, self.rank = n, repeats, num_replicas, rank
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_samples = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        rep = order.repeat_interleave(self.repeats)              # a,a,a,b,b,b,...
        total = math.ceil(len(rep) / self.world) * self.world
        if total > len(rep):
            rep = torch.cat([rep, rep[: total - len(rep)]])
        mine = rep[self.rank::self.world]
        return iter(mine[: self.num_samples].tolist())
