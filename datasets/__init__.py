"""Datasets: ``build_dataset(image_set, args)`` picks one by ``args.dataset_file``.

``datasets.synthetic`` writes a small COCO-layout dataset of shapes that every dataset builder here can read
(``--panoptic`` adds the COCO panoptic files that ``coco_panoptic`` reads).
"""
import torch.utils.data
from pycocotools.coco import COCO

DATASET_CHOICES = ("coco", "coco_panoptic")


def get_coco_api_from_dataset(dataset) -> COCO:
    """The pycocotools ``COCO`` ground truth behind a dataset, looking through ``torch.utils.data.Subset`` wrappers."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    coco = getattr(dataset, "coco", None)
    if not isinstance(coco, COCO):
        raise TypeError(f"{type(dataset).__name__} has no pycocotools COCO ground truth (.coco); COCO evaluation "
                        f"needs a COCO-format dataset")
    return coco


def build_dataset(image_set: str, args):
    """Dataset ``image_set`` ('train' or 'val') for ``args.dataset_file``; see each builder for the args it reads."""
    if args.dataset_file == "coco":
        from datasets.coco import build as build_coco
        return build_coco(image_set, args)
    if args.dataset_file == "coco_panoptic":
        from datasets.coco_panoptic import build as build_coco_panoptic
        return build_coco_panoptic(image_set, args)
    raise ValueError(f"--dataset_file {args.dataset_file!r} is not supported; choices: {list(DATASET_CHOICES)}")
