"""A run's state on disk: starting weights (``--frozen_weights``, ``--finetune_from``), resuming (``--resume``,
``--auto_resume``) and the per-epoch ``checkpoint.pth``.

File-level safety (atomic writes, ``weights_only`` loading) is util/checkpoint.py's; this module decides what goes
into a checkpoint and how one is put back.
"""
import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from util.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from util.distributed import all_gather, barrier, broadcast_object, get_rank, is_main_process
from util.ema import ModelEMA
from util.optimizer import load_optimizer_state

CHECKPOINT_NAME = "checkpoint.pth"


def model_state(checkpoint: dict, flag: str) -> dict:
    """The model weights of a loaded checkpoint: its ``model`` entry, or in the official RT-DETR and D-FINE files
    (``{"ema": {"module": ...}}``, training states included) the moving average, which their code evaluates and
    releases; ``flag`` names the option the file came from."""
    ema = checkpoint.get("ema") if isinstance(checkpoint, dict) else None
    if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
        return ema["module"]
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        keys = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{flag}: the file has no 'model' entry (keys: {keys})")
    return checkpoint["model"]


def state_for(model: nn.Module, state: dict) -> dict:
    """A checkpoint's model entries named for ``model``: a box model's under a mask head gain the ``detr.`` prefix;
    a segmentation checkpoint's box model (its ``detr.`` entries) loads into a plain DETR."""
    wants_prefix = any(k.startswith("detr.") for k in model.state_dict())
    has_prefix = any(k.startswith("detr.") for k in state)
    if wants_prefix and not has_prefix:
        return {f"detr.{k}": v for k, v in state.items()}
    if has_prefix and not wants_prefix:
        return {k[len("detr."):]: v for k, v in state.items() if k.startswith("detr.")}
    return state


def class_count_hint(state: dict, model: nn.Module, num_classes: int) -> str:
    """'; the checkpoint has N classes and this run M: add --num_classes N' when the classifier's size is what
    differs (``num_classes``: the run's; its classifier may have extra outputs, as DETR's "no object")."""
    own = model.state_dict()
    for key, value in state.items():
        is_classifier = key.endswith(("class_embed.bias", "score_head.bias")) or ".score_head." in key \
            and key.endswith(".bias")
        if is_classifier and key in own and own[key].shape != value.shape:
            file_classes = value.shape[0] - (own[key].shape[0] - num_classes)
            return (f"; the checkpoint has {file_classes} classes and this run {num_classes}: add --num_classes "
                    f"{file_classes}")
    return ""


def flag_differences(checkpoint: dict, run_flags: dict | None) -> list[str]:
    """'--NAME VALUE here, VALUE in the checkpoint' for each of ``run_flags`` (name -> this run's value) whose value
    differs from the one stored under the checkpoint's ``args`` (a plain dict in ours, an argparse.Namespace in the
    official ones); flags the checkpoint does not record are not compared."""
    saved = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if isinstance(saved, argparse.Namespace):
        saved = vars(saved)
    if not isinstance(saved, dict) or not run_flags:
        return []

    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    return [f"--{name} {value!r} here, {saved[name]!r} in the checkpoint" for name, value in run_flags.items()
            if name in saved and plain(saved[name]) != plain(value)]


def state_mismatch(model: nn.Module, state: dict) -> str:
    """One line on how ``state`` differs from ``model``'s entries: shapes, missing and unexpected names."""
    own = model.state_dict()
    reshaped = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} entries of other shapes (e.g. {k}: checkpoint {tuple(state[k].shape)}, "
                     f"model {tuple(own[k].shape)})")
    if missing:
        parts.append(f"{len(missing)} model entries missing from the checkpoint (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} checkpoint entries unknown to the model (e.g. {unexpected[0]})")
    return "; ".join(parts) or "the entries do not load"


def _does_not_fit(flag: str, path: str, what: str, state: dict, model: nn.Module, num_classes: int,
                  differences: list[str]) -> str:
    hint = class_count_hint(state, model, num_classes)
    if differences:
        return (f"{flag} {path} does not fit the {what} built from these flags{hint}; they differ from the "
                f"checkpoint's: {'; '.join(differences)} (use the checkpoint's values, or --finetune_from to load "
                "what fits)")
    return (f"{flag} {path} does not fit the {what} built from these flags (backbone, hidden_dim, layers, "
            f"num_queries, num_classes, --masks ...){hint}: {state_mismatch(model, state)}")


