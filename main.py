"""Train and evaluate the DETR family: ``python main.py --coco_path DIR`` (see README for recipes).

Flags keep the official names, meanings and defaults (``cli/``); ``--config FILE`` applies a flat YAML preset first;
``--meta_arch`` picks the architecture (``models/``); ``run.run`` does the rest.
"""
import argparse
import sys

import cli
from run import run
from util.stop_signals import Stopped
from util.user_error import USER_ERRORS, debug_requested, one_line


def get_args_parser() -> argparse.ArgumentParser:
    """Every flag of every architecture, with the official defaults (see cli/)."""
    return cli.get_args_parser()


def main(args: argparse.Namespace) -> dict:
    """Train (or with ``--eval`` evaluate) as the flags say; returns the last evaluation's stats."""
    return run(args)


def command_line(argv: list[str] | None = None) -> int:
    """``python main.py FLAGS``; returns the exit status. A failure the user can fix (``util.user_error``) ends in
    one line ``error: ...`` on stderr and status 1, its traceback shown only with ``--debug`` or ``DETR_DEBUG=1``;
    a run stopped by SIGTERM or SIGINT prints where to resume from and returns 128 + the signal's number."""
    parser = argparse.ArgumentParser("DETR training and evaluation script", parents=[get_args_parser()])
    args = cli.parse_args(parser, argv)
    try:
        main(args)
    except Stopped as stop:
        print(stop, file=sys.stderr, flush=True)
        return stop.exit_status
    except USER_ERRORS as exc:
        if debug_requested(args.debug):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(command_line())
