"""Flags placing attention blocks (models/attention) in the backbone."""
import argparse

from models.attention import ATTENTION
from models.backbone_attention import PlanError, make_plan


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone attention blocks")
    group.add_argument("--backbone_attn", default="none",
                       help=f"attention block added to the backbone: none, {', '.join(ATTENTION)}")
    group.add_argument("--attn_stages", default=None, type=int, nargs="+",
                       help="ResNet stages (1-4 = layer1-layer4) that get blocks (default: the block's; 2..last "
                            "inside residual blocks and the last stage on stage outputs, except aa: the last, "
                            "sasa: the last two, ran: every stage before the last)")
    group.add_argument("--attn_position", default=None, choices=("block", "stage"),
                       help="inside every residual block (aa, sasa: on its 3x3 convolution), or once on each "
                            "stage's output (default: the block's)")
    group.add_argument("--lr_attn", default=1e-4, type=float,
                       help="learning rate of the backbone attention blocks (1e-4: see benchmarks/RESULTS.md)")


PLAN_FLAGS = {"name": "--backbone_attn", "position": "--attn_position", "stages": "--attn_stages"}


def check(args: argparse.Namespace) -> None:
    """The block, stages and position must fit together and the backbone (errors name the flag)."""
    try:
        make_plan(args.backbone_attn, args.attn_stages, args.attn_position, int(args.feature_layer[-1]))
    except PlanError as exc:
        raise ValueError(f"{PLAN_FLAGS[exc.argument]}: {exc}") from None