def load_frozen_weights(model: nn.Module, path: str, num_classes: int, run_flags: dict | None = None) -> None:
    """The official segmentation recipe: the box model of ``path`` under a new mask head (``model.detr``).
    ``run_flags``: this run's model-shaping flags, compared with the checkpoint's when the weights do not fit."""
    box_model = model.detr
    checkpoint = load_checkpoint(path, flag="--frozen_weights")
    state = state_for(box_model, model_state(checkpoint, "--frozen_weights"))
    try:
        box_model.load_state_dict(state)
    except RuntimeError as exc:
        differences = [d for d in flag_differences(checkpoint, run_flags) if not d.startswith("--masks ")]
        raise ValueError(_does_not_fit("--frozen_weights", path, "box model", state, box_model, num_classes,
                                       differences)) from exc


def load_finetune_weights(model: nn.Module, path: str) -> None:
    """Load every entry of ``path`` whose name and shape fit ``model`` (ours, or an official RT-DETR / D-FINE file's
    moving average); the model's entries of other shapes (the class heads and denoising label embeddings after a
    change of ``--num_classes``) and those the file lacks keep their fresh initialisation. Prints one line: how many
    entries loaded, then by name (indices folded, ``class_embed.{0-5}.weight``) those of other shapes with both
    shapes, those the file lacks and the file's entries the model does not have."""
    state = state_for(model, model_state(load_checkpoint(path, flag="--finetune_from"), "--finetune_from"))
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise ValueError(f"--finetune_from {path}: no entry of the checkpoint fits this model: "
                         f"{state_mismatch(model, state)}")
    reshaped = {k: f"file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
                if k in state and k not in fitting}
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    model.load_state_dict(fitting, strict=False)
    parts = [f"loaded {len(fitting)} of {len(own)} model entries"]
    if reshaped:
        parts.append(f"skipped {len(reshaped)} entries of other shapes, left at initialisation: "
                     f"{folded_names(list(reshaped), reshaped)}")
    if missing:
        parts.append(f"{len(missing)} model entries not in the file, left at initialisation: {folded_names(missing)}")
    if unknown:
        parts.append(f"{len(unknown)} file entries unknown to the model, ignored: {folded_names(unknown)}")
    print(f"--finetune_from {path}: {'; '.join(parts)}", flush=True)


def folded_names(names: list[str], details: dict[str, str] | None = None) -> str:
    """``names`` (state-dict keys) as one compact, comma-separated string, in their order: keys that differ only in
    numeric components fold into ranges (``class_embed.{0-5}.weight``), then keys of one module into a set of leaves
    (``class_embed.{bias,weight}``), among keys with the same ``details`` (name -> text shown in parentheses)."""
    details = details or {}
    by_template: dict[tuple, list[tuple[int, ...]]] = {}
    for name in names:
        parts = name.split(".")
        template = tuple("{}" if p.isdigit() else p for p in parts)
        by_template.setdefault((template, details.get(name)), []).append(tuple(int(p) for p in parts if p.isdigit()))
    modules: dict[tuple, list[str]] = {}
    for (template, detail), indices in by_template.items():
        for folded in _fold_indices(list(template), indices):
            module, _, leaf = folded.rpartition(".")
            modules.setdefault((module, detail), []).append(leaf)
    entries = []
    for (module, detail), leaves in modules.items():
        leaf = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
        entries.append((f"{module}.{leaf}" if module else leaf) + (f" ({detail})" if detail else ""))
    return ", ".join(entries)


def _fold_indices(template: list[str], indices: list[tuple[int, ...]]) -> list[str]:
    """The keys ``template`` (``"{}"`` for each numeric component) with ``indices`` as one folded key when they are
    every combination of their values at each position, else one key each."""
    values = [sorted({index[i] for index in indices}) for i in range(len(indices[0]))]
    if math.prod(len(v) for v in values) != len(set(indices)):
        return [_filled(template, [str(i) for i in index]) for index in indices]
    return [_filled(template, [_index_set(v) for v in values])]


def _filled(template: list[str], components: list[str]) -> str:
    components = iter(components)
    return ".".join(next(components) if part == "{}" else part for part in template)


