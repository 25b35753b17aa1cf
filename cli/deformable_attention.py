"""Flags of multi-scale deformable attention, shared by the architectures built on it."""
import argparse


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-scale deformable attention")
    group.add_argument("--num_feature_levels", default=4, type=int,
                       help="feature levels the transformer reads: 1 (the last backbone stage) or the backbone "
                            "stages read plus extra stride-2 levels")
    group.add_argument("--enc_n_points", default=4, type=int,
                       help="sampling points per head and level in the encoder's deformable attention")
    group.add_argument("--dec_n_points", default=4, type=int,
                       help="sampling points per head and level in the decoder's deformable attention")


def check(args: argparse.Namespace) -> None:
    for flag in ("num_feature_levels", "enc_n_points", "dec_n_points"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
