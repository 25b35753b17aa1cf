"""--cache_mode: image bytes kept in memory (each file read once), items unchanged, and the node-aware sampler that
gives every process only the images it caches."""
import builtins
import math
import random
import socket
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from datasets.coco import build
from datasets.image_cache import ImageBytesCache
from datasets.loaders import build_loaders
from datasets.node_sampler import NodeShardSampler
from util.distributed import local_rank_and_size

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
REAL_CONNECT = socket.socket.connect
REAL_OPEN = builtins.open


def _args(root, **kw) -> SimpleNamespace:
    base = dict(dataset_file="coco", coco_path=str(root), masks=True, image_size=64, multiscale=True,
                num_classes=None, strict_annotations=False, skip_bad_images=False, cache_mode=False)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def counted_opens(monkeypatch, tiny_coco):
    """Counts the opens of image files of ``tiny_coco``; ``refuse()`` makes any further open of one fail."""
    counts, state = Counter(), {"refuse": False}

    def counting_open(file, *args, **kwargs):
        if str(file).startswith(str(tiny_coco)) and str(file).endswith(".jpg"):
            if state["refuse"]:
                raise AssertionError(f"{file} read again")
            counts[str(file)] += 1
        return REAL_OPEN(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return SimpleNamespace(counts=counts, refuse=lambda: state.update(refuse=True))


def test_items_are_the_same_with_and_without_the_cache(tiny_coco):
    plain, cached = (build("train", _args(tiny_coco, cache_mode=mode)) for mode in (False, True))
    assert cached.cache is not None and len(cached.cache) == len(cached) == 24
    for index in (0, 5, 23):
        items = []
        for dataset in (plain, cached):
            random.seed(index)  # the training transforms draw from python's and torch's generators
            torch.manual_seed(index)
            items.append(dataset[index])
        (image_a, target_a), (image_b, target_b) = items
        assert torch.equal(image_a, image_b)
        assert target_a.keys() == target_b.keys()
        assert all(torch.equal(target_a[k], target_b[k]) for k in target_a)


def test_each_file_is_read_once(tiny_coco, counted_opens, monkeypatch):
    dataset = build("train", _args(tiny_coco, cache_mode=True, masks=False))
    assert len(counted_opens.counts) == 24 and set(counted_opens.counts.values()) == {1}
    counted_opens.refuse()  # from now on, reading an image file again fails the test

    def connect(sock, address):  # DataLoader workers pass tensors over Unix sockets; still no network
        if sock.family != socket.AF_UNIX:
            raise RuntimeError("tests must not use the network")
        return REAL_CONNECT(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    loader = build_loaders(dataset, dataset, batch_size=4, num_workers=2, distributed=False).train
    for _ in range(2):  # two epochs, in worker processes forked from this one
        assert sum(len(targets) for _, targets in loader) == 24
    without_cache = build("train", _args(tiny_coco, cache_mode=False, masks=False))
    with pytest.raises(AssertionError, match="read again"):
        without_cache[0]


def test_a_process_caches_its_share_of_the_node(tiny_coco):
    dataset = build("val", _args(tiny_coco, cache_mode=True), cache_share=(1, 3))  # local rank 1 of 3
    paths = [dataset._path(i) for i in dataset.ids]
    assert [p in dataset.cache for p in paths] == [i % 3 == 1 for i in range(len(paths))]
    assert dataset.cache.nbytes() == sum(paths[i].stat().st_size for i in range(1, len(paths), 3))
    dataset[0]  # outside the share: read on first use, and kept
    assert paths[0] in dataset.cache
    with pytest.raises(ValueError, match="local_rank"):
        ImageBytesCache(paths, 3, 3)


@pytest.mark.parametrize("size, local_size, nodes", [(23, 2, 2), (17, 4, 1), (10, 1, 3), (31, 3, 2), (8, 2, 4)])
def test_node_sampler_partitions_each_epoch(size, local_size, nodes):
    world = local_size * nodes
    per_process = math.ceil(size / world)
    for epoch in (0, 1):
        drawn = {}
        for rank in range(world):
            sampler = NodeShardSampler(size, rank, world, local_size)
            sampler.set_epoch(epoch)
            drawn[rank] = list(sampler)
            assert len(drawn[rank]) == len(sampler) == per_process
            local_rank = rank % local_size  # ranks are laid out node by node
            assert all(i % local_size == local_rank for i in drawn[rank]), "an index this process does not cache"
        counts = Counter(i for indices in drawn.values() for i in indices)
        assert set(counts) == set(range(size))  # every image, every epoch
        assert sum(counts.values()) - size == world * per_process - size  # repeats only to even out the shares
        if epoch == 0:
            first = drawn
    assert first != drawn, "a new order each epoch"
    again = NodeShardSampler(size, world - 1, world, local_size)
    again.set_epoch(1)
    assert list(again) == drawn[world - 1]  # the same order for the same epoch


def test_node_sampler_without_shuffle_and_its_checks():
    sampler = NodeShardSampler(10, rank=3, world_size=4, local_size=2, shuffle=False)  # node 1, local rank 1
    # local rank 1 caches the odd indices 1 3 5 7 9, padded to 3 per process x 2 nodes: 1 3 5 7 9 1; node 1 takes
    # every second one from its turn on
    assert list(sampler) == [3, 7, 1]
    assert list(NodeShardSampler(10, 1, 4, 2, shuffle=False)) == [1, 5, 9]
    with pytest.raises(ValueError, match="same number of processes on every node"):
        NodeShardSampler(10, 0, 6, 4)


def test_loaders_use_the_node_sampler_with_cache_mode(tiny_coco):
    dataset = build("val", _args(tiny_coco, masks=False))
    loaders = build_loaders(dataset, dataset, 2, 0, distributed=True, world_size=4, node_shards=(2, 2))
    assert isinstance(loaders.train_sampler, NodeShardSampler) and isinstance(loaders.val.sampler, NodeShardSampler)
    assert (loaders.train_sampler.node, loaders.train_sampler.local_rank) == (1, 0)
    assert list(loaders.val.sampler) == [2, 6]  # 8 images: local rank 0 caches 0 2 4 6, node 1 takes every 2nd from 2


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)),
    ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, (1, 4)),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "2(x2)",
      "SLURM_JOB_NODELIST": "n[1-2]", "MASTER_ADDR": "n1", "MASTER_PORT": "1"}, (1, 2)),
])
def test_local_rank_and_size_from_the_launcher(monkeypatch, env, expected):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_JOB_NODELIST",
                 "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert local_rank_and_size() == expected
