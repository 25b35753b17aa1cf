"""Flags choosing the architecture and what it predicts."""
import argparse


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--meta_arch", default="detr", help="architecture of the model family (see models/)")
    group.add_argument("--num_classes", type=int, default=None,
                       help="largest class id + 1 (default: from the training annotation file; without one, the "
                            "official count: 91 for coco, 250 for coco_panoptic)")
    group.add_argument("--frozen_weights", type=str, default=None,
                       help="Path to the pretrained model. If set, only the mask head will be trained")
    group.add_argument("--masks", action="store_true", help="train the segmentation head if the flag is provided")


def check(args: argparse.Namespace) -> None:
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num_classes must be a positive integer, got {args.num_classes}")
    if args.frozen_weights and not args.masks:
        raise ValueError("--frozen_weights is only for training the segmentation head: add --masks")
