"""RT-DETRv2 from parsed flags: PResNet + hybrid encoder + RT-DETRv2 decoder, the varifocal criterion and the top-k
post-processor; its own flags (the backbone's depth and variant) and parameter groups.

Flag names are the official configs' keys; the presets configs/rtdetrv2_*.yaml set the official values. The shared
real-time flags (cli/real_time.py) describe the encoder, decoder and denoising; the shared transformer flags give
the decoder's width (--hidden_dim), heads (--nheads, also the encoder's), layers (--dec_layers; --enc_layers are the
encoder's transformer layers), --dim_feedforward (decoder), --dropout, --num_queries and --num_feature_levels.
"""
import argparse

from torch import nn

from models.backbone_attention import MaskedAttention, make_plan
from models.criterion import VarifocalSetCriterion
from models.layers.hybrid_encoder import rtdetrv2_hybrid_encoder
from models.matcher import FocalHungarianMatcher
from models.param_groups import build_param_groups
from models.postprocess import RTDETRPostProcessor
from models.rtdetrv2.decoder import RTDETRTransformerv2
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


def check_flags(args: argparse.Namespace) -> None:
    if args.num_feature_levels < len(args.return_idx):
        raise ValueError(f"--num_feature_levels ({args.num_feature_levels}) must be at least the number of "
                         f"--return_idx levels ({len(args.return_idx)})")
    if len(args.num_points) != args.num_feature_levels:
        raise ValueError(f"--num_points gives {len(args.num_points)} levels, --num_feature_levels is "
                         f"{args.num_feature_levels}")
    if max(args.return_idx) > 3:
        raise ValueError(f"--return_idx {args.return_idx}: PResNet has stages 0..3")
    if not -args.dec_layers <= args.eval_idx < args.dec_layers:
        raise ValueError(f"--eval_idx {args.eval_idx} is not a layer of the {args.dec_layers} decoder layers")
    if args.num_queries < 1 or args.num_top_queries < 1:
        raise ValueError("--num_queries and --num_top_queries must be at least 1")
    stride = 2 ** (max(args.return_idx) + 2)  # the coarsest level's: the fusion concatenates upsampled maps
    if args.data_pipeline in (None, "rtdetr"):
        sizes = [args.image_size, *(args.multiscale_sizes or ())]
        if any(size % stride for size in sizes):
            raise ValueError(f"--image_size and --multiscale_sizes must be multiples of {stride} (the backbone's "
                             f"coarsest stride), got {sizes}")


def build_backbone(args: argparse.Namespace) -> PResNet:
    """PResNet with the backbone attention blocks of --backbone_attn (held as ``attn``, identities at first)."""
    pretrained = args.pretrained_backbone and not (args.resume or args.finetune_from or args.eval)
    backbone = PResNet(depth=args.depth, variant=args.variant, num_stages=4, return_idx=args.return_idx,
                       freeze_at=args.freeze_at, freeze_norm=args.freeze_norm, pretrained=pretrained)
    plan = make_plan(args.backbone_attn, args.attn_stages, args.attn_position, 4)
    if plan is not None:
        backbone.attn = MaskedAttention(backbone, plan)
    return backbone


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
        cross_attn_method=args.cross_attn_method, query_select_method=args.query_select_method)
    model = RTDETR(backbone, encoder, decoder)
    matcher = FocalHungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox,
                                    cost_giou=args.set_cost_giou, alpha=args.focal_alpha, gamma=2.0)
    weights = {"loss_vfl": args.cls_loss_coef, "loss_bbox": args.bbox_loss_coef, "loss_giou": args.giou_loss_coef}
    criterion = VarifocalSetCriterion(matcher, weights, losses=("vfl", "boxes"), alpha=args.vfl_alpha,
                                      gamma=args.vfl_gamma, num_classes=args.num_classes,
                                      num_decoder_layers=args.dec_layers, aux_loss=args.aux_loss,
                                      num_denoising=args.num_denoising)
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
