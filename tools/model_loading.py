"""A trained model for the tools that use one (tools/predict.py, tools/export.py): built and loaded from ``--resume``
(a checkpoint file, an https URL or a torch.hub entry name of hubconf.py), with the flags it was trained with.

Which flags build the model, weakest first: the parser's defaults; the model flags a checkpoint of ours stores under
``args`` (with ``--image_size``, ``--dataset_file`` and the dataset folders, which the pictures' category names come
from); a ``--config`` preset; flags given on the command line. Official checkpoints store no usable flags: give their
preset (``--config configs/detr_r50.yaml`` ...) or their flags.
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import cli
from datasets.category_names import category_names_for, coco_category_names
from models import build_model
from util.checkpoint import load_checkpoint
from util.config import load_preset, parse_args_with_config
from util.training_state import class_count_hint, flag_differences, model_state, state_for, state_mismatch
from util.user_error import UserError

# Flags a checkpoint's stored ``args`` give the tools besides the model flags (cli.model_flags()).
STORED_DATA_FLAGS = ("image_size", "dataset_file", "coco_path", "coco_panoptic_path", "data_path", "data_pipeline",
                     "remap_mscoco_category")


@dataclass
class LoadedModel:
    """``model`` in eval mode on ``args.device``; ``postprocessors`` as ``models.build_model`` returns them;
    ``args`` the flags it was built from; ``category_names`` id -> name (may be empty) and ``names_source`` where
    they came from; ``source`` what ``--resume`` named."""

    model: nn.Module
    postprocessors: dict
    args: argparse.Namespace
    category_names: dict[int, str]
    names_source: str
    source: str


def parse_with_checkpoint_flags(parser: argparse.ArgumentParser, argv: list[str] | None
                                ) -> tuple[argparse.Namespace, dict | None]:
    """Parse ``argv`` with the model flags of the ``--resume`` checkpoint under any ``--config`` preset and the
    explicit flags. Returns (flags, the loaded checkpoint, or None for a hub entry name)."""
    args = parser.parse_args(argv)
    if not args.resume:
        raise UserError("--resume is required: a checkpoint file, an https URL or a hub entry name (e.g. "
                        "detr_resnet50)")
    checkpoint = None if _hub_entry(args.resume) else load_checkpoint(args.resume, flag="--resume")
    stored = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if isinstance(stored, dict):  # ours (an official checkpoint pickles another code base's Namespace)
        wanted = set(cli.model_flags()) | set(STORED_DATA_FLAGS)
        dests = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in stored.items() if k in wanted and k in dests})
    if args.config:
        parser.set_defaults(**load_preset(parser, args.config))
    args = parser.parse_args(argv)
    args.pretrained_backbone = False  # every weight comes from the checkpoint: no ImageNet download
    args.frozen_weights = None
    cli.check_args(args)
    if isinstance(stored, dict) and stored.get("label_to_category_id") is not None:
        args.label_to_category_id = stored["label_to_category_id"]  # --remap_mscoco_category: labels -> ids
    return args, checkpoint


def load_model(args: argparse.Namespace, checkpoint: dict | None) -> LoadedModel:
    """The model ``args`` describe with the weights of ``checkpoint`` (or of the hub entry ``args.resume``), in
    eval mode on ``args.device``; errors that the user can fix are one-line UserErrors."""
    device = torch.device(args.device)
    args = cli.resolve_data_pipeline(args)
    if checkpoint is None:
        model, postprocessors, args = _hub_model(args)
    else:
        model, _, postprocessors = build_model(args)
        _load_weights(model, checkpoint, args)
    names, names_source = _category_names(args, hub=checkpoint is None, checkpoint=checkpoint)
    return LoadedModel(model.to(device).eval(), postprocessors, args, names, names_source, args.resume)


def _hub_entry(name: str) -> bool:
    """Whether ``name`` is an entry of hubconf.py (not a file or URL)."""
    import hubconf

    return not Path(name).exists() and "/" not in name and name in hubconf.__all__ and name != "torch"


def _hub_model(args: argparse.Namespace) -> tuple[nn.Module, dict, argparse.Namespace]:
    """The official model of hub entry ``args.resume`` with its weights, its post-processors, and ``args`` set to
    what it was trained with (image size 800, COCO classes, masks for the panoptic entries)."""
    import hubconf
    from models.detr import PostProcess
    from models.detr.segmentation import PostProcessPanoptic, PostProcessSegm, coco_panoptic_is_thing_map

    name = args.resume
    if name in hubconf.RTDETRV2_MODELS:
        model, postprocessor = getattr(hubconf, name)(pretrained=True, return_postprocessor=True)
        preset = hubconf.CONFIGS / hubconf.RTDETRV2_MODELS[name][0]
        parser = argparse.ArgumentParser(parents=[cli.get_args_parser()])
        preset_args = parse_args_with_config(parser, ["--config", str(preset), "--device", args.device])
        return model, {"bbox": postprocessor}, cli.resolve_data_pipeline(preset_args)
    if name in hubconf.PRESET_MODELS:
        preset, _, page = hubconf.PRESET_MODELS[name]
        raise UserError(f"--resume {name}: the official weights are published at {page}, which cannot be downloaded "
                        f"here; fetch the file and run with --resume FILE --config configs/{preset}")
    panoptic = name.endswith("_panoptic")
    model = getattr(hubconf, name)(pretrained=True)
    resolved = argparse.Namespace(**vars(args))
    resolved.masks, resolved.image_size = panoptic, 800
    resolved.dataset_file = "coco_panoptic" if panoptic else "coco"
    resolved.num_classes = hubconf.PANOPTIC_CLASSES if panoptic else 91
    postprocessors = {"bbox": PostProcess()}
    if panoptic:
        postprocessors["segm"] = PostProcessSegm()
        postprocessors["panoptic"] = PostProcessPanoptic(coco_panoptic_is_thing_map(resolved.num_classes))
    return model, postprocessors, resolved


def _load_weights(model: nn.Module, checkpoint: dict, args: argparse.Namespace) -> None:
    """Load the checkpoint's ``model`` entries strictly; a checkpoint that does not fit names the flags that differ
    from its stored ones, or how the entries differ."""
    state = state_for(model, model_state(checkpoint, "--resume"))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        run_flags = {name: getattr(args, name) for name in cli.model_flags() if hasattr(args, name)}
        differences = flag_differences(checkpoint, run_flags)
        hint = class_count_hint(state, model, args.num_classes) if args.num_classes is not None else ""
        why = f"the flags differ from the checkpoint's: {'; '.join(differences)}" if differences else \
            f"{state_mismatch(model, state)} (give the model flags or --config preset it was trained with)"
        raise UserError(f"--resume {args.resume} does not fit the model built from these flags{hint}; {why}") from exc


def _category_names(args: argparse.Namespace, hub: bool, checkpoint: dict | None = None
                    ) -> tuple[dict[int, str], str]:
    """(id -> name, where from): the names a checkpoint of ours stores, else the dataset's annotation files when they
    are found, else COCO's names for models with COCO's class count (the official ones), else none."""
    stored = checkpoint.get("category_names") if isinstance(checkpoint, dict) else None
    if isinstance(stored, dict) and stored:
        return {int(k): str(v) for k, v in stored.items()}, f"the checkpoint {args.resume}"
    names, files = category_names_for(args)
    if files:
        return names, ", ".join(map(str, files))
    if hub or args.num_classes in (None, 91, 250):
        return coco_category_names(), "COCO's category names"
    return {}, "no annotation file found (--coco_path): category ids are shown"
