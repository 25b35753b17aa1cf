"""Parameter counts of the backbone attention blocks: the extra parameters of DETR-R50 with each block at its default
position and stages, and of one block on a C = 256 map.

Usage: python -m benchmarks.attention_params [--backbone resnet50] [--last_layer layer4] [--channels 256]

Prints the README's block-table column (markdown rows). Only the backbone is built (random weights, nothing
downloaded): the blocks' parameters do not depend on the rest of DETR.
"""
import argparse

import torch

from models.attention import ATTENTION, build_attention
from models.backbone import Backbone
from models.backbone_attention import make_plan


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_counts(name: str, backbone: str = "resnet50", last_layer: str = "layer4") -> dict:
    """Places, block count and total parameters of block ``name`` at its default position and stages."""
    plan = make_plan(name, None, None, int(last_layer[-1]))
    model = Backbone(backbone, 0, False, False, last_layer=last_layer, attention=plan)
    return {"position": plan.position, "stages": plan.stages, "blocks": len(model.attn.blocks),
            "params": count(model.attn)}


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--last_layer", default="layer4")
    parser.add_argument("--channels", type=int, default=256)
    args = parser.parse_args(argv)
    rows = [f"| block | position | stages | blocks | params ({args.backbone}) | params of one block at C = "
            f"{args.channels} |", "| --- | --- | --- | --- | --- | --- |"]
    for name in ATTENTION:
        found = backbone_counts(name, args.backbone, args.last_layer)
        stages = ", ".join(f"layer{s}" for s in found["stages"])
        rows.append(f"| `{name}` | {found['position']} | {stages} | {found['blocks']} | {found['params']:,} | "
                    f"{count(build_attention(name, args.channels)):,} |")
    print("\n".join(rows))
    return rows


if __name__ == "__main__":
    main()
