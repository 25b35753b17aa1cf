"""The command line: flags grouped by topic, each architecture's own group, presets, validation.

``get_args_parser()`` returns the whole parser (every official DETR flag with its official default, plus each
registered architecture's flags); ``parse_args(argv)`` applies ``--config`` presets and checks the result; errors
name the flag (or the preset file and key).

Every flag has one owner: the shared schema (the topics below) or one architecture (its own argument group). The
topics model, data, training, evaluation and distributed are read for every architecture; the others are read by
the architectures that list them (``Architecture.topics``, less their ``unused_shared_flags``). A flag of another
architecture than ``--meta_arch``, or a shared flag it does not read, is an error when changed from its default,
instead of being ignored.
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
    real_time,
    training,
    transformer,
)
from models import ARCHITECTURES, architecture
from util.config import ConfigError, parse_args_with_config

TOPICS = (model, backbone, attention, transformer, deformable_attention, real_time, loss, data, training, evaluation,
          distributed)
# the topics an architecture reads only when its ``Architecture.topics`` names them
OPTIONAL_TOPICS = {topic.__name__.rsplit(".", 1)[-1]: topic
                   for topic in (backbone, attention, transformer, deformable_attention, real_time, loss)}


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


def flag_owners() -> dict[str, str]:
    """dest -> name of the architecture whose argument group defines the flag (shared flags are absent)."""
    owners: dict[str, str] = {}
    for arch in ARCHITECTURES.values():
        parser = argparse.ArgumentParser(add_help=False)
        arch.add_flags(parser)
        owners.update({action.dest: arch.name for action in parser._actions})
    return owners


def _option(parser: argparse.ArgumentParser, dest: str, value) -> str:
    """The option that sets ``dest`` to ``value`` (``--no_use_dn`` for False), else the flag's first option."""
    actions = [a for a in parser._actions if a.dest == dest and a.option_strings]
    chosen = next((a for a in actions if a.const is not None and a.const == value), actions[0])
    return chosen.option_strings[0]


def topic_of_flags() -> dict[str, str]:
    """dest -> name of the optional topic whose argument group defines the flag."""
    topics: dict[str, str] = {}
    for name, topic in OPTIONAL_TOPICS.items():
        parser = argparse.ArgumentParser(add_help=False)
        topic.add_flags(parser)
        topics.update({action.dest: name for action in parser._actions})
    return topics


def readers(dest: str) -> list[str]:
    """The architectures that read the shared flag ``dest``."""
    topic = topic_of_flags().get(dest)
    return [name for name, arch in ARCHITECTURES.items()
            if (topic is None or topic in arch.topics) and dest not in arch.unused_shared_flags]


def check_flag_owners(args: argparse.Namespace) -> None:
    """Raise ValueError naming a flag changed from its default (on the command line or in a preset) that
    ``--meta_arch`` would ignore: another architecture's own flag (checked first: a preset of another
    architecture), or a shared flag it does not read."""
    arch = architecture(args.meta_arch)
    defaults = get_args_parser()
    owners, topics = flag_owners(), topic_of_flags()
    changed = [a.dest for a in defaults._actions
               if hasattr(args, a.dest) and getattr(args, a.dest) != defaults.get_default(a.dest)]
    for dest in changed:
        owner = owners.get(dest)
        if owner is not None and owner != arch.name:
            raise ValueError(f"{_option(defaults, dest, getattr(args, dest))} is a flag of --meta_arch {owner}; "
                             f"--meta_arch {arch.name} does not read it")
    for dest in changed:
        if dest in owners:
            continue
        if (dest in topics and topics[dest] not in arch.topics) or dest in arch.unused_shared_flags:
            raise ValueError(f"{_option(defaults, dest, getattr(args, dest))} is not read by --meta_arch "
                             f"{arch.name} (it is read by {', '.join(readers(dest)) or 'no architecture'})")


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first flag whose value cannot be used (alone or with the others)."""
    model.check(args)  # --meta_arch first: the other checks depend on the architecture
    check_flag_owners(args)
    arch = architecture(args.meta_arch)
    for topic in TOPICS:  # the topics the architecture does not read are at their (valid) defaults
        if topic not in OPTIONAL_TOPICS.values() or topic.__name__.rsplit(".", 1)[-1] in arch.topics:
            topic.check(args)
    data.check_pipeline(args, args.data_pipeline or arch.data_pipeline)
    arch.check_flags(args)


def resolve_data_pipeline(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with ``data_pipeline`` decided: the flag's, else the architecture's own (a new Namespace)."""
    return argparse.Namespace(**{**vars(args), "data_pipeline": args.data_pipeline
                                 or architecture(args.meta_arch).data_pipeline})


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check ``argv`` (default: the command line); a bad flag or preset ends in ``parser.error``."""
    try:
        args = parse_args_with_config(parser, argv)
        check_args(args)
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    return args


def resolve_args(args: argparse.Namespace, *, num_classes: int, device: str, auto_resume_path: str,
                 label_to_category_id: list[int] | None = None) -> argparse.Namespace:
    """The flags as this run uses them, decided once: ``num_classes`` from the annotations unless given, the
    ``device`` this process computes on, ``resume`` from ``auto_resume_path`` (a checkpoint left in the output
    folder) when there is one, the ``data_pipeline`` and, with ``--remap_mscoco_category``, the dataset's
    ``label_to_category_id``. Returns a new Namespace; ``args`` is left as parsed."""
    resolved = resolve_data_pipeline(args)
    resolved.label_to_category_id = label_to_category_id
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
