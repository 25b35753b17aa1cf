"""Flags of the dataset, its augmentation and loading."""
import argparse

from datasets import DATASET_CHOICES


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset_file", default="coco", help=f"dataset format: {', '.join(DATASET_CHOICES)}")
    group.add_argument("--coco_path", type=str, help="folder with train2017/, val2017/ and annotations/")
    group.add_argument("--coco_panoptic_path", type=str,
                       help="folder with annotations/panoptic_{train,val}2017.json and the panoptic PNG folders")
    group.add_argument("--remove_difficult", action="store_true",
                       help="leave annotations marked 'difficult' (VOC-style datasets) out of training and out of "
                            "evaluation (neither found nor missed, as VOC's evaluation)")
    group.add_argument("--image_size", default=800, type=int,
                       help="validation shorter side in pixels; DETR's training scales and crops scale with it")
    group.add_argument("--no_multiscale", dest="multiscale", action="store_false",
                       help="train at --image_size with flips only (no multi-scale resize, no random crop)")
    group.add_argument("--num_workers", default=2, type=int)
    group.add_argument("--aspect_ratio_grouping", action="store_true",
                       help="batch training images of the same orientation (wider than tall, or not) together, as "
                            "detectron2 does: less padding per batch")
    group.add_argument("--cache_mode", action="store_true",
                       help="cache images in memory: each process keeps the encoded bytes of its share of a node's "
                            "images and samples only those (Deformable DETR's flag)")
    group.add_argument("--skip_bad_images", action="store_true",
                       help="leave out images that cannot be read or are not the size their annotation file says "
                            "(one warning each, a count at the end of each epoch) instead of stopping")
    group.add_argument("--strict_annotations", action="store_true",
                       help="make annotations with an invalid box (not finite, empty, outside the image) an error "
                            "instead of leaving them out of training and evaluation with a warning")


def check(args: argparse.Namespace) -> None:
    if args.dataset_file not in DATASET_CHOICES:
        raise ValueError(f"--dataset_file must be one of {list(DATASET_CHOICES)}, got {args.dataset_file!r}")
    if args.num_workers < 0:
        raise ValueError(f"--num_workers must be 0 or more, got {args.num_workers}")
    if args.image_size < 1:
        raise ValueError(f"--image_size must be at least 1, got {args.image_size}")
