"""The model family's registry entry: what an architecture provides to the rest of the codebase.

An architecture is a package under ``models/`` that defines one :class:`Architecture` and is listed once in
``models/__init__.py``; nothing else (main.py, engine.py, the flag schema) names it.
"""
import argparse
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """``name``: the ``--meta_arch`` value.

    ``build(args, is_thing_map)`` -> (model, criterion, postprocessors): the only place that reads the flags
    (already checked; ``args.num_classes`` resolved); ``is_thing_map`` (category id -> thing?) comes from the
    dataset when it has panoptic annotations.
    ``add_flags(parser)`` adds the architecture's own argument group: flags it owns, which no other architecture
    reads (another architecture's flag changed from its default is an error, cli.check_args).
    ``check_flags(args)`` raises ValueError naming a flag whose value this architecture cannot use (its own flags,
    and shared ones in combination with them).
    ``param_groups(model, args)`` -> the optimiser's parameter groups (see models/param_groups.py).
    ``topics``: the optional topics of the shared schema (cli/, e.g. ``backbone``, ``deformable_attention``) whose
    flags this architecture reads; the other topics (model, data, training, evaluation, distributed) are read for
    every architecture. ``unused_shared_flags``: flags of the topics it reads that it does not. A flag it does not
    read, changed from its default, is an error rather than silently ignored. ``data_pipeline``: the augmentation
    and batching it trains with unless ``--data_pipeline`` says otherwise (``detr`` or ``rtdetr``, datasets/).
    """

    name: str
    build: Callable[[argparse.Namespace, dict | None], tuple[nn.Module, nn.Module, dict]]
    add_flags: Callable[[argparse.ArgumentParser], None]
    check_flags: Callable[[argparse.Namespace], None]
    param_groups: Callable[[nn.Module, argparse.Namespace], list[dict]]
    topics: tuple[str, ...] = ()
    unused_shared_flags: tuple[str, ...] = ()
    data_pipeline: str = "detr"
