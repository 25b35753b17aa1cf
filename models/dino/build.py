"""DINO from parsed flags: the model, its criterion and post-processor, its own flags and parameter groups.

The flags carry the official config names (config/DINO/DINO_4scale.py); their defaults are the official config's
values. Flags shared with other architectures (--lr, --num_queries, --dropout, ..., the deformable attention's
--num_feature_levels, --enc_n_points, --dec_n_points and the focal loss's --cls_loss_coef, --focal_alpha) keep their
own defaults; the presets configs/dino_4scale.yaml and configs/dino_5scale.yaml set DINO's values.
"""
import argparse

import torch
from torch import nn

from models.activation import DINO_ACTIVATIONS
from models.backbone import build_backbone
from models.dino.criterion import GIOU_EPS, DINOCriterion
from models.dino.decoder import MODULES, SELF_ATTENTION_TYPES
from models.dino.dino import DINO
from models.dino.transformer import TWO_STAGE_TYPES, DINOTransformer
from models.matcher import FocalHungarianMatcher
from models.param_groups import build_param_groups
from models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from models.postprocess import SigmoidTopKPostProcess
from util.config import add_switch

# --return_interm_indices -> the backbone stages read (the official code reads the last len(indices) stages)
RETURN_INTERM_INDICES = {(1, 2, 3): ("layer2", "layer3", "layer4"),
                         (0, 1, 2, 3): ("layer1", "layer2", "layer3", "layer4"),
                         (3,): ("layer4",)}
MATCHER_TYPES = ("HungarianMatcher",)
# the optional shared topics (cli/) it reads, and the flags in them it does not (its stages come from
# --return_interm_indices); changed from their defaults, those are errors (cli.check_args)
TOPICS = ("backbone", "attention", "transformer", "deformable_attention", "loss")
UNUSED_SHARED_FLAGS = ("feature_layer",)


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DINO (--meta_arch dino)")
    group.add_argument("--pe_temperatureH", default=20, type=int,
                       help="temperature of the sine positional encoding of y (DINO: 20; DETR: 10000)")
    group.add_argument("--pe_temperatureW", default=20, type=int,
                       help="temperature of the sine positional encoding of x (DINO: 20; DETR: 10000)")
    group.add_argument("--return_interm_indices", default=[1, 2, 3], type=int, nargs="+",
                       help="backbone stages read: 1 2 3 (layer2..4, 4-scale with --num_feature_levels 4), "
                            "0 1 2 3 (layer1..4, 5-scale) or 3 (layer4)")
    group.add_argument("--two_stage_type", default="standard", choices=TWO_STAGE_TYPES,
                       help="standard: anchors from the encoder's top-scoring tokens (mixed query selection); "
                            "no: learned anchors")
    group.add_argument("--two_stage_bbox_embed_share", action="store_true",
                       help="the encoder's box head is the decoder's (needs shared decoder heads)")
    group.add_argument("--two_stage_class_embed_share", action="store_true",
                       help="the encoder's class head is the decoder's (needs shared decoder heads)")
    group.add_argument("--two_stage_learn_wh", action="store_true",
                       help="learn the size of the encoder's proposals (default: 0.05 * 2**level)")
    add_switch(group, "embed_init_tgt", True,
                "learned content queries with query selection (else the selected tokens' features)")
    add_switch(group, "dec_pred_class_embed_share", True, "one class head shared by all decoder layers")
    add_switch(group, "dec_pred_bbox_embed_share", True, "one box head shared by all decoder layers")
    group.add_argument("--random_refpoints_xy", action="store_true",
                       help="with --two_stage_type no: draw the anchor centres uniformly (the official code "
                            "overwrites them with its xavier initialisation afterwards)")
    group.add_argument("--use_detached_boxes_dec_out", action="store_true",
                       help="predict each layer's boxes from the detached anchors (no look-forward-twice)")
    group.add_argument("--transformer_activation", default="relu", choices=DINO_ACTIVATIONS,
                       help="activation of the transformer's feed-forward blocks")
    group.add_argument("--decoder_sa_type", default="sa", choices=SELF_ATTENTION_TYPES,
                       help="decoder self-attention: sa (among queries), ca_label (to class embeddings; needs "
                            "--no_use_dn), ca_content (deformable attention to the memory)")
    group.add_argument("--decoder_module_seq", default=list(MODULES), nargs=3, choices=MODULES,
                       help="order of a decoder layer's blocks")
    add_switch(group, "use_dn", True, "contrastive denoising queries in training")
    group.add_argument("--dn_number", default=100, type=int,
                       help="denoising budget: 2 * dn_number queries per batch when dn_number >= 50 (groups of "
                            "positives and negatives for the most crowded image), else 2 * dn_number groups")
    group.add_argument("--dn_box_noise_scale", default=0.4, type=float,
                       help="box noise (positives move each edge by less than this times half the box size)")
    group.add_argument("--dn_label_noise_ratio", default=0.5, type=float,
                       help="twice the fraction of denoising labels replaced by a random class")
    group.add_argument("--dn_labelbook_size", default=None, type=int,
                       help="rows - 1 of the denoising label embedding (official COCO: 91; default: --num_classes)")
    group.add_argument("--interm_loss_coef", default=1.0, type=float,
                       help="weight of the encoder's (query selection) losses relative to the decoder's")
    group.add_argument("--no_interm_box_loss", action="store_true",
                       help="no box losses for the encoder's selected proposals (classification only)")
    group.add_argument("--matcher_type", default="HungarianMatcher",
                       help="HungarianMatcher (the only one supported)")
    group.add_argument("--num_select", default=300, type=int,
                       help="detections kept per image: the best (query, class) pairs by sigmoid score")
    group.add_argument("--nms_iou_threshold", default=-1, type=float,
                       help="class-agnostic NMS of the kept detections at this IoU (<= 0: none)")


