"""Flags placing attention blocks (models/attention) in the backbone."""
import argparse

from models.attention import ATTENTION


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone attention blocks")
    group.add_argument("--backbone_attn", default="none",
                       help=f"attention block added to the backbone: none, {', '.join(ATTENTION)}")
    group.add_argument("--attn_stages", default=None, type=int, nargs="+",
                       help="ResNet stages (1-4 = layer1-layer4) that get blocks (default: 2..last for blocks "
                            "inside residual blocks, the last stage for stage-output blocks)")
    group.add_argument("--attn_position", default=None, choices=("block", "stage"),
                       help="inside every residual block, or once on each stage's output (default: the block's)")
    group.add_argument("--lr_attn", default=1e-4, type=float,
                       help="learning rate of the backbone attention blocks (1e-4: see benchmarks/RESULTS.md)")


def check(args: argparse.Namespace) -> None:
    if args.backbone_attn not in ("none", "", None) and args.backbone_attn not in ATTENTION:
        raise ValueError(f"--backbone_attn must be one of {sorted(ATTENTION)} or none, got {args.backbone_attn!r}")
