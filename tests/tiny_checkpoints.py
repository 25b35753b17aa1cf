"""Tiny trained checkpoints for the tests of the tools (tests/test_tools_*.py): one short ``run.run`` on a synthetic
dataset of 64 px images."""
from pathlib import Path

import cli
from run import run
from tests.conftest import TINY_FLAGS

# Flags on top of conftest's TINY_FLAGS (a tiny DETR) that make the other architectures as small.
ARCHITECTURE_FLAGS = {
    "detr": [],
    "deformable_detr": ["--meta_arch", "deformable_detr", "--enc_n_points", "2", "--dec_n_points", "2"],
    "dino": ["--meta_arch", "dino", "--enc_n_points", "2", "--dec_n_points", "2", "--num_select", "20",
             "--dn_number", "4"],
}


def train_tiny(coco_path: Path, output_dir: Path, arch: str = "detr", *extra: str) -> Path:
    """Train a tiny ``arch`` model for one epoch on ``coco_path`` (evaluating once); returns its checkpoint.pth."""
    args = cli.get_args_parser().parse_args([*TINY_FLAGS, "--coco_path", str(coco_path), "--epochs", "1",
                                             "--output_dir", str(output_dir), *ARCHITECTURE_FLAGS[arch], *extra])
    run(args)
    return output_dir / "checkpoint.pth"