def check_flags(args: argparse.Namespace) -> None:
    indices = tuple(args.return_interm_indices)
    if indices not in RETURN_INTERM_INDICES:
        raise ValueError(f"--return_interm_indices must be one of {[list(k) for k in RETURN_INTERM_INDICES]}, "
                         f"got {list(indices)}")
    if args.num_feature_levels < len(indices):
        raise ValueError(f"--num_feature_levels ({args.num_feature_levels}) must be at least the number of "
                         f"--return_interm_indices ({len(indices)})")
    if args.num_feature_levels == 1 and args.two_stage_type != "no":
        raise ValueError("--num_feature_levels 1 needs --two_stage_type no")
    if args.hidden_dim % 32:
        raise ValueError(f"--hidden_dim must be a multiple of 32 for DINO (GroupNorm of 32 groups), got "
                         f"{args.hidden_dim}")
    if (args.two_stage_bbox_embed_share or args.two_stage_class_embed_share) and not (
            args.dec_pred_class_embed_share and args.dec_pred_bbox_embed_share):
        raise ValueError("--two_stage_bbox_embed_share / --two_stage_class_embed_share need "
                         "--dec_pred_class_embed_share and --dec_pred_bbox_embed_share")
    if args.decoder_sa_type == "ca_label" and args.use_dn and args.dn_number > 0:
        raise ValueError("--decoder_sa_type ca_label cannot take the denoising attention mask: add --no_use_dn")
    if args.matcher_type not in MATCHER_TYPES:
        raise ValueError(f"--matcher_type {args.matcher_type!r} is not supported; use {MATCHER_TYPES[0]}")
    if args.use_dn and args.dn_number < 1:
        raise ValueError(f"--dn_number must be at least 1 with denoising (--no_use_dn turns it off), got "
                         f"{args.dn_number}")
    for flag in ("dn_box_noise_scale", "dn_label_noise_ratio", "interm_loss_coef"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag} must not be negative, got {getattr(args, flag)}")
    if args.dn_label_noise_ratio > 2:
        raise ValueError(f"--dn_label_noise_ratio must be at most 2 (it is twice a probability), got "
                         f"{args.dn_label_noise_ratio}")
    if args.dn_labelbook_size is not None and args.dn_labelbook_size < 1:
        raise ValueError(f"--dn_labelbook_size must be positive, got {args.dn_labelbook_size}")
    if None not in (args.dn_labelbook_size, args.num_classes) and args.num_classes > args.dn_labelbook_size + 1:
        raise ValueError(f"--dn_labelbook_size ({args.dn_labelbook_size}) must be at least --num_classes - 1 "
                         f"({args.num_classes - 1}): the denoising labels index its embedding")
    if args.num_select < 1:
        raise ValueError(f"--num_select must be at least 1, got {args.num_select}")
    if args.pe_temperatureH <= 0 or args.pe_temperatureW <= 0:
        raise ValueError("--pe_temperatureH and --pe_temperatureW must be positive")


