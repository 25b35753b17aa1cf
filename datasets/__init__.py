"""Datasets: ``build_dataset(image_set, args)`` picks one by ``args.dataset_file``.

``coco`` (``datasets.coco``) and ``coco_panoptic`` read the COCO layouts; ``yolo`` (``datasets.yolo``) and ``voc``
(``datasets.voc``) read the Ultralytics and Pascal VOC layouts as COCO ground truth in memory and then go through
``datasets.coco``'s dataset class (``datasets.layouts``). ``tools.data.synthetic`` writes a small COCO-layout dataset
of shapes that every dataset builder here can read (``--panoptic`` adds the COCO panoptic files that
``coco_panoptic`` reads; ``--layout yolo|voc`` writes it in those layouts).
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

import torch.utils.data
from pycocotools.coco import COCO

DATASET_CHOICES = ("coco", "coco_panoptic", "yolo", "voc")


def get_coco_api_from_dataset(dataset) -> COCO:
    """The pycocotools ``COCO`` ground truth behind a dataset, looking through ``torch.utils.data.Subset`` wrappers."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    coco = getattr(dataset, "coco", None)
    if not isinstance(coco, COCO):
        raise TypeError(f"{type(dataset).__name__} has no pycocotools COCO ground truth (.coco); COCO evaluation "
                        f"needs a COCO-format dataset")
    return coco


def check_data_folder(args: argparse.Namespace) -> Path:
    """The dataset folder the flags name for ``args.dataset_file``, checked before anything is built: ``--coco_path``
    (or ``--data_path``) for coco, ``--coco_path`` for coco_panoptic, ``--data_path`` for yolo and voc; a missing
    flag is a ValueError naming it, a folder that is not there a FileNotFoundError."""
    if args.dataset_file in ("yolo", "voc"):
        from datasets.layouts import layout_folder
        from datasets.voc import EXPECTED as VOC_EXPECTED
        from datasets.yolo import EXPECTED as YOLO_EXPECTED
        return layout_folder(args, YOLO_EXPECTED if args.dataset_file == "yolo" else VOC_EXPECTED)
    from datasets.coco import coco_folder
    if args.dataset_file == "coco_panoptic" and not args.coco_path:
        raise ValueError("--coco_path is required: a folder with train2017/ and val2017/ (and --coco_panoptic_path "
                         "for the panoptic annotations)")
    return coco_folder(args)


def build_dataset(image_set: str, args, cache_share: tuple[int, int] = (0, 1)):
    """Dataset ``image_set`` ('train' or 'val') for ``args.dataset_file``; see each builder for the args it reads.
    ``cache_share``: this process's (local rank, processes per node), the share of images ``--cache_mode`` keeps."""
    if args.dataset_file == "coco":
        from datasets.coco import build as build_coco
        return build_coco(image_set, args, cache_share)
    if args.dataset_file == "coco_panoptic":
        from datasets.coco_panoptic import build as build_coco_panoptic
        return build_coco_panoptic(image_set, args, cache_share)
    if args.dataset_file == "yolo":
        from datasets.yolo import build as build_yolo
        return build_yolo(image_set, args, cache_share)
    if args.dataset_file == "voc":
        from datasets.voc import build as build_voc
        return build_voc(image_set, args, cache_share)
    raise ValueError(f"--dataset_file {args.dataset_file!r} is not supported; choices: {list(DATASET_CHOICES)}")


@dataclass
class RunData:
    """What a run reads: ``train`` (None when only evaluating) and ``val`` datasets, the COCO ground truth of the
    val images for box and mask AP, the class count the annotations imply, for panoptic data the category thing
    map and the val annotation file and PNG folder that PQ is computed against, and with
    ``--remap_mscoco_category`` the category id of each label (``label_to_category_id[label]``; None without the
    remap: labels are category ids). Call :meth:`set_epoch` before each training epoch."""

    train: torch.utils.data.Dataset | None
    val: torch.utils.data.Dataset
    coco_ground_truth: COCO
    num_classes: int
    is_thing_map: dict[int, bool] | None = None
    panoptic_ground_truth: tuple[Path, Path] | None = None
    label_to_category_id: list[int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Tell the training pipeline the epoch about to start (RT-DETR's: it stops its strong augmentation and
        multi-scale batches at ``--stop_epoch``); reaches the DataLoader workers, persistent ones included. Call it
        before iterating over the epoch's batches; a no-op for pipelines that do not depend on the epoch."""
        shared = getattr(self.train, "epoch", None)
        if shared is not None:
            shared.set(epoch)


def build_run_data(args: argparse.Namespace, with_train: bool, cache_share: tuple[int, int] = (0, 1)) -> RunData:
    """The datasets ``args`` describe (see each builder for the flags it reads); a split without images is an
    error naming its annotation file."""
    val = build_dataset("val", args, cache_share)
    train = build_dataset("train", args, cache_share) if with_train else None
    for split, dataset in (("val", val), ("train", train)):
        if dataset is not None and len(dataset) == 0:
            raise ValueError(f"the {split} set is empty: annotation file {dataset.ann_file} lists no image")
    num_classes = (val if train is None else train).num_classes()
    if args.dataset_file != "coco_panoptic":
        label_to_category_id = _same_label_table(train, val)
        return RunData(train, val, get_coco_api_from_dataset(val), num_classes,
                       label_to_category_id=label_to_category_id)
    # box and mask AP of panoptic data: against the COCO instances of the same images (things only)
    instances = build_dataset("val", argparse.Namespace(**{**vars(args), "dataset_file": "coco", "cache_mode": False}))
    return RunData(train, val, get_coco_api_from_dataset(instances), num_classes, val.is_thing_map(),
                   (val.ann_file, val.ann_folder))


def _same_label_table(train, val) -> list[int] | None:
    """The label -> category id table (``--remap_mscoco_category``) that ``train`` and ``val`` share, or None
    without the remap; tables that differ are an error naming both annotation files and the first differing id."""
    table = val.label_to_category_id
    if train is None or train.label_to_category_id == table:
        return table
    first = min(set(train.label_to_category_id) ^ set(table))  # both tables are sorted: their id sets differ
    only_in = train.ann_file if first in train.label_to_category_id else val.ann_file
    raise ValueError(f"annotation files {train.ann_file} and {val.ann_file} list different categories (category id "
                     f"{first} is only in {only_in}); --remap_mscoco_category numbers the categories 0..K-1 in id "
                     f"order, so both files must list the same ids")
