"""``--aspect_ratio_grouping``: training batches of images of one orientation, as detectron2's
AspectRatioGroupedDataset forms them, so that a batch pads less.

A batch is padded to its largest height and its largest width; a landscape and a portrait image together pad both
to a square-ish canvas. The sampler draws images in the order of the underlying sampler (random, or a process's
shard) and puts each into the bucket of its orientation (width > height, or not); a bucket that reaches the batch
size becomes a batch. The images left in the two buckets at the end of the epoch form the last batches (mixed, the
very last one possibly smaller), so every image of the epoch is used exactly once. Orientations come from the
annotation file's width and height; the training transforms mostly keep them (the random crop of the multi-scale
branch can turn a wide image tall).
"""
import math
from collections.abc import Iterator, Sequence

from torch.utils.data import Dataset, Sampler


def image_sizes(dataset: Dataset) -> list[tuple[int, int]]:
    """(height, width) of every item of a COCO or COCO panoptic dataset, as its annotation file records them."""
    if hasattr(dataset, "get_height_and_width"):
        return [dataset.get_height_and_width(i) for i in range(len(dataset))]
    coco, ids = getattr(dataset, "coco", None), getattr(dataset, "ids", None)
    if coco is None or ids is None:
        raise ValueError(f"--aspect_ratio_grouping needs each image's size from the annotations; a "
                         f"{type(dataset).__name__} has neither get_height_and_width nor coco.imgs")
    return [(coco.imgs[i]["height"], coco.imgs[i]["width"]) for i in ids]


class AspectRatioBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices from ``sampler``, each of one orientation (``wide[i]``: image i is wider
    than tall), then the leftovers; ``len`` is ceil(len(sampler) / batch_size)."""

    def __init__(self, sampler: Sampler[int], wide: Sequence[bool], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {batch_size}")
        self.sampler, self.wide, self.batch_size = sampler, list(wide), batch_size

    @classmethod
    def for_dataset(cls, sampler: Sampler[int], dataset: Dataset, batch_size: int) -> "AspectRatioBatchSampler":
        return cls(sampler, [w > h for h, w in image_sizes(dataset)], batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[bool, list[int]] = {True: [], False: []}
        for index in self.sampler:
            bucket = buckets[self.wide[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()
        rest = buckets[True] + buckets[False]
        for start in range(0, len(rest), self.batch_size):
            yield rest[start:start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)
