"""RT-DETRv2 from parsed flags: PResNet + hybrid encoder + RT-DETRv2 decoder, the varifocal criterion and the top-k
post-processor; its own flags (the backbone's depth and variant) and parameter groups.

Flag names are the official configs' keys; the presets configs/rtdetrv2_*.yaml set the official values. The shared
real-time flags (cli/real_time.py) describe the encoder, decoder and denoising; the shared transformer flags give
the decoder's width (--hidden_dim), heads (--nheads, also the encoder's), layers (--dec_layers; --enc_layers are the
encoder's transformer layers), --dim_feedforward (decoder), --dropout, --num_queries and --num_feature_levels.
"""
import argparse

from torch import nn

from models.backbone import wants_imagenet_weights
from models.backbone_attention import attach_backbone_attention
from models.criterion import MatchabilityAwareSetCriterion, VarifocalSetCriterion
from models.layers.hybrid_encoder import rtdetrv2_hybrid_encoder
from models.layers.real_time_transformer import QUERY_POS_METHODS
from models.matcher import FocalHungarianMatcher
from models.param_groups import build_param_groups
from models.postprocess import RTDETRPostProcessor
from models.real_time_checks import check_decoder_levels_and_sizes
from models.rtdetrv2.decoder import DENOISING_METHODS, RTDETRTransformerv2
from models.rtdetrv2.presnet import PResNet
from models.rtdetrv2.rtdetrv2 import RTDETR

DEPTHS = (18, 34, 50, 101)
VARIANTS = ("a", "b", "c", "d")
# the shared topics RT-DETRv2 reads, and the flags in them it does not (a changed one is an error)
TOPICS = ("backbone", "attention", "transformer", "deformable_attention", "loss", "real_time")
UNUSED_SHARED_FLAGS = ("backbone", "dilation", "position_embedding", "backbone_norm", "backbone_trainable_layers",
                       "feature_layer", "pre_norm", "enc_n_points", "dec_n_points")


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("RT-DETRv2 (--meta_arch rtdetrv2)")
    group.add_argument("--depth", default=50, type=int, choices=DEPTHS, help="PResNet depth")
    group.add_argument("--variant", default="d", choices=VARIANTS,
                       help="ResNet variant: d (ResNet-vd: three-convolution stem, average-pool shortcut in "
                            "downsampling blocks), as every official RT-DETRv2 model")
    group.add_argument("--query_pos_method", default="default", choices=QUERY_POS_METHODS,
                       help="the decoder's query position head: default (RT-DETRv2: 4 -> 2D -> D) or as_reg "
                            "(DEIM's: three layers of width D)")
    group.add_argument("--denoising_method", default="rtdetrv2", choices=DENOISING_METHODS,
                       help="the denoising queries: rtdetrv2 (a batch without targets gets a dummy group; noised "
                            "boxes turned inside out keep negative sizes) or dfine (DEIM's RT-DETRv2: no group, "
                            "absolute sizes)")


def check_flags(args: argparse.Namespace) -> None:
    check_decoder_levels_and_sizes(args, "PResNet")
    if args.num_queries < 1 or args.num_top_queries < 1:
        raise ValueError("--num_queries and --num_top_queries must be at least 1")


def build_backbone(args: argparse.Namespace) -> PResNet:
    """PResNet with the backbone attention blocks of --backbone_attn (held as ``attn``, identities at first)."""
    pretrained = wants_imagenet_weights(args)
    backbone = PResNet(depth=args.depth, variant=args.variant, num_stages=4, return_idx=args.return_idx,
                       freeze_at=args.freeze_at, freeze_norm=args.freeze_norm, pretrained=pretrained)
    return attach_backbone_attention(backbone, args)


def build(args: argparse.Namespace, is_thing_map: dict[int, bool] | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """RT-DETRv2, its criterion and post-processor; ``is_thing_map`` is unused (no mask head)."""
    backbone = build_backbone(args)
    eval_size = list(args.eval_spatial_size)
    encoder = rtdetrv2_hybrid_encoder(
        in_channels=[backbone.out_channels[i] for i in range(len(args.return_idx))],
        feat_strides=list(backbone.out_strides), hidden_dim=args.enc_hidden_dim, num_heads=args.nheads,
        dim_feedforward=args.enc_dim_feedforward, dropout=args.dropout, enc_act=args.enc_act,
        use_encoder_idx=args.use_encoder_idx, num_encoder_layers=args.enc_layers,
        pe_temperature=args.pe_temperature, expansion=args.expansion, depth_mult=args.depth_mult, act=args.act,
        eval_spatial_size=eval_size)
    decoder = RTDETRTransformerv2(
        num_classes=args.num_classes, hidden_dim=args.hidden_dim, num_queries=args.num_queries,
        feat_channels=[args.enc_hidden_dim] * len(args.return_idx), feat_strides=list(backbone.out_strides),
        num_levels=args.num_feature_levels, num_points=list(args.num_points), nhead=args.nheads,
        num_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, dropout=args.dropout,
        num_denoising=args.num_denoising, label_noise_ratio=args.label_noise_ratio,
        box_noise_scale=args.box_noise_scale, learn_query_content=args.learn_query_content,
        eval_spatial_size=eval_size, eval_idx=args.eval_idx, aux_loss=args.aux_loss,
        cross_attn_method=args.cross_attn_method, query_select_method=args.query_select_method,
        activation=args.activation, mlp_act=args.mlp_act, query_pos_method=args.query_pos_method,
        denoising_method=args.denoising_method)
    model = RTDETR(backbone, encoder, decoder)
    matcher = FocalHungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox,
                                    cost_giou=args.set_cost_giou, alpha=args.focal_alpha, gamma=2.0)
    layers = {"num_decoder_layers": args.dec_layers, "aux_loss": args.aux_loss, "num_denoising": args.num_denoising}
    if args.use_mal:  # DEIM: the matchability-aware loss
        weights = {"loss_mal": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
        criterion = MatchabilityAwareSetCriterion(matcher, weights, losses=("mal", "boxes"), alpha=args.vfl_alpha,
                                                  gamma=args.mal_gamma, num_classes=args.num_classes,
                                                  mal_alpha=args.mal_alpha, **layers)
    else:
        weights = {"loss_vfl": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
        criterion = VarifocalSetCriterion(matcher, weights, losses=("vfl", "boxes"), alpha=args.vfl_alpha,
                                          gamma=args.vfl_gamma, num_classes=args.num_classes, **layers)
    # labels -> category ids in the post-processor itself, as the official remap_mscoco_category
    postprocessor = RTDETRPostProcessor(num_classes=args.num_classes, num_top_queries=args.num_top_queries,
                                        category_ids=args.label_to_category_id)
    return model, criterion, {"bbox": postprocessor}


def param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    """The backbone at --lr_backbone, the attention blocks at --lr_attn, the rest at --lr; normalisation and bias
    parameters with their own weight decay where --weight_decay_norm / --weight_decay_bias say (the official
    regex groups, by module identity)."""
    return build_param_groups(model, args.lr_backbone, args.lr_attn, weight_decay_norm=args.weight_decay_norm,
                              weight_decay_bias=args.weight_decay_bias)
