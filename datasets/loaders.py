"""The training and validation DataLoaders of a run (single process or one shard per process)."""
import signal
from dataclasses import dataclass

from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from util.nested_tensor import collate_fn


def ignore_job_signals(worker_id: int) -> None:
    """DataLoader workers leave SLURM's requeue signal (SIGUSR2) to the main process's handler."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclass
class Loaders:
    """``train`` (None when only evaluating) with its sampler (``set_epoch`` it when distributed), and ``val``."""

    train: DataLoader | None
    train_sampler: RandomSampler | DistributedSampler | None
    val: DataLoader


def build_loaders(dataset_train: Dataset | None, dataset_val: Dataset, batch_size: int, num_workers: int,
                  distributed: bool, world_size: int = 1) -> Loaders:
    """Shuffled training batches (full batches only) and sequential validation batches of ``batch_size`` images."""
    sampler_val = DistributedSampler(dataset_val, shuffle=False) if distributed else SequentialSampler(dataset_val)
    loader_val = DataLoader(dataset_val, batch_size, sampler=sampler_val, drop_last=False, collate_fn=collate_fn,
                            num_workers=num_workers, worker_init_fn=ignore_job_signals)
    if dataset_train is None:
        return Loaders(None, None, loader_val)
    sampler_train = DistributedSampler(dataset_train) if distributed else RandomSampler(dataset_train)
    batch_sampler_train = BatchSampler(sampler_train, batch_size, drop_last=True)
    if len(batch_sampler_train) == 0:
        raise ValueError(f"--batch_size {batch_size} is larger than the training set per process "
                         f"({len(dataset_train)} images / {world_size} processes)")
    loader_train = DataLoader(dataset_train, batch_sampler=batch_sampler_train, collate_fn=collate_fn,
                              num_workers=num_workers, worker_init_fn=ignore_job_signals)
    return Loaders(loader_train, sampler_train, loader_val)
