"""DETR from parsed flags: the model, its criterion and post-processors, its own flags and parameter groups."""
import argparse

import torch
from torch import nn

from models.backbone import build_backbone
from models.criterion import SetCriterion
from models.detr.detr import DETR
from models.detr.segmentation import (
    GROUP_NORM_GROUPS,
    DETRsegm,
    PostProcessPanoptic,
    PostProcessSegm,
    coco_panoptic_is_thing_map,
    mask_head_widths,
)
from models.detr.transformer import build_transformer
from models.matcher import build_matcher
from models.param_groups import build_param_groups
from models.postprocess import PostProcess

# the optional shared topics (cli/) it reads, and the flags in them it does not (the sigmoid classifiers' focal loss);
# changed from their defaults, those are errors (cli.check_args)
TOPICS = ("backbone", "attention", "transformer", "loss")
UNUSED_SHARED_FLAGS = ("cls_loss_coef", "focal_alpha")


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DETR (--meta_arch detr)")
    group.add_argument("--eos_coef", default=0.1, type=float,
                       help="relative classification weight of the no-object class")
    group.add_argument("--query_groups", default=1, type=int,
                       help="train with this many one-to-one matched query groups (Group DETR); 1 = DETR")
    group.add_argument("--masks", action="store_true", help="train the segmentation head if the flag is provided")
    group.add_argument("--frozen_weights", type=str, default=None,
                       help="Path to the pretrained model. If set, only the mask head will be trained")
    group.add_argument("--mask_loss_coef", default=1, type=float)
    group.add_argument("--dice_loss_coef", default=1, type=float)


def check_flags(args: argparse.Namespace) -> None:
    if args.query_groups < 1:
        raise ValueError(f"--query_groups must be at least 1, got {args.query_groups}")
    if args.frozen_weights and not args.masks:
        raise ValueError("--frozen_weights is only for training the segmentation head: add --masks")
    if args.masks:
        levels = int(args.feature_layer[-1]) - 1  # FPN inputs: the stages below the last one
        if levels < 2:
            raise ValueError(f"--masks: the mask head upsamples through two or three backbone stages below the last "
                             f"one; --feature_layer {args.feature_layer} leaves {levels}: use layer3 or layer4")
        widths = mask_head_widths(args.hidden_dim + args.nheads, args.hidden_dim, levels)
        if any(c % GROUP_NORM_GROUPS for c in widths):
            raise ValueError(f"--masks: the mask head's GroupNorm needs widths divisible by {GROUP_NORM_GROUPS}: "
                             f"--hidden_dim {args.hidden_dim} with --nheads {args.nheads} gives {widths}; use a "
                             f"--hidden_dim divisible by {GROUP_NORM_GROUPS * 2 ** (levels + 1)} and --nheads "
                             f"divisible by {GROUP_NORM_GROUPS}")


def build(args: argparse.Namespace, is_thing_map: dict[int, bool] | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """DETR, its criterion and post-processors."""
    num_classes = args.num_classes
    backbone = build_backbone(args)  # before the transformer: the order of random initialisation is the official one
    transformer = build_transformer(args)
    model = DETR(backbone, transformer, num_classes=num_classes, num_queries=args.num_queries,
                 aux_loss=args.aux_loss, query_groups=args.query_groups)
    if args.masks:
        model = DETRsegm(model, freeze_detr=bool(args.frozen_weights))
    weight_dict = {"loss_ce": 1, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    if args.masks:
        weight_dict.update({"loss_mask": args.mask_loss_coef, "loss_dice": args.dice_loss_coef})
    if args.aux_loss:
        aux_weight_dict = {}
        for i in range(args.dec_layers - 1):
            aux_weight_dict.update({f"{k}_{i}": v for k, v in weight_dict.items()})
        weight_dict.update(aux_weight_dict)
    query_groups = model.detr.query_groups if args.masks else model.query_groups
    criterion = SetCriterion(num_classes, matcher=build_matcher(args), weight_dict=weight_dict,
                             eos_coef=args.eos_coef,
                             losses=["labels", "boxes", "cardinality"] + (["masks"] if args.masks else []),
                             query_groups=query_groups if args.query_groups > 1 else None)
    criterion.to(torch.device(args.device))
    postprocessors = {"bbox": PostProcess()}
    if args.masks:
        postprocessors["segm"] = PostProcessSegm()
        if args.dataset_file == "coco_panoptic":
            postprocessors["panoptic"] = PostProcessPanoptic(is_thing_map or coco_panoptic_is_thing_map(),
                                                             threshold=0.85)
    return model, criterion, postprocessors


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    return build_param_groups(model, args.lr_backbone, args.lr_attn, weight_decay_norm=args.weight_decay_norm,
                              weight_decay_bias=args.weight_decay_bias)
