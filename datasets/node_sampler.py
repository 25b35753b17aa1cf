"""Distributed sampling for ``--cache_mode``: every process samples only the images it holds in memory.

With ``--cache_mode`` the process with local rank ``r`` on a node caches the dataset indices ``i`` with
``i % local_size == r`` (``datasets.image_cache``). This sampler hands out each epoch's indices so that a process only
ever gets indices of that share: the share of local rank ``r`` is split among the ``num_nodes`` processes that have
local rank ``r`` (one per node), in turns, after the epoch's shuffle. Every index of the dataset goes to exactly
one process per epoch (as with ``torch.utils.data.DistributedSampler``, a share is padded by repeating its first
indices so that every process gets ``ceil(len(dataset) / world_size)``). Ranks are assumed laid out node by node:
``rank = node * local_size + local_rank``, as torchrun and SLURM number them.
"""
import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class NodeShardSampler(Sampler[int]):
    """Indices of ``dataset_size`` items for process ``rank`` of ``world_size`` (``local_size`` per node).

    ``shuffle``: a new order each epoch (call ``set_epoch``), the same on every process for a given ``seed`` and
    epoch; otherwise dataset order.
    """

    def __init__(self, dataset_size: int, rank: int, world_size: int, local_size: int, shuffle: bool = True,
                 seed: int = 0):
        if local_size < 1 or world_size % local_size:
            raise ValueError(f"--cache_mode needs the same number of processes on every node: {world_size} processes "
                             f"cannot be split into nodes of {local_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.dataset_size, self.shuffle, self.seed, self.epoch = dataset_size, shuffle, seed, 0
        self.local_size, self.num_nodes = local_size, world_size // local_size
        self.node, self.local_rank = divmod(rank, local_size)
        self.num_samples = math.ceil(dataset_size / world_size)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        share = [i for i in order if i % self.local_size == self.local_rank]
        wanted = self.num_samples * self.num_nodes
        if not share:
            return iter([])
        share = (share * math.ceil(wanted / len(share)))[:wanted]
        return iter(share[self.node::self.num_nodes])
