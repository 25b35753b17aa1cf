"""One run, training or evaluation, wired from resolved flags: data, model, optimiser, checkpoints, logs.

``main.py`` (the command line) and ``run_with_submitit.py`` (SLURM) both call :func:`run`.
"""
import argparse
import datetime
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import cli
from datasets import RunData, build_run_data
from datasets.loaders import Loaders, build_loaders
from engine import Evaluation, NonFiniteLossError, finish_epoch, summary_line, train_one_epoch
from models import architecture, build_model
from util import training_state
from util.checkpoint import save_checkpoint
from util.config import dump_config, is_plain
from util.distributed import ProcessSetup, init_distributed, is_main_process
from util.optimizer import build_lr_scheduler, build_optimizer
from util.provenance import git_sha


@dataclass
class Session:
    """Everything one run holds once built: the resolved flags, this process's place, the data and loaders, the
    model (``model``: wrapped for DDP when distributed; ``model_without_ddp``), criterion, optimiser, schedule and
    the evaluation."""

    args: argparse.Namespace
    process: ProcessSetup
    data: RunData
    loaders: Loaders
    output_dir: Path | None
    model: nn.Module
    model_without_ddp: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    evaluation: Evaluation
    n_parameters: int


def run(args: argparse.Namespace) -> dict:
    """Train (or with ``--eval`` evaluate) as the flags say; returns the last evaluation's stats."""
    session = prepare(args)
    return evaluate_only(session) if session.args.eval else train(session)


def prepare(args: argparse.Namespace) -> Session:
    """Check and resolve the flags, start the process group, build data, model, optimiser and evaluation, write
    the resolved flags to ``OUTPUT_DIR/config.yaml`` and load any starting weights."""
    cli.check_args(args)
    if not args.coco_path:
        raise ValueError("--coco_path is required: a folder with train2017/, val2017/ and annotations/")
    process = init_distributed(args.device, args.dist_url)
    print(f"git: {git_sha()}", flush=True)
    _seed(args.seed + process.rank)
    data = build_run_data(args, with_train=not args.eval)
    output_dir = Path(args.output_dir) if args.output_dir else None
    auto_resume = training_state.auto_resume_path(output_dir) if args.auto_resume and not args.eval else ""
    args = cli.resolve_args(args, num_classes=data.num_classes, device=process.device, auto_resume_path=auto_resume)
    device = torch.device(args.device)

    model_without_ddp, criterion, postprocessors = build_model(args, is_thing_map=data.is_thing_map)
    model = model_without_ddp.to(device)
    if process.distributed:
        device_ids = [process.gpu] if process.gpu is not None else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("number of params:", n_parameters, flush=True)
    optimizer = build_optimizer(architecture(args.meta_arch).param_groups(model_without_ddp, args), args.lr,
                                args.weight_decay, args.sgd)
    lr_scheduler = build_lr_scheduler(optimizer, args.lr_drop, args.lr_drop_epochs)
    loaders = build_loaders(data.train, data.val, args.batch_size, args.num_workers, process.distributed,
                            process.world_size)
    evaluation = Evaluation(model, criterion, postprocessors, loaders.val, data.coco_ground_truth, device,
                            args.print_freq, output_dir, data.panoptic_ground_truth)
    if output_dir is not None and is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cli.get_args_parser(), args, output_dir / "config.yaml")
    if args.frozen_weights and not args.resume:  # (a resumed run's checkpoint holds the frozen box model too)
        training_state.load_frozen_weights(model_without_ddp, args.frozen_weights, args.num_classes)
    if args.finetune_from:
        training_state.load_finetune_weights(model_without_ddp, args.finetune_from)
    return Session(args, process, data, loaders, output_dir, model, model_without_ddp, criterion, optimizer,
                   lr_scheduler, evaluation, n_parameters)


