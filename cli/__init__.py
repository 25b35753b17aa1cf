"""The command line: flags grouped by topic, each architecture's own group, presets, validation.

``get_args_parser()`` returns the whole parser (every official DETR flag with its official default, plus each
registered architecture's flags); ``parse_args(argv)`` applies ``--config`` presets and checks the result; errors
name the flag (or the preset file and key).
"""
import argparse

from cli import (
    attention,
    backbone,
    data,
    deformable_attention,
    distributed,
    evaluation,
    loss,
    model,
    training,
    transformer,
)
from models import ARCHITECTURES, architecture
from util.config import ConfigError, parse_args_with_config

TOPICS = (model, backbone, attention, transformer, deformable_attention, loss, data, training, evaluation,
          distributed)


def get_args_parser() -> argparse.ArgumentParser:
    """Every flag, without ``-h`` (so that other parsers can take it as a parent, as the official one)."""
    parser = argparse.ArgumentParser("Set transformer detector", add_help=False)
    parser.add_argument("--config", type=str, default=None,
                        help="flat YAML preset whose keys are flag names; explicit flags override it")
    for topic in TOPICS:
        topic.add_flags(parser)
    for arch in ARCHITECTURES.values():
        arch.add_flags(parser)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first flag whose value cannot be used (alone or with the others)."""
    for topic in TOPICS:
        topic.check(args)
    architecture(args.meta_arch).check_flags(args)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check ``argv`` (default: the command line); a bad flag or preset ends in ``parser.error``."""
    try:
        args = parse_args_with_config(parser, argv)
        check_args(args)
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    return args


def resolve_args(args: argparse.Namespace, *, num_classes: int, device: str, auto_resume_path: str
                 ) -> argparse.Namespace:
    """The flags as this run uses them, decided once: ``num_classes`` from the annotations unless given, the
    ``device`` this process computes on, and ``resume`` from ``auto_resume_path`` (a checkpoint left in the output
    folder) when there is one. Returns a new Namespace; ``args`` is left as parsed."""
    resolved = argparse.Namespace(**vars(args))
    if resolved.num_classes is None:
        resolved.num_classes = num_classes
        print(f"num_classes inferred from the annotations: {num_classes}", flush=True)
    resolved.device = device
    if auto_resume_path:
        resolved.resume, resolved.finetune_from = auto_resume_path, ""
    return resolved


# The topics whose flags describe the model (all but those of its training, data, evaluation and processes).
MODEL_TOPICS = tuple(t for t in TOPICS if t not in (loss, data, training, evaluation, distributed))
# Flags of those topics that leave the model's entries (names and shapes) as they are.
NOT_MODEL_SHAPING = ("frozen_weights", "pretrained_backbone", "backbone_trainable_layers", "lr_attn", "dropout")


def model_flags() -> tuple[str, ...]:
    """Names (dests) of the flags that decide a model's parameters: those of the model topics (model, backbone,
    attention, transformer ...) and every architecture's own flags, less those that only choose how it trains. A
    checkpoint that does not fit a model is compared with the run on these."""
    parser = argparse.ArgumentParser(add_help=False)
    for topic in MODEL_TOPICS:
        topic.add_flags(parser)
    for arch in ARCHITECTURES.values():
        arch.add_flags(parser)
    return tuple(dict.fromkeys(a.dest for a in parser._actions if a.dest not in NOT_MODEL_SHAPING))
