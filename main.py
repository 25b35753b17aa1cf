"""Train and evaluate the DETR family: ``python main.py --coco_path DIR`` (see README for recipes).

Flags keep the official names, meanings and defaults (``cli/``); ``--config FILE`` applies a flat YAML preset first;
``--meta_arch`` picks the architecture (``models/``); ``run.run`` does the rest.
"""
import argparse
import sys

import cli
from run import run


def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of every architecture, with the official defaults (see cli/)."""
    return cli.get_args_parser()


def main(args: argparse.Namespace) -> dict:
    """Train (or with ``--eval`` evaluate) as the flags say; returns the last evaluation's stats."""
    return run(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser("DETR training and evaluation script", parents=[get_args_parser()])
    try:
        main(cli.parse_args(parser))
    except (FileNotFoundError, ValueError, NotImplementedError) as exc:
        sys.exit(f"error: {exc}")
