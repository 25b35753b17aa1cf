"""Flags choosing the architecture and its classes."""
import argparse

from models import architecture


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--meta_arch", default="detr", help="architecture of the model family (see models/)")
    group.add_argument("--num_classes", type=int, default=None,
                       help="largest class id + 1 (default: from the training annotation file; without one, the "
                            "official count: 91 for coco, 250 for coco_panoptic)")


def check(args: argparse.Namespace) -> None:
    try:
        architecture(args.meta_arch)
    except ValueError as exc:
        raise ValueError(f"--meta_arch: {exc}") from None
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num_classes must be a positive integer, got {args.num_classes}")
