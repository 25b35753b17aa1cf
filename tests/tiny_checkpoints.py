"""Tiny trained checkpoints for the tests of the tools (tests/test_tools_*.py): one short ``run.run`` on a synthetic
dataset of 64 px images."""
from pathlib import Path

import cli
from run import run
from tests.conftest import TINY_FLAGS, tiny_architecture_flags


def train_tiny(coco_path: Path, output_dir: Path, arch: str = "detr", *extra: str) -> Path:
    """Train a tiny ``arch`` model for one epoch on ``coco_path`` (evaluating once); returns its checkpoint.pth."""
    args = cli.get_args_parser().parse_args([*tiny_architecture_flags(arch, TINY_FLAGS), "--coco_path", str(coco_path),
                                             "--epochs", "1", "--output_dir", str(output_dir), *extra])
    run(args)
    return output_dir / "checkpoint.pth"
