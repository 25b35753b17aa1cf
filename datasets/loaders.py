"""The training and validation DataLoaders of a run (single process or one shard per process)."""
import signal
from dataclasses import dataclass
from typing import Callable

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from datasets.aspect_ratio_sampler import AspectRatioBatchSampler
from datasets.bad_images import collate_skipping
from datasets.node_sampler import NodeShardSampler
from util.nested_tensor import NestedTensor, collate_fn


class PinnableNestedTensor(NestedTensor):
    """A NestedTensor that DataLoader's ``pin_memory`` can pin (it pins objects with a ``pin_memory`` method), so
    that the copy to the GPU can run asynchronously (``non_blocking=True``)."""

    def pin_memory(self) -> "PinnableNestedTensor":
        mask = self.mask.pin_memory() if self.mask is not None else None
        return PinnableNestedTensor(self.tensors.pin_memory(), mask)


class PinnableCollate:
    """``collate`` (a function returning ``(NestedTensor or None, targets, ...)``) whose batch samples can be pinned,
    then ``batch_transform`` (``samples, targets -> samples, targets``; None: none) on each batch that has images;
    a class, not a closure, so that DataLoader workers started by spawning can receive it."""

    def __init__(self, collate, batch_transform: Callable | None = None):
        self.collate = collate
        self.batch_transform = batch_transform

    def __call__(self, batch: list) -> tuple:
        samples, targets, *rest = self.collate(batch)
        if samples is not None and self.batch_transform is not None:
            samples, targets = self.batch_transform(samples, targets)
        if samples is not None:
            samples = PinnableNestedTensor(samples.tensors, samples.mask)
        return (samples, targets, *rest)


def batch_transform_of(dataset: Dataset) -> Callable | None:
    """The transform a dataset asks to apply to its collated batches (``batch_transform``, e.g. RT-DETR's
    multi-scale resize), looking through ``Subset`` wrappers; None when it has none."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "batch_transform", None)


def ignore_job_signals(worker_id: int) -> None:
    """DataLoader workers leave SLURM's requeue signal (SIGUSR2) and Ctrl-C (SIGINT, which a terminal sends to every
    process of the run) to the main process, which decides when to stop. SIGTERM keeps its default: it is how
    DataLoader and multiprocessing end their workers."""
    for signum in (signal.SIGUSR2, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


@dataclass
class Loaders:
    """``train`` (None when only evaluating) with its sampler (``set_epoch`` it when distributed), and ``val``."""

    train: DataLoader | None
    train_sampler: RandomSampler | DistributedSampler | NodeShardSampler | None
    val: DataLoader


def build_loaders(dataset_train: Dataset | None, dataset_val: Dataset, batch_size: int, num_workers: int,
                  distributed: bool, world_size: int = 1, *, skip_bad_images: bool = False,
                  node_shards: tuple[int, int] | None = None, pin_memory: bool = False,
                  persistent_workers: bool = False, aspect_ratio_grouping: bool = False) -> Loaders:
    """Shuffled training batches (full batches only) and sequential validation batches of ``batch_size`` images.

    ``skip_bad_images``: batches leave out the items the dataset could not read (``datasets.bad_images``).
    ``node_shards``: (rank, processes per node) for ``--cache_mode`` in distributed training: each process samples
    only the images it caches (``datasets.node_sampler``).
    ``pin_memory``: batches in page-locked memory (for asynchronous copies to a GPU).
    ``persistent_workers``: the validation loader keeps its workers between evaluations. (The training loader
    starts its workers each epoch, as before: persistent ones would carry their random state from epoch to epoch,
    and a resumed run would then augment differently from the uninterrupted one.)
    ``aspect_ratio_grouping``: training batches of one orientation (``datasets.aspect_ratio_sampler``); every image
    of the epoch is then used, the last batch possibly smaller.
    Training batches go through the training dataset's ``batch_transform`` when it has one (RT-DETR's multi-scale
    batches; :func:`batch_transform_of`).
    """
    collate = PinnableCollate(collate_skipping if skip_bad_images else collate_fn)
    if distributed and node_shards is not None:
        rank, local_size = node_shards
        sampler_val = NodeShardSampler(len(dataset_val), rank, world_size, local_size, shuffle=False)
    else:
        sampler_val = DistributedSampler(dataset_val, shuffle=False) if distributed else SequentialSampler(dataset_val)
    loader_val = DataLoader(dataset_val, batch_size, sampler=sampler_val, drop_last=False, collate_fn=collate,
                            num_workers=num_workers, worker_init_fn=ignore_job_signals, pin_memory=pin_memory,
                            persistent_workers=persistent_workers and num_workers > 0)
    if dataset_train is None:
        return Loaders(None, None, loader_val)
    if distributed and node_shards is not None:
        sampler_train = NodeShardSampler(len(dataset_train), node_shards[0], world_size, node_shards[1])
    else:
        sampler_train = DistributedSampler(dataset_train) if distributed else RandomSampler(dataset_train)
    if aspect_ratio_grouping:
        batch_sampler_train = AspectRatioBatchSampler.for_dataset(sampler_train, dataset_train, batch_size)
    else:
        batch_sampler_train = BatchSampler(sampler_train, batch_size, drop_last=True)
    if len(batch_sampler_train) == 0:
        raise ValueError(f"--batch_size {batch_size} is larger than the training set per process "
                         f"({len(dataset_train)} images / {world_size} processes)")
    collate_train = PinnableCollate(collate.collate, batch_transform_of(dataset_train))
    loader_train = DataLoader(dataset_train, batch_sampler=batch_sampler_train, collate_fn=collate_train,
                              num_workers=num_workers, worker_init_fn=ignore_job_signals, pin_memory=pin_memory)
    return Loaders(loader_train, sampler_train, loader_val)
