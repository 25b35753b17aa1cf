"""A dataset whose items say which epoch a DataLoader worker reads; in a module of its own, so that workers started
by spawning import only this (and torch), not a whole test module."""
import os

import torch.utils.data

from datasets.shared_epoch import SharedEpoch


class EpochReporter(torch.utils.data.Dataset):
    """Four items, each (the epoch the reading process sees, that process's id)."""

    def __init__(self, epoch: SharedEpoch):
        self.epoch = epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int, int]:
        return self.epoch.get(), os.getpid()
