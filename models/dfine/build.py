"""D-FINE from parsed flags: HGNetv2 + D-FINE's hybrid encoder + the D-FINE decoder (fine-grained distribution
refinement), its criterion (varifocal or, with DEIM's --use_mal, matchability-aware; L1, GIoU, FGL, DDF) and the
top-k post-processor; its own flags and parameter groups.

Flag names are the official configs' keys (Peterande/D-FINE ``configs/dfine``); the presets configs/dfine_*.yaml set
the official values. The shared real-time flags (cli/real_time.py) describe the encoder, decoder and denoising; the
shared transformer flags the decoder's width, heads, layers, feed-forward width, dropout and queries.
"""
import argparse

from torch import nn

from models.backbone import wants_imagenet_weights
from models.backbone_attention import attach_backbone_attention
from models.criterion import DFINECriterion
from models.dfine.decoder import DFINETransformer
from models.dfine.dfine import DFINE
from models.hgnetv2 import HGNetv2
from models.layers.hybrid_encoder import dfine_hybrid_encoder
from models.matcher import DFINEHungarianMatcher
from models.param_groups import build_param_groups
from models.postprocess import RTDETRPostProcessor
from models.real_time_checks import check_decoder_levels_and_sizes
from util.config import add_switch

HGNETV2_NAMES = ("B0", "B1", "B2", "B3", "B4", "B5", "B6")
# the shared topics D-FINE reads, and the flags in them it does not (the official D-FINE draws its denoising boxes'
# noise at 1.0 whatever the config says); changed from their defaults, those are errors (cli.check_args)
TOPICS = ("backbone", "attention", "transformer", "deformable_attention", "loss", "real_time")
UNUSED_SHARED_FLAGS = ("backbone", "dilation", "position_embedding", "backbone_norm", "backbone_trainable_layers",
                       "feature_layer", "pre_norm", "enc_n_points", "dec_n_points", "box_noise_scale")


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("D-FINE (--meta_arch dfine)")
    group.add_argument("--hgnetv2_name", default="B4", choices=HGNETV2_NAMES,
                       help="HGNetv2 variant (D-FINE n, s: B0; m: B2; l: B4; x: B5)")
    add_switch(group, "use_lab", False, "learnable affine blocks after HGNetv2's activations (n, s, m)")
    add_switch(group, "freeze_stem_only", True, "with --freeze_at 0, freeze HGNetv2's stem only")
    group.add_argument("--reg_max", default=32, type=int,
                       help="bins of each edge's distance distribution (fine-grained distribution refinement)")
    group.add_argument("--reg_scale", default=4.0, type=float,
                       help="curvature of the weighting function's bins (x: 8)")
    group.add_argument("--layer_scale", default=1.0, type=float,
                       help="hidden-width factor of the decoder's later layers")
    group.add_argument("--fgl_loss_coef", default=0.15, type=float, help="weight of the fine-grained localisation loss")
    group.add_argument("--ddf_loss_coef", default=1.5, type=float,
                       help="weight of the decoupled distillation focal loss between decoder layers")


def check_flags(args: argparse.Namespace) -> None:
    check_decoder_levels_and_sizes(args, "HGNetv2")
    if args.reg_max < 2 or args.reg_scale <= 0 or args.layer_scale <= 0:
        raise ValueError("--reg_max must be at least 2 and --reg_scale, --layer_scale positive")
    if args.fgl_loss_coef < 0 or args.ddf_loss_coef < 0:
        raise ValueError("--fgl_loss_coef and --ddf_loss_coef must not be negative")


def build_backbone(args: argparse.Namespace) -> HGNetv2:
    """HGNetv2 with the backbone attention blocks of --backbone_attn (held as ``attn``, identities at first)."""
    pretrained = wants_imagenet_weights(args)
    backbone = HGNetv2(name=args.hgnetv2_name, use_lab=args.use_lab, return_idx=args.return_idx,
                       freeze_stem_only=args.freeze_stem_only, freeze_at=args.freeze_at, freeze_norm=args.freeze_norm,
                       pretrained=pretrained)
    return attach_backbone_attention(backbone, args)


def build(args: argparse.Namespace, is_thing_map: dict[int, bool] | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """D-FINE, its criterion and post-processor; ``is_thing_map`` is unused (no mask head)."""
    backbone = build_backbone(args)
    eval_size = list(args.eval_spatial_size)
    strides = list(backbone.out_strides)
    encoder = dfine_hybrid_encoder(
        in_channels=list(backbone.out_channels), feat_strides=strides, hidden_dim=args.enc_hidden_dim,
        num_heads=args.nheads, dim_feedforward=args.enc_dim_feedforward, dropout=args.dropout, enc_act=args.enc_act,
        use_encoder_idx=args.use_encoder_idx, num_encoder_layers=args.enc_layers, pe_temperature=args.pe_temperature,
        expansion=args.expansion, depth_mult=args.depth_mult, act=args.act, eval_spatial_size=eval_size)
    decoder = DFINETransformer(
        num_classes=args.num_classes, hidden_dim=args.hidden_dim, num_queries=args.num_queries,
        feat_channels=[args.enc_hidden_dim] * len(args.return_idx), feat_strides=strides,
        num_levels=args.num_feature_levels, num_points=list(args.num_points), nhead=args.nheads,
        num_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, dropout=args.dropout,
        num_denoising=args.num_denoising, label_noise_ratio=args.label_noise_ratio,
        learn_query_content=args.learn_query_content, eval_spatial_size=eval_size, eval_idx=args.eval_idx,
        aux_loss=args.aux_loss, cross_attn_method=args.cross_attn_method,
        query_select_method=args.query_select_method, reg_max=args.reg_max, reg_scale=args.reg_scale,
        layer_scale=args.layer_scale, activation=args.activation, mlp_act=args.mlp_act)
    model = DFINE(backbone, encoder, decoder)
    matcher = DFINEHungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox,
                                    cost_giou=args.set_cost_giou, alpha=args.focal_alpha, gamma=2.0)
    classification = "mal" if args.use_mal else "vfl"
    weights = {f"loss_{classification}": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef,
               "loss_giou": args.giou_loss_coef, "loss_fgl": args.fgl_loss_coef, "loss_ddf": args.ddf_loss_coef}
    criterion = DFINECriterion(matcher, weights, losses=(classification, "boxes", "local"), alpha=args.vfl_alpha,
                               gamma=args.mal_gamma if args.use_mal else args.vfl_gamma,
                               num_classes=args.num_classes, reg_max=args.reg_max, num_decoder_layers=args.dec_layers,
                               aux_loss=args.aux_loss, num_denoising=args.num_denoising, mal_alpha=args.mal_alpha,
                               teacher_self_term=not args.use_mal)  # --use_mal: DEIM's criterion
    postprocessor = RTDETRPostProcessor(num_classes=args.num_classes, num_top_queries=args.num_top_queries,
                                        category_ids=args.label_to_category_id)
    return model, criterion, {"bbox": postprocessor}


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    """The backbone at --lr_backbone, the attention blocks at --lr_attn, the rest at --lr; normalisation and bias
    parameters with their own weight decay where --weight_decay_norm / --weight_decay_bias say."""
    return build_param_groups(model, args.lr_backbone, args.lr_attn, weight_decay_norm=args.weight_decay_norm,
                              weight_decay_bias=args.weight_decay_bias)
