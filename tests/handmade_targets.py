"""Targets written by hand for the DETR-family tests: three images with 3, 0 and 2 objects."""
import torch


def handmade_targets() -> list[dict]:
    """Per image ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]`` (normalised cxcywh); the second has no objects."""
    return [{"labels": torch.tensor([1, 2, 0]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.1], [0.6, 0.5, 0.1, 0.2],
                                                                      [0.5, 0.7, 0.2, 0.2]])},
            {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
            {"labels": torch.tensor([2, 1]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.2], [0.7, 0.3, 0.2, 0.1]])}]
