"""Flags of the encoder-decoder transformer and its queries, shared by the architectures."""
import argparse


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transformer")
    group.add_argument("--enc_layers", default=6, type=int, help="number of encoding layers in the transformer")
    group.add_argument("--dec_layers", default=6, type=int, help="number of decoding layers in the transformer")
    group.add_argument("--dim_feedforward", default=2048, type=int,
                       help="intermediate size of the feedforward layers in the transformer blocks")
    group.add_argument("--hidden_dim", default=256, type=int,
                       help="size of the embeddings (dimension of the transformer)")
    group.add_argument("--dropout", default=0.1, type=float, help="dropout applied in the transformer")
    group.add_argument("--nheads", default=8, type=int, help="number of attention heads inside the attentions")
    group.add_argument("--num_queries", default=100, type=int, help="number of query slots")
    group.add_argument("--pre_norm", action="store_true", help="layer norm before (not after) each transformer block")


def check(args: argparse.Namespace) -> None:
    for flag in ("num_queries", "hidden_dim", "nheads", "dec_layers"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.enc_layers < 0:
        raise ValueError(f"--enc_layers must be 0 or more, got {args.enc_layers}")
    if args.hidden_dim % args.nheads:
        raise ValueError(f"--hidden_dim ({args.hidden_dim}) must be divisible by --nheads ({args.nheads})")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