def evaluate_only(s: Session) -> dict:
    """``--eval``: the ``--resume`` model's COCO (and PQ) evaluation; COCOeval's state to ``OUTPUT_DIR/eval.pth``."""
    if s.args.resume:
        training_state.resume(s.args.resume, s.model_without_ddp, s.args.num_classes)
    test_stats, coco_evaluator = s.evaluation()
    if s.output_dir is not None and is_main_process():
        save_checkpoint(coco_evaluator.coco_eval["bbox"].eval, s.output_dir / "eval.pth")
    _print_summary(test_stats, s.output_dir)
    return test_stats


def train(s: Session) -> dict:
    """Epochs from the start (or the resumed) epoch to ``--epochs``: train, step the schedule, save the checkpoint,
    evaluate when due, log. A non-finite loss stops the run naming the last good checkpoint."""
    args, output_dir = s.args, s.output_dir
    start_epoch, test_stats = _resume_training(s)
    if s.process.distributed:
        s.loaders.train_sampler.set_epoch(start_epoch)
        shard = list(s.loaders.train_sampler)
        print(f"data: rank {s.process.rank} of {s.process.world_size} trains on {len(shard)} of {len(s.data.train)} "
              f"images per epoch; epoch {start_epoch} starts with images {shard[:8]}", flush=True)
    print("Start training", flush=True)
    start_time = time.time()
    flags = {k: v for k, v in vars(args).items() if is_plain(v)}
    for epoch in range(start_epoch, args.epochs):
        if s.process.distributed:
            s.loaders.train_sampler.set_epoch(epoch)
        try:
            train_stats = train_one_epoch(s.model, s.criterion, s.loaders.train, s.optimizer, torch.device(args.device),
                                          epoch, args.clip_max_norm, args.print_freq)
        except NonFiniteLossError as err:
            kept = output_dir / training_state.CHECKPOINT_NAME if output_dir else "none (no --output_dir)"
            raise SystemExit(f"Stopping: {err}. Last good checkpoint: {kept}") from err
        s.lr_scheduler.step()
        if output_dir is not None:
            keep_copy = (epoch + 1) in (args.lr_drop_epochs or ()) or (epoch + 1) % args.lr_drop == 0 \
                or (epoch + 1) % 100 == 0
            training_state.save_training_state(output_dir, s.model_without_ddp, s.optimizer, s.lr_scheduler, epoch,
                                               flags, train_stats, keep_copy)
        test_stats = finish_epoch(epoch, train_stats, s.evaluation if _evaluation_due(epoch, args) else None,
                                  output_dir, s.n_parameters) or test_stats
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}", flush=True)
    _print_summary(test_stats, output_dir)
    return test_stats


def _resume_training(s: Session) -> tuple[int, dict]:
    """(first epoch to train, stats of an evaluation finished here): from ``--resume`` (optimiser, schedule, epoch
    and RNG states too), else ``--start_epoch``."""
    if not s.args.resume:
        return s.args.start_epoch, {}
    point = training_state.resume(s.args.resume, s.model_without_ddp, s.args.num_classes, s.optimizer,
                                  s.lr_scheduler)
    if point is None:  # a weights-only file (an official checkpoint): train it from --start_epoch
        return s.args.start_epoch, {}
    test_stats = {}
    if s.output_dir is not None and point.train_stats is not None and \
            point.saved_epoch not in training_state.logged_epochs(s.output_dir):
        # The run stopped between saving this checkpoint and logging its epoch (e.g. a requeue during evaluation):
        # finish that epoch's evaluation and log line first.
        due = _evaluation_due(point.saved_epoch, s.args)
        test_stats = finish_epoch(point.saved_epoch, point.train_stats, s.evaluation if due else None, s.output_dir,
                                  s.n_parameters)
    return point.start_epoch, test_stats


def _evaluation_due(epoch: int, args: argparse.Namespace) -> bool:
    return (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _print_summary(stats: dict, output_dir: Path | None) -> None:
    if is_main_process() and "coco_eval_bbox" in stats:
        print(summary_line(stats, output_dir), flush=True)
