"""Flags of the matcher and the loss weights."""
import argparse


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loss and matching")
    group.add_argument("--no_aux_loss", dest="aux_loss", action="store_false",
                       help="disables auxiliary decoding losses (loss at each layer)")
    group.add_argument("--set_cost_class", default=1, type=float, help="class coefficient in the matching cost")
    group.add_argument("--set_cost_bbox", default=5, type=float, help="L1 box coefficient in the matching cost")
    group.add_argument("--set_cost_giou", default=2, type=float, help="giou box coefficient in the matching cost")
    group.add_argument("--bbox_loss_coef", default=5, type=float)
    group.add_argument("--giou_loss_coef", default=2, type=float)
    group.add_argument("--cls_loss_coef", default=2, type=float,
                       help="weight of the sigmoid focal classification loss (Deformable DETR, DINO)")
    group.add_argument("--focal_alpha", default=0.25, type=float,
                       help="focal loss weight of positives, also in the matching cost (Deformable DETR, DINO)")


def check(args: argparse.Namespace) -> None:
    if args.set_cost_class == 0 and args.set_cost_bbox == 0 and args.set_cost_giou == 0:
        raise ValueError("--set_cost_class, --set_cost_bbox and --set_cost_giou are all 0: nothing to match on")
