"""Flags of the convolutional backbone and its positional encoding."""
import argparse

from models.backbone import RESNETS, wants_imagenet_weights


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", default="resnet50", type=str, help="resnet18, resnet34, resnet50 or resnet101")
    group.add_argument("--dilation", action="store_true",
                       help="replace stride with dilation in the last convolutional block (DC5)")
    group.add_argument("--position_embedding", default="sine", type=str, choices=("sine", "learned"),
                       help="type of positional embedding to use on top of the image features")
    group.add_argument("--no_pretrained_backbone", dest="pretrained_backbone", action="store_false",
                       help="start the backbone from random weights instead of torchvision's ImageNet weights")
    group.add_argument("--backbone_norm", default="frozen_bn", choices=("frozen_bn", "bn", "gn"),
                       help="frozen BatchNorm (DETR), trainable BatchNorm or GroupNorm with 32 groups (the last two "
                            "for a backbone trained from scratch)")
    group.add_argument("--backbone_trainable_layers", default=3, type=int, choices=range(6),
                       help="how many ResNet stages, counted from --feature_layer down to the stem, are trained")
    group.add_argument("--feature_layer", default="layer4", choices=("layer2", "layer3", "layer4"),
                       help="last backbone stage: layer4 (stride 32, DETR), layer3 (stride 16) or layer2 (stride 8); "
                            "the stages after it are not computed")


def check(args: argparse.Namespace) -> None:
    if args.backbone not in RESNETS:
        raise ValueError(f"--backbone must be one of {RESNETS}, got {args.backbone!r}")
    if args.dilation and args.feature_layer != "layer4":
        raise ValueError(f"--dilation dilates layer4, which --feature_layer {args.feature_layer} does not compute")
    if args.dilation and args.backbone in ("resnet18", "resnet34"):
        raise ValueError(f"--dilation needs a bottleneck ResNet (resnet50/101); {args.backbone} has basic blocks")
    if args.backbone_norm == "gn" and wants_imagenet_weights(args):
        raise ValueError("--backbone_norm gn has no ImageNet weights (torchvision's ResNets are trained with "
                         "BatchNorm): add --no_pretrained_backbone")
    stages = 1 + int(args.feature_layer[-1])  # the stem and layer1..feature_layer
    if args.backbone_trainable_layers > stages:
        raise ValueError(f"--backbone_trainable_layers must be in 0..{stages} with --feature_layer "
                         f"{args.feature_layer}, got {args.backbone_trainable_layers}")
