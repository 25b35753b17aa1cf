"""--aspect_ratio_grouping: batches of one orientation, every image once per epoch, through build_loaders too."""
import json

import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

import cli
from datasets import build_dataset
from datasets.aspect_ratio_sampler import AspectRatioBatchSampler, image_sizes
from datasets.loaders import build_loaders
from tools.data.synthetic import generate


def _check_epoch(batches: list[list[int]], wide: list[bool], indices: list[int], batch_size: int) -> None:
    assert sorted(i for b in batches for i in b) == sorted(indices)  # each image exactly once
    assert all(len(b) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch_size
    mixed = [b for b in batches if len({wide[i] for i in b}) > 1]
    # only the leftovers of the two buckets (fewer than a batch each) may end up together, in the last two batches
    assert all(b in batches[-2:] for b in mixed)
    assert sum(len(b) for b in batches if b in batches[-2:]) < 3 * batch_size


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_batches_hold_one_orientation_and_cover_every_image_once(batch_size):
    generator = torch.Generator().manual_seed(0)
    wide = (torch.rand(50, generator=generator) < 0.65).tolist()
    for epoch in range(3):
        sampler = RandomSampler(range(50), generator=torch.Generator().manual_seed(epoch))
        batch_sampler = AspectRatioBatchSampler(sampler, wide, batch_size)
        batches = list(batch_sampler)
        assert len(batches) == len(batch_sampler) == -(-50 // batch_size)
        _check_epoch(batches, wide, list(range(50)), batch_size)
        if batch_size > 1:
            assert sum(len({wide[i] for i in b}) == 1 for b in batches) >= len(batches) - 2


def test_distributed_shards_group_within_their_own_images():
    wide = [i % 3 == 0 for i in range(30)]
    for rank in range(2):
        sampler = DistributedSampler(range(30), num_replicas=2, rank=rank, shuffle=True, seed=0)
        shard = list(sampler)
        _check_epoch(list(AspectRatioBatchSampler(sampler, wide, 4)), wide, shard, 4)


@pytest.fixture(scope="module")
def mixed_orientation_coco(tmp_path_factory):
    """A synthetic dataset whose annotation file says half the training images are portrait (sizes are read from
    the annotations, the pixels are not needed for the sampler)."""
    root = generate(tmp_path_factory.mktemp("orient"), num_train=10, num_val=2, image_size=64, seed=0)
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    for i, image in enumerate(sorted(data["images"], key=lambda im: im["id"])):
        image["height"], image["width"] = (64, 96) if i % 2 else (96, 64)
    ann_file.write_text(json.dumps(data))
    return root


def test_build_loaders_groups_the_training_batches(mixed_orientation_coco):
    args = cli.get_args_parser().parse_args(["--coco_path", str(mixed_orientation_coco), "--image_size", "64"])
    train, val = build_dataset("train", args), build_dataset("val", args)
    sizes = image_sizes(train)
    assert sorted(set(sizes)) == [(64, 96), (96, 64)]
    loaders = build_loaders(train, val, 2, 0, distributed=False, aspect_ratio_grouping=True)
    assert isinstance(loaders.train.batch_sampler, AspectRatioBatchSampler)
    batches = list(loaders.train.batch_sampler)
    _check_epoch(batches, [w > h for h, w in sizes], list(range(10)), 2)
    plain = build_loaders(train, val, 2, 0, distributed=False)
    assert not isinstance(plain.train.batch_sampler, AspectRatioBatchSampler)
    with pytest.raises(ValueError, match="--aspect_ratio_grouping"):
        AspectRatioBatchSampler.for_dataset(SequentialSampler(range(3)), [1, 2, 3], 2)
