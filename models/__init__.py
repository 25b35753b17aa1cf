"""The DETR model family: ``build_model(args)`` -> (model, criterion, postprocessors) for ``args.meta_arch``.

Each architecture is a package (models/detr/ ...) exposing an ``ARCHITECTURE`` (models/registry.py); adding one is
adding its package and a line below. Parts used by several architectures live in models/layers/ and the modules
beside this file (backbone, matcher, criterion, post-processing); no architecture imports another.
"""
import argparse

from torch import nn

from models import deformable_detr, detr, dfine, dino, rtdetrv2
from models.postprocess import with_category_ids
from models.registry import Architecture
from util.coco_categories import COCO_80_CATEGORY_IDS

ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch for arch in (detr.ARCHITECTURE, deformable_detr.ARCHITECTURE, dino.ARCHITECTURE,
                                 rtdetrv2.ARCHITECTURE, dfine.ARCHITECTURE)}

# the classifier sizes of the official checkpoints, for a model built without an annotation file at hand (the
# official builders: 91 for COCO, 250 for COCO panoptic, 20 otherwise)
OFFICIAL_NUM_CLASSES = {"coco": 91, "coco_panoptic": 250}


def official_num_classes(dataset_file: str) -> int:
    """The class count the official models use for ``dataset_file``."""
    return OFFICIAL_NUM_CLASSES.get(dataset_file, 20)


def architecture(name: str) -> Architecture:
    """The registered architecture ``name``; an unknown name is an error listing the known ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}: the registered ones are {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_model(args: argparse.Namespace, is_thing_map: dict[int, bool] | None = None
                ) -> tuple[nn.Module, nn.Module, dict]:
    """Model, criterion and post-processors (``bbox``; ``segm``/``panoptic`` with masks) for the parsed flags.

    ``num_classes`` None (no annotation file read) is the official count for ``dataset_file``. ``is_thing_map``
    (category id -> True for things) is the panoptic dataset's; without it the COCO panoptic rule. With
    ``--remap_mscoco_category`` (labels 0..K-1) the ``bbox`` post-processor gives category ids: the dataset's
    ``label_to_category_id`` (resolved by cli.resolve_args), or without one COCO's 80 ids for 80 classes.
    """
    resolved = {}
    if args.num_classes is None:
        resolved["num_classes"] = official_num_classes(args.dataset_file)
    num_classes = resolved.get("num_classes", args.num_classes)
    table = getattr(args, "label_to_category_id", None)
    if table is None and getattr(args, "remap_mscoco_category", False) and num_classes == len(COCO_80_CATEGORY_IDS):
        table = COCO_80_CATEGORY_IDS
    resolved["label_to_category_id"] = table
    args = argparse.Namespace(**{**vars(args), **resolved})
    model, criterion, postprocessors = architecture(getattr(args, "meta_arch", "detr")).build(args, is_thing_map)
    return model, criterion, with_category_ids(postprocessors, table)
