"""The DETR model family: ``build_model(args)`` -> (model, criterion, postprocessors) for ``args.meta_arch``.

Each architecture is a package (models/detr/ ...) exposing an ``ARCHITECTURE`` (models/registry.py); adding one is
adding its package and a line below.
"""
import argparse

from torch import nn

from models import deformable_detr, detr, dino
from models.registry import Architecture

ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch for arch in (detr.ARCHITECTURE, deformable_detr.ARCHITECTURE, dino.ARCHITECTURE)}


def architecture(name: str) -> Architecture:
    """The registered architecture ``name``; an unknown name is an error listing the known ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"--meta_arch must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]


def build_model(args: argparse.Namespace, is_thing_map: dict[int, bool] | None = None
                ) -> tuple[nn.Module, nn.Module, dict]:
    """Model, criterion and post-processors (``bbox``; ``segm``/``panoptic`` with masks) for the parsed flags.

    ``is_thing_map`` (category id -> True for things) is the panoptic dataset's; without it the COCO panoptic rule.
    """
    return architecture(getattr(args, "meta_arch", "detr")).build(args, is_thing_map)
