"""Flags of the real-time detectors (RT-DETRv2; D-FINE and DEIM build on them): the backbone's stages and freezing,
the hybrid encoder, the decoder's sampling points, query selection and denoising, the fixed evaluation size and the
top-k post-processing. Names are the official configs' keys (lyuwenyu/RT-DETR ``rtdetrv2_pytorch/configs``)."""
import argparse

from util.config import add_switch

QUERY_SELECT_METHODS = ("default", "agnostic")
CROSS_ATTN_METHODS = ("default", "discrete")
ACTIVATIONS = ("relu", "silu", "gelu", "leaky_relu", "hardsigmoid")


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("real-time detectors (hybrid encoder, query selection, denoising)")
    group.add_argument("--eval_spatial_size", default=[640, 640], type=int, nargs=2, metavar=("H", "W"),
                       help="the input size (height, width) for which the anchors and the encoder's position tables "
                            "are built and stored in the model (used in evaluation at that size)")
    group.add_argument("--return_idx", default=[1, 2, 3], type=int, nargs="+",
                       help="backbone stages (0-based) whose maps the encoder reads")
    group.add_argument("--freeze_at", default=0, type=int,
                       help="freeze the stem and the stages up to this one (0: the stem only; -1: nothing)")
    add_switch(group, "freeze_norm", True, "frozen BatchNorm in the backbone")
    group.add_argument("--enc_hidden_dim", default=256, type=int, help="width of the hybrid encoder")
    group.add_argument("--enc_dim_feedforward", default=1024, type=int,
                       help="feed-forward width of the encoder's transformer layer(s) (AIFI)")
    group.add_argument("--use_encoder_idx", default=[2], type=int, nargs="+",
                       help="levels (indices into the encoder's inputs) that the transformer layer(s) encode")
    group.add_argument("--enc_act", default="gelu", choices=ACTIVATIONS,
                       help="activation of the encoder's transformer layer(s)")
    group.add_argument("--expansion", default=1.0, type=float, help="hidden-width factor of the CSP fusion blocks")
    group.add_argument("--depth_mult", default=1.0, type=float,
                       help="the fusion blocks have round(3 * depth_mult) RepVGG blocks")
    group.add_argument("--act", default="silu", choices=ACTIVATIONS, help="activation of the encoder's convolutions")
    group.add_argument("--activation", default="relu", choices=ACTIVATIONS,
                       help="activation of the decoder layers' feed-forward networks (and of D-FINE's location-quality "
                            "heads); DEIM's configs: silu")
    group.add_argument("--mlp_act", default="relu", choices=ACTIVATIONS,
                       help="activation inside the decoder's MLP heads (query positions, encoder and decoder boxes); "
                            "DEIM's configs: silu")
    group.add_argument("--pe_temperature", default=10000.0, type=float,
                       help="temperature of the encoder's 2-D sin-cos position table")
    group.add_argument("--num_points", default=[4, 4, 4], type=int, nargs="+",
                       help="sampling points of the decoder's deformable cross-attention, per feature level")
    group.add_argument("--cross_attn_method", default="default", choices=CROSS_ATTN_METHODS,
                       help="default: bilinear sampling; discrete: nearest cell, sampling offsets frozen")
    group.add_argument("--query_select_method", default="default", choices=QUERY_SELECT_METHODS,
                       help="rank encoder tokens by their best class (default) or by one class-agnostic score")
    group.add_argument("--learn_query_content", action="store_true",
                       help="learned content queries (default: the selected tokens' features)")
    group.add_argument("--eval_idx", default=-1, type=int,
                       help="decoder layer whose predictions are the model's in evaluation (-1: the last; later "
                            "layers are not run)")
    group.add_argument("--num_denoising", default=100, type=int,
                       help="denoising queries per batch in training (0: none)")
    group.add_argument("--label_noise_ratio", default=0.5, type=float,
                       help="twice the probability that a denoising label is redrawn")
    group.add_argument("--box_noise_scale", default=1.0, type=float,
                       help="box noise of the denoising queries, in half box sizes")
    group.add_argument("--num_top_queries", default=300, type=int,
                       help="detections kept per image: the best (query, class) pairs by sigmoid score")
    group.add_argument("--vfl_alpha", default=0.75, type=float,
                       help="weight of the negatives in the varifocal loss")
    group.add_argument("--vfl_gamma", default=2.0, type=float, help="focusing exponent of the varifocal loss")
    group.add_argument("--use_mal", action="store_true",
                       help="DEIM: the matchability-aware loss (MAL) instead of the varifocal loss")
    group.add_argument("--mal_alpha", default=None, type=float,
                       help="DEIM: weight of the negatives in MAL (default: none, as DEIM's configs)")
    group.add_argument("--mal_gamma", default=1.5, type=float, help="DEIM: focusing exponent of MAL")
    group.add_argument("--ema_restart_decay", default=None, type=float,
                       help="at --stop_epoch, restart from checkpoint_best.pth with this EMA decay (D-FINE's and "
                            "DEIM's second stage; default: no restart)")


def check(args: argparse.Namespace) -> None:
    if any(size < 32 or size % 32 for size in args.eval_spatial_size):
        raise ValueError(f"--eval_spatial_size must be multiples of 32 (the encoder's stride), got "
                         f"{args.eval_spatial_size}")
    if sorted(set(args.return_idx)) != list(args.return_idx) or min(args.return_idx) < 0:
        raise ValueError(f"--return_idx must be increasing stage indices from 0, got {args.return_idx}")
    if args.freeze_at < -1:
        raise ValueError(f"--freeze_at must be -1 (nothing frozen) or more, got {args.freeze_at}")
    for flag in ("enc_hidden_dim", "enc_dim_feedforward", "num_top_queries"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.enc_hidden_dim % args.nheads:
        raise ValueError(f"--enc_hidden_dim ({args.enc_hidden_dim}) must be divisible by --nheads ({args.nheads})")
    if any(i < 0 or i >= len(args.return_idx) for i in args.use_encoder_idx):
        raise ValueError(f"--use_encoder_idx {args.use_encoder_idx} must index the {len(args.return_idx)} levels "
                         f"of --return_idx")
    if min(args.num_points) < 1:
        raise ValueError(f"--num_points must be at least 1 per level, got {args.num_points}")
    if args.expansion <= 0 or args.depth_mult <= 0 or args.pe_temperature <= 0:
        raise ValueError("--expansion, --depth_mult and --pe_temperature must be positive")
    if args.num_denoising < 0 or args.box_noise_scale < 0 or not 0 <= args.label_noise_ratio <= 2:
        raise ValueError("--num_denoising and --box_noise_scale must not be negative and --label_noise_ratio must be "
                         "in [0, 2] (twice a probability)")
    if args.vfl_alpha < 0 or args.vfl_gamma < 0 or args.mal_gamma < 0:
        raise ValueError("--vfl_alpha, --vfl_gamma and --mal_gamma must not be negative")
    if args.mal_alpha is not None and not args.use_mal:
        raise ValueError("--mal_alpha goes with --use_mal")
    if args.ema_restart_decay is not None:
        if not 0 < args.ema_restart_decay < 1 or args.ema is None or args.stop_epoch is None:
            raise ValueError("--ema_restart_decay must be a decay in (0, 1) and goes with --ema and --stop_epoch")