def build_position_embedding(args: argparse.Namespace) -> nn.Module:
    """DINO's positional encoding: sine with separate y and x temperatures (no half-pixel offset), or learned."""
    if args.position_embedding == "sine":
        return PositionEmbeddingSine(args.hidden_dim // 2, normalize=True, temperature_y=args.pe_temperatureH,
                                     temperature_x=args.pe_temperatureW)
    return PositionEmbeddingLearned(args.hidden_dim // 2)


def build_weight_dict(args: argparse.Namespace) -> dict[str, float]:
    """The official loss weights: decoder (+ denoising) losses for every layer, then the encoder's (_interm)."""
    base = {"loss_ce": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    weight_dict = dict(base)
    if args.use_dn:
        weight_dict.update({f"{k}_dn": v for k, v in base.items()})
    per_layer = dict(weight_dict)
    if args.aux_loss:
        for i in range(args.dec_layers - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in per_layer.items()})
    if args.two_stage_type != "no":
        box_weight = 0.0 if args.no_interm_box_loss else 1.0
        interm_scale = {"loss_ce": 1.0, "loss_bbox": box_weight, "loss_giou": box_weight}
        weight_dict.update({f"{k}_interm": v * args.interm_loss_coef * interm_scale[k] for k, v in base.items()})
    return weight_dict


def build(args: argparse.Namespace, is_thing_map: dict[int, bool] | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """DINO, its criterion and post-processors."""
    num_classes = args.num_classes
    dn_labelbook_size = args.dn_labelbook_size if args.dn_labelbook_size is not None else num_classes
    # backbone, then transformer, then heads: the official order of random initialisation
    backbone = build_backbone(args, return_layers=RETURN_INTERM_INDICES[tuple(args.return_interm_indices)],
                              position_embedding=build_position_embedding(args))
    transformer = DINOTransformer(
        d_model=args.hidden_dim, nhead=args.nheads, num_queries=args.num_queries, num_encoder_layers=args.enc_layers,
        num_decoder_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, dropout=args.dropout,
        activation=args.transformer_activation, normalize_before=args.pre_norm,
        num_feature_levels=args.num_feature_levels, enc_n_points=args.enc_n_points, dec_n_points=args.dec_n_points,
        two_stage_type=args.two_stage_type, two_stage_learn_wh=args.two_stage_learn_wh,
        embed_init_tgt=args.embed_init_tgt, random_refpoints_xy=args.random_refpoints_xy,
        decoder_sa_type=args.decoder_sa_type, module_seq=tuple(args.decoder_module_seq),
        use_detached_boxes_dec_out=args.use_detached_boxes_dec_out)
    model = DINO(backbone, transformer, num_classes=num_classes, num_queries=args.num_queries,
                 aux_loss=args.aux_loss, num_feature_levels=args.num_feature_levels,
                 two_stage_type=args.two_stage_type, dec_pred_class_embed_share=args.dec_pred_class_embed_share,
                 dec_pred_bbox_embed_share=args.dec_pred_bbox_embed_share,
                 two_stage_class_embed_share=args.two_stage_class_embed_share,
                 two_stage_bbox_embed_share=args.two_stage_bbox_embed_share, decoder_sa_type=args.decoder_sa_type,
                 dn_number=args.dn_number if args.use_dn else 0, dn_box_noise_scale=args.dn_box_noise_scale,
                 dn_label_noise_ratio=args.dn_label_noise_ratio, dn_labelbook_size=dn_labelbook_size)
    matcher = FocalHungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox,
                                    cost_giou=args.set_cost_giou, alpha=args.focal_alpha, giou_eps=GIOU_EPS)
    criterion = DINOCriterion(num_classes, matcher, build_weight_dict(args), focal_alpha=args.focal_alpha)
    criterion.to(torch.device(args.device))
    postprocessors = {"bbox": SigmoidTopKPostProcess(num_select=args.num_select,
                                                     nms_iou_threshold=args.nms_iou_threshold)}
    return model, criterion, postprocessors


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    """The official 'default' parameter dict: the backbone at --lr_backbone, the rest at --lr (no separate rate for
    the deformable attention's offset projections: DINO's default does not apply --lr_linear_proj_mult)."""
    return build_param_groups(model, args.lr_backbone, args.lr_attn, weight_decay_norm=args.weight_decay_norm,
                              weight_decay_bias=args.weight_decay_bias)