def _index_set(values: list[int]) -> str:
    """[3] -> '3'; [0, 1, 2] -> '{0-2}'; [0, 2] -> '{0,2}'."""
    if len(values) == 1:
        return str(values[0])
    if values == list(range(values[0], values[-1] + 1)):
        return f"{{{values[0]}-{values[-1]}}}"
    return "{" + ",".join(map(str, values)) + "}"


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: ``start_epoch``, and the last saved epoch with its training stats (to finish
    that epoch's evaluation and log line if the run stopped before them)."""

    start_epoch: int
    saved_epoch: int
    train_stats: dict | None


def resume(path: str, model: nn.Module, num_classes: int, optimizer: torch.optim.Optimizer | None = None,
           lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
           run_flags: dict | None = None, ema: ModelEMA | None = None,
           scaler: torch.amp.GradScaler | None = None) -> ResumePoint | None:
    """Load ``path``'s weights into ``model``; with ``optimizer``, also the optimiser, schedule, epoch counter and this
    process's RNG states; with ``ema`` (``--ema``) and ``scaler`` (``--amp fp16``) their states too (an EMA starts
    from the loaded weights when the file has none). Returns where training continues, or None for weights only.
    ``run_flags``: this run's model-shaping flags (name -> value); when the weights do not fit, the error names
    those that differ from the checkpoint's."""
    checkpoint = load_checkpoint(path, flag="--resume")
    state = model_state(checkpoint, "--resume")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(_does_not_fit("--resume", path, "model", state, model, num_classes,
                                       flag_differences(checkpoint, run_flags))) from exc
    if ema is not None and not ema.load(checkpoint):
        ema.module.load_state_dict(model.state_dict())
        print(f"--ema: {path} holds no model_ema; the average starts from its weights", flush=True)
    if optimizer is None or not all(k in checkpoint for k in ("optimizer", "lr_scheduler", "epoch")):
        return None
    if scaler is not None and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
    try:
        load_optimizer_state(optimizer, checkpoint["optimizer"])
    except ValueError as exc:
        raise ValueError(f"--resume {path}: the optimizer state does not fit this run's parameter groups; keep "
                         "--backbone_trainable_layers, --lr_backbone > 0 and --backbone_attn as in the run that wrote "
                         f"it (or use --finetune_from): {exc}") from exc
    lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if "rng_state" in checkpoint and get_rank() < len(checkpoint["rng_state"]):
        set_rng_state(checkpoint["rng_state"][get_rank()])
    print(f"resumed from {path} at epoch {checkpoint['epoch'] + 1}", flush=True)
    return ResumePoint(checkpoint["epoch"] + 1, checkpoint["epoch"], checkpoint.get("train_stats"))


def auto_resume_path(output_dir: Path | None) -> str:
    """``OUTPUT_DIR/checkpoint.pth`` when it exists (decided by the main process for all), else ''."""
    if output_dir is None:
        return ""
    exists = broadcast_object((output_dir / CHECKPOINT_NAME).is_file() if is_main_process() else None)
    return str(output_dir / CHECKPOINT_NAME) if exists else ""


def logged_epochs(output_dir: Path) -> set[int]:
    """Epochs that already have their line in ``OUTPUT_DIR/log.txt`` (read by the main process, given to all)."""
    def read() -> set[int]:
        log = output_dir / "log.txt"
        if not log.is_file():
            return set()
        return {json.loads(line)["epoch"] for line in log.read_text().splitlines() if line.strip()}

    return broadcast_object(read() if is_main_process() else None)


def save_training_state(output_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        lr_scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, flags: dict,
                        train_stats: dict, keep_copy: bool, extra: dict | None = None) -> None:
    """``checkpoint.pth`` (atomically) with the model, optimiser, schedule, epoch, ``flags`` (a plain dict), every
    process's RNG states, the epoch's training stats and the ``extra`` entries (``model_ema`` and ``ema_updates``
    with ``--ema``, ``scaler`` with ``--amp fp16``); with ``keep_copy`` also ``checkpointNNNN.pth``.

    Every process takes part (its RNG states are gathered); only the main process writes.
    """
    rng_states = all_gather(rng_state())
    if is_main_process():
        paths = [output_dir / CHECKPOINT_NAME] + ([output_dir / f"checkpoint{epoch:04}.pth"] if keep_copy else [])
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "lr_scheduler": lr_scheduler.state_dict(), "epoch": epoch, "args": flags,
                 "rng_state": rng_states, "train_stats": train_stats, **(extra or {})}
        for path in paths:
            save_checkpoint(state, path)
    barrier()
