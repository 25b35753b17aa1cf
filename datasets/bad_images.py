"""``--skip_bad_images``: an image that cannot be used (unreadable, truncated, corrupt, or not the size its
annotation file says) is left out of its batch, counted, and reported at the end of the epoch, instead of ending
the run.

A dataset item that failed is a :class:`SkippedImage`. It travels with its batch from the DataLoader worker that
read it to the main process, where it is counted (a count kept inside a worker process would be lost with it);
:func:`collate_skipping` takes such items out of the batch and passes them on. A batch can lose every image: the
loops then skip that step on every process (see :meth:`SkippedImages.lost_batch`), since in distributed training
one process cannot skip a step alone.
"""
from dataclasses import dataclass

import torch

from util.distributed import all_gather, any_process, get_world_size, is_main_process
from util.nested_tensor import NestedTensor, collate_fn


@dataclass(frozen=True)
class SkippedImage:
    """In place of a dataset item: the image id and the one-line error that left it out."""

    image_id: int
    reason: str


def collate_skipping(batch: list) -> tuple[NestedTensor | None, tuple, list[SkippedImage]]:
    """As ``util.nested_tensor.collate_fn``, leaving out the SkippedImage items: (samples, targets, skipped);
    samples is None and targets empty when every item was skipped."""
    skipped = [item for item in batch if isinstance(item, SkippedImage)]
    kept = [item for item in batch if not isinstance(item, SkippedImage)]
    if not kept:
        return None, (), skipped
    samples, targets = collate_fn(kept)
    return samples, targets, skipped


def split_batch(batch: tuple) -> tuple[NestedTensor | None, tuple, list[SkippedImage]]:
    """(samples, targets, skipped) from a batch of ``collate_fn`` (nothing skipped) or of ``collate_skipping``."""
    return batch if len(batch) == 3 else (batch[0], batch[1], [])


class SkippedImages:
    """The images that one pass over a DataLoader left out, counted on every process of the run.

    ``device``: where this process's collectives run (its model's device).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seen: list[SkippedImage] = []

    def add(self, skipped: list[SkippedImage]) -> None:
        """Count the items a batch left out, each with one warning line."""
        for item in skipped:
            print(f"warning: skipped {item.reason} (--skip_bad_images)", flush=True)
        self.seen.extend(skipped)

    def lost_batch(self, empty_here: bool) -> bool:
        """Whether this step's batch lost every image on any process (then every process skips the step)."""
        return any_process(empty_here, self.device)

    def report(self, what: str) -> int:
        """Print one line on the main process with how many images ``what`` (e.g. 'epoch 3') skipped on all
        processes, start counting again, and return that number."""
        everyone = [item for part in all_gather(self.seen) for item in part] if get_world_size() > 1 else self.seen
        self.seen = []
        ids = sorted({item.image_id for item in everyone})
        if ids and is_main_process():
            shown = ", ".join(str(i) for i in ids[:20]) + (" ..." if len(ids) > 20 else "")
            print(f"warning: {what} skipped {len(ids)} image(s) that could not be used (--skip_bad_images): image "
                  f"ids {shown}", flush=True)
        return len(ids)
