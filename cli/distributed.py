"""Flags of multi-process training (torchrun or SLURM set the rest through the environment)."""
import argparse


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("distributed")
    group.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    group.add_argument("--dist_url", default="env://", help="url used to set up distributed training")


def check(args: argparse.Namespace) -> None:
    if args.world_size < 1:
        raise ValueError(f"--world_size must be at least 1, got {args.world_size}")
