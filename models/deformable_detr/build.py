"""Deformable DETR from parsed flags: the model, its criterion and post-processor, its own flags and parameter
groups."""
import argparse
import math

import torch
from torch import nn

from models.backbone import build_backbone
from models.deformable_detr.criterion import DeformableCriterion
from models.deformable_detr.deformable_detr import DeformableDETR
from models.deformable_detr.deformable_transformer import DeformableTransformer
from models.layers.ms_deform_attn import MSDeformAttn
from models.matcher import FocalHungarianMatcher
from models.param_groups import build_param_groups
from models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from models.postprocess import SigmoidTopKPostProcess

# the optional shared topics (cli/) it reads, and the flags in them it does not (its layers are post-norm);
# changed from their defaults, those are errors (cli.check_args)
TOPICS = ("backbone", "attention", "transformer", "deformable_attention", "loss")
UNUSED_SHARED_FLAGS = ("pre_norm",)


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Deformable DETR (--meta_arch deformable_detr)")
    group.add_argument("--with_box_refine", action="store_true",
                       help="iterative box refinement: each decoder layer has its own heads and refines the "
                            "previous layer's boxes")
    group.add_argument("--two_stage", action="store_true",
                       help="two-stage: the encoder's tokens propose boxes and the best --num_queries of them "
                            "become the decoder's queries")
    group.add_argument("--position_embedding_scale", default=2 * math.pi, type=float,
                       help="sine position encoding: normalised position times this (the official code has the "
                            "flag but always uses 2 pi)")
    group.add_argument("--lr_linear_proj_mult", default=0.1, type=float,
                       help="learning-rate factor of the sampling-offset and reference-point projections")


def _backbone_layers(args: argparse.Namespace) -> tuple[str, ...]:
    """The backbone stages read: the last one alone (single scale), or layer2 up to the last one."""
    last = int(args.feature_layer[-1])
    if args.num_feature_levels == 1:
        return (f"layer{last}",)
    return tuple(f"layer{i}" for i in range(2, last + 1))


def check_flags(args: argparse.Namespace) -> None:
    if args.two_stage and not args.with_box_refine:
        raise ValueError("--two_stage needs --with_box_refine (the official two-stage model refines the proposals "
                         "with per-layer box heads)")
    stages = len(_backbone_layers(args))
    if args.num_feature_levels != 1 and args.num_feature_levels < stages:
        raise ValueError(f"--num_feature_levels must be 1 or at least {stages} (the backbone stages layer2.."
                         f"{args.feature_layer}), got {args.num_feature_levels}")
    if args.hidden_dim % 32:
        raise ValueError(f"--hidden_dim must be a multiple of 32 for Deformable DETR's GroupNorm(32), got "
                         f"{args.hidden_dim}")
    if args.position_embedding_scale <= 0:
        raise ValueError(f"--position_embedding_scale must be positive, got {args.position_embedding_scale}")
    if args.lr_linear_proj_mult < 0:
        raise ValueError(f"--lr_linear_proj_mult must be 0 or more, got {args.lr_linear_proj_mult}")


def build_weight_dict(args: argparse.Namespace) -> dict[str, float]:
    """Loss weights as the official: classification, L1 and GIoU; with aux loss the same per earlier decoder layer
    (``_0`` ...) and for the encoder proposals (``_enc``, used by two-stage only)."""
    weight_dict = {"loss_ce": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    if args.aux_loss:
        extra = {f"{k}_{i}": v for i in range(args.dec_layers - 1) for k, v in weight_dict.items()}
        extra.update({f"{k}_enc": v for k, v in weight_dict.items()})
        weight_dict.update(extra)
    return weight_dict


def build(args: argparse.Namespace, is_thing_map: dict[int, bool] | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """Deformable DETR, its criterion and post-processor; ``is_thing_map`` is unused (no mask head)."""
    num_classes = args.num_classes
    if args.position_embedding == "sine":
        position_embedding = PositionEmbeddingSine(args.hidden_dim // 2, normalize=True,
                                                   scale=args.position_embedding_scale, offset=-0.5)
    else:
        position_embedding = PositionEmbeddingLearned(args.hidden_dim // 2)
    # built before the transformer: the official order of random initialisation
    backbone = build_backbone(args, return_layers=_backbone_layers(args), position_embedding=position_embedding)
    transformer = DeformableTransformer(
        d_model=args.hidden_dim, nhead=args.nheads, num_encoder_layers=args.enc_layers,
        num_decoder_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, dropout=args.dropout,
        activation="relu", return_intermediate_dec=True, num_feature_levels=args.num_feature_levels,
        dec_n_points=args.dec_n_points, enc_n_points=args.enc_n_points, two_stage=args.two_stage,
        two_stage_num_proposals=args.num_queries)
    model = DeformableDETR(backbone, transformer, num_classes=num_classes, num_queries=args.num_queries,
                           num_feature_levels=args.num_feature_levels, aux_loss=args.aux_loss,
                           with_box_refine=args.with_box_refine, two_stage=args.two_stage)
    matcher = FocalHungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox,
                                    cost_giou=args.set_cost_giou)
    criterion = DeformableCriterion(num_classes, matcher, build_weight_dict(args),
                                    losses=["labels", "boxes", "cardinality"], focal_alpha=args.focal_alpha)
    criterion.to(torch.device(args.device))
    return model, criterion, {"bbox": SigmoidTopKPostProcess(num_select=100)}


def linear_projections(model: nn.Module) -> list[nn.Module]:
    """The modules trained at ``lr * lr_linear_proj_mult``: every deformable attention's ``sampling_offsets`` and
    the transformer's ``reference_points`` (absent with two-stage)."""
    modules = [m.sampling_offsets for m in model.modules() if isinstance(m, MSDeformAttn)]
    reference_points = getattr(model.transformer, "reference_points", None)
    return modules + ([reference_points] if reference_points is not None else [])


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    return build_param_groups(model, args.lr_backbone, args.lr_attn, lr=args.lr,
                              scaled_modules=linear_projections(model), lr_scale=args.lr_linear_proj_mult,
                              weight_decay_norm=args.weight_decay_norm, weight_decay_bias=args.weight_decay_bias)
