"""One run, training or evaluation, wired from resolved flags: data, model, optimiser, checkpoints, logs.

``main.py`` (the command line) and ``run_with_submitit.py`` (SLURM) both call :func:`run`.
"""
import argparse
import datetime
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import cli
from datasets import RunData, build_run_data, check_data_folder
from datasets.bad_images import SkippedImages
from datasets.coco import IMAGE_NORMALIZATION
from datasets.loaders import Loaders, build_loaders
from engine import Evaluation, finish_epoch, summary_line, train_one_epoch
from models import architecture, build_model
from models.attention_weights import set_need_weights
from models.frozen_norm_folding import fold_frozen_batchnorm
from models.param_groups import parse_group_pattern, pattern_param_groups
from util import training_state
from util.amp import Precision
from util.best_checkpoint import BEST_NAME, BestCheckpoint, keep_best
from util.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from util.compile import compile_model
from util.config import dump_config, is_plain
from util.distributed import ProcessSetup, broadcast_object, init_distributed, is_main_process, local_rank_and_size
from util.ema import ModelEMA
from util.loss_log import NonFiniteLossError
from util.optimizer import FlatCosineSchedule, LinearWarmup, build_lr_scheduler, build_optimizer, load_optimizer_state
from util.provenance import git_sha
from util.stop_signals import Stopped, StopSignals
from util.train_step import TrainStep
from util.user_error import UserError


@dataclass
class Session:
    """Everything one run holds once built: the resolved flags, this process's place, the data and loaders, the
    model (``model``: wrapped for DDP when distributed, and compiled with ``--compile``; ``model_without_ddp``),
    criterion, optimiser, schedule and the evaluation; ``precision`` (``--amp``), ``ema`` and ``ema_evaluation``
    (``--ema``: the moving average and its evaluation, else None)."""

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
    precision: Precision | None = None
    ema: ModelEMA | None = None
    ema_evaluation: Evaluation | None = None
    tensorboard: object | None = None  # util.tensorboard_log.TensorBoardLog while training with --tensorboard
    warmup: LinearWarmup | None = None  # --warmup_iters


def run(args: argparse.Namespace) -> dict:
    """Train (or with ``--eval`` evaluate) as the flags say; returns the last evaluation's stats."""
    session = prepare(args)
    return evaluate_only(session) if session.args.eval else train(session)


def prepare(args: argparse.Namespace) -> Session:
    """Check and resolve the flags, start the process group, build data, model, optimiser and evaluation, write
    the resolved flags to ``OUTPUT_DIR/config.yaml`` and load any starting weights."""
    cli.check_args(args)
    args = cli.resolve_data_pipeline(args)
    check_data_folder(args)
    process = init_distributed(args.device, args.dist_url)
    print(f"git: {git_sha()}", flush=True)
    _seed(args.seed + process.rank)
    output_dir = Path(args.output_dir) if args.output_dir else None
    _prepare_output_dir(output_dir)
    local_rank, local_size = local_rank_and_size() if args.cache_mode else (0, 1)
    data = build_run_data(args, with_train=not args.eval, cache_share=(local_rank, local_size))
    auto_resume = training_state.auto_resume_path(output_dir) if args.auto_resume and not args.eval else ""
    args = cli.resolve_args(args, num_classes=data.num_classes, device=process.device, auto_resume_path=auto_resume,
                            label_to_category_id=data.label_to_category_id)
    device = torch.device(args.device)

    model_without_ddp, criterion, postprocessors = build_model(args, is_thing_map=data.is_thing_map)
    model = model_without_ddp.to(device)
    precision = Precision(args.amp, device)
    _choose_speed_paths(model_without_ddp, device, args)
    ema = ModelEMA(model_without_ddp, args.ema, args.ema_warmups) if args.ema is not None else None
    if process.distributed:
        device_ids = [process.gpu] if process.gpu is not None else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if args.compile:
        model = compile_model(model, device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("number of params:", n_parameters, flush=True)
    optimizer = build_optimizer(_param_groups(model_without_ddp, args), args.lr, args.weight_decay, args.sgd,
                                "plain" if args.official_paths else "auto")
    lr_scheduler = build_lr_scheduler(optimizer, args.lr_drop, args.lr_drop_epochs)
    loaders = build_loaders(data.train, data.val, args.batch_size, args.num_workers, process.distributed,
                            process.world_size, skip_bad_images=args.skip_bad_images,
                            node_shards=(process.rank, local_size) if args.cache_mode else None,
                            pin_memory=device.type == "cuda" and not args.official_paths,
                            persistent_workers=not args.official_paths,
                            aspect_ratio_grouping=args.aspect_ratio_grouping)
    warmup = _step_schedule(args, optimizer, loaders)
    if args.lr_scheduler == "flat_cosine":  # the step schedule sets every rate; the epoch one is left without drops
        lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[])
    evaluation_options = dict(batch_invariant=args.eval_batch_invariant, eval_backend=args.eval_backend,
                              confusion_threshold=args.confusion_threshold,
                              precision=precision,
                              skipped=SkippedImages(device) if args.skip_bad_images else None)
    evaluation = Evaluation(model, criterion, postprocessors, loaders.val, data.coco_ground_truth, device,
                            args.print_freq, output_dir, data.panoptic_ground_truth, **evaluation_options)
    ema_evaluation = None if ema is None else Evaluation(
        ema.module, criterion, postprocessors, loaders.val, data.coco_ground_truth, device, args.print_freq,
        output_dir / "ema" if output_dir is not None else None, data.panoptic_ground_truth, **evaluation_options)
    if output_dir is not None and is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cli.get_args_parser(), args, output_dir / "config.yaml")
    if args.frozen_weights and not args.resume:  # (a resumed run's checkpoint holds the frozen box model too)
        training_state.load_frozen_weights(model_without_ddp, args.frozen_weights, args.num_classes,
                                           _model_flags(args))
    if args.finetune_from:
        training_state.load_finetune_weights(model_without_ddp, args.finetune_from)
    if ema is not None:  # starting weights loaded above: the average starts from them
        ema.module.load_state_dict(model_without_ddp.state_dict())
    return Session(args, process, data, loaders, output_dir, model, model_without_ddp, criterion, optimizer,
                   lr_scheduler, evaluation, n_parameters, precision, ema, ema_evaluation, warmup=warmup)


def _choose_speed_paths(model: nn.Module, device: torch.device, args: argparse.Namespace) -> None:
    """``--channels_last``: the backbone's weights in channels_last memory format, so that its convolutions run
    channels_last (``auto``: on a GPU with ``--amp``, where tensor-core convolutions want it; not by default in
    fp32, where its other rounding would move a seeded run away from the official one); ``--fold_frozen_bn``: the
    backbone's frozen norms applied inside their convolutions (``auto``: with ``--amp``, whose rounding already
    differs); ``--official_paths``: every attention layer computes its weights, the backbone stays contiguous and
    unfolded."""
    if args.official_paths:
        set_need_weights(model, True)
        return
    if args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda" and args.amp != "off"):
        model.backbone.to(memory_format=torch.channels_last)
    if args.fold_frozen_bn == "on" or (args.fold_frozen_bn == "auto" and args.amp != "off"):
        fold_frozen_batchnorm(model.backbone)


def evaluate_only(s: Session) -> dict:
    """``--eval``: the ``--resume`` model's COCO (and PQ) evaluation; COCOeval's state to ``OUTPUT_DIR/eval.pth``."""
    if s.args.resume:
        training_state.resume(s.args.resume, s.model_without_ddp, s.args.num_classes,
                              run_flags=_model_flags(s.args), ema=s.ema)
    test_stats, coco_evaluator = s.evaluation()
    if s.output_dir is not None and is_main_process():
        state = coco_evaluator.saved_state("bbox")
        save_checkpoint(state, s.output_dir / "eval.pth")
        (s.output_dir / "eval").mkdir(exist_ok=True)  # where a training run keeps it too (tools.analysis.errors)
        save_checkpoint(state, s.output_dir / "eval" / "latest.pth")
    _print_summary(test_stats, s.output_dir)
    if s.ema_evaluation is not None and s.ema.updates > 0:  # --ema with an average in the file: its numbers too
        ema_stats, _ = s.ema_evaluation()
        test_stats.update({f"ema_{k}": v for k, v in ema_stats.items()})
        _print_summary(ema_stats, s.output_dir, "EMA weights: ")
    return test_stats


def train(s: Session) -> dict:
    """Epochs from the start (or the resumed) epoch to ``--epochs``: train, step the schedule, save the checkpoint,
    evaluate when due, log. A non-finite loss stops the run naming the last good checkpoint. SIGTERM or SIGINT
    stops it between steps (``util.stop_signals``): the epoch under way is abandoned, the last complete epoch's
    checkpoint stays as it is, and :class:`Stopped` says where to resume from."""
    with StopSignals(s.args.device) as signals:
        progress = {"saved_epoch": None}
        s.tensorboard = _open_tensorboard(s)
        try:
            # persistent validation workers end with the signal too, which DataLoader may report at any point
            with signals.failures_after_a_signal_stop("while saving, evaluating or logging an epoch"):
                return _train(s, signals, progress)
        except Stopped as stop:
            raise Stopped(stop.signum, _resume_advice(str(stop), s.output_dir, progress["saved_epoch"])) from None
        finally:
            for evaluation in (s.evaluation, s.ema_evaluation):
                if evaluation is not None:
                    evaluation.stop_check = None
            if s.tensorboard is not None:
                s.tensorboard.close()


def _open_tensorboard(s: Session):
    """``--tensorboard``: the main process's log under ``OUTPUT_DIR/tensorboard`` (util/tensorboard_log.py, which
    imports TensorBoard only then); None otherwise."""
    if not s.args.tensorboard or s.output_dir is None or not is_main_process():
        return None
    try:
        from util.tensorboard_log import TensorBoardLog
    except ImportError as exc:
        raise UserError(f"--tensorboard needs the tensorboard package (pip install -r requirements.txt): "
                        f"{exc}") from exc
    names = {int(k): str(c.get("name", k)) for k, c in s.data.coco_ground_truth.cats.items()}
    mean, std = IMAGE_NORMALIZATION[s.args.data_pipeline]
    return TensorBoardLog(s.output_dir / "tensorboard", names, image_mean=mean, image_std=std)


def _resume_advice(stopped: str, output_dir: Path | None, saved_epoch: int | None) -> str:
    """One line: how the run stopped and where to resume from (temporary files of an interrupted save removed)."""
    if output_dir is None:
        return f"{stopped}; nothing was saved (no --output_dir)"
    if is_main_process():
        remove_stale_temporaries(output_dir)
        remove_stale_temporaries(output_dir / "eval")
    checkpoint = output_dir / training_state.CHECKPOINT_NAME
    if not checkpoint.is_file():
        return f"{stopped}; no epoch was complete, so no checkpoint was written: start the run again"
    holds = f"holds epoch {saved_epoch}, the last complete one" if saved_epoch is not None else \
        "holds the last complete epoch"
    return f"{stopped}; {checkpoint} {holds}: resume with --resume {checkpoint} (or --auto_resume)"


def _train(s: Session, signals: StopSignals, progress: dict) -> dict:
    args, output_dir = s.args, s.output_dir
    metric = "test_ema_coco_eval_bbox" if s.ema_evaluation is not None else "test_coco_eval_bbox"
    best = BestCheckpoint.from_log(metric, output_dir if args.resume else None)
    start_epoch, test_stats = _resume_training(s, best)
    stop_check = signals.check if signals.active else None
    for evaluation in (s.evaluation, s.ema_evaluation):
        if evaluation is not None:
            evaluation.stop_check = stop_check
    skipped = SkippedImages(args.device) if args.skip_bad_images else None
    if start_epoch > 0 and output_dir is not None and (output_dir / training_state.CHECKPOINT_NAME).is_file():
        progress["saved_epoch"] = start_epoch - 1
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
        s.data.set_epoch(epoch)
        if args.ema_restart_decay is not None and epoch == args.stop_epoch:
            _restart_from_best(s, epoch)
        try:
            train_stats = _train_epoch(s, epoch, stop_check, skipped, signals)
        except NonFiniteLossError as err:
            kept = output_dir / training_state.CHECKPOINT_NAME if output_dir else "none (no --output_dir)"
            raise SystemExit(f"Stopping: {err}. Last good checkpoint: {kept}") from err
        s.lr_scheduler.step()
        if output_dir is not None:
            keep_copy = (epoch + 1) in (args.lr_drop_epochs or ()) or (epoch + 1) % args.lr_drop == 0 \
                or (epoch + 1) % 100 == 0
            training_state.save_training_state(output_dir, s.model_without_ddp, s.optimizer, s.lr_scheduler, epoch,
                                               flags, train_stats, keep_copy, _extra_state(s))
            progress["saved_epoch"] = epoch
        if stop_check is not None:
            stop_check(f"after epoch {epoch} was saved")
        due = _evaluation_due(epoch, args)
        test_stats = finish_epoch(epoch, train_stats, s.evaluation if due else None, output_dir, s.n_parameters,
                                  s.ema_evaluation if due else None, monitor=s.tensorboard, best=best) or test_stats
        if due and best.epoch == epoch and output_dir is not None and is_main_process():
            keep_best(output_dir, output_dir / training_state.CHECKPOINT_NAME, best)
        if due and args.early_stop and best.evaluations_since_best >= args.early_stop:
            print(f"early stop after epoch {epoch}: {args.early_stop} evaluations without a better {best.metric}[0] "
                  f"than {best.value:.4f} (epoch {best.epoch}, kept in {BEST_NAME})", flush=True)
            break
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}", flush=True)
    _print_summary(test_stats, output_dir)
    return test_stats


def _train_epoch(s: Session, epoch: int, stop_check, skipped: SkippedImages | None, signals: StopSignals) -> dict:
    """One epoch of training. A stop signal that also ended the DataLoader workers is a stop, not a failure."""
    args = s.args
    step = TrainStep(s.model, s.criterion, s.optimizer, args.clip_max_norm, precision=s.precision, ema=s.ema,
                     ema_source=s.model_without_ddp, host_check=True if args.official_paths else None,
                     warmup=s.warmup)
    with signals.failures_after_a_signal_stop(f"during epoch {epoch} (the epoch is abandoned)",
                                              keep=(NonFiniteLossError,)):
        return train_one_epoch(s.model, s.criterion, s.loaders.train, s.optimizer, torch.device(args.device), epoch,
                               args.clip_max_norm, args.print_freq, stop_check=stop_check, skipped=skipped,
                               step=step, read_every_step=args.official_paths, monitor=s.tensorboard,
                               accumulate_steps=args.accumulate_steps)


def _resume_training(s: Session, best: BestCheckpoint) -> tuple[int, dict]:
    """(first epoch to train, stats of an evaluation finished here): from ``--resume`` (optimiser, schedule, epoch
    and RNG states too), else ``--start_epoch``."""
    if not s.args.resume:
        return s.args.start_epoch, {}
    point = training_state.resume(s.args.resume, s.model_without_ddp, s.args.num_classes, s.optimizer,
                                  s.lr_scheduler, run_flags=_model_flags(s.args), ema=s.ema,
                                  scaler=s.precision.scaler if s.precision is not None else None)
    if point is None:  # a weights-only file (an official checkpoint): train it from --start_epoch
        return s.args.start_epoch, {}
    test_stats = {}
    if s.output_dir is not None and point.train_stats is not None and \
            point.saved_epoch not in training_state.logged_epochs(s.output_dir):
        # The run stopped between saving this checkpoint and logging its epoch (e.g. a requeue during evaluation):
        # finish that epoch's evaluation and log line first.
        due = _evaluation_due(point.saved_epoch, s.args)
        test_stats = finish_epoch(point.saved_epoch, point.train_stats, s.evaluation if due else None, s.output_dir,
                                  s.n_parameters, s.ema_evaluation if due else None, monitor=s.tensorboard, best=best)
        if due and best.epoch == point.saved_epoch and is_main_process():
            keep_best(s.output_dir, s.output_dir / training_state.CHECKPOINT_NAME, best)
    return point.start_epoch, test_stats


def _prepare_output_dir(output_dir: Path | None) -> None:
    """Create ``--output_dir`` and check that it can be written (main process; a problem is an error on every
    process), and remove the temporary files that an interrupted checkpoint save left there."""
    if output_dir is None:
        return
    problem = None
    if is_main_process():
        problem = _output_dir_problem(output_dir)
        if problem is None:
            removed = remove_stale_temporaries(output_dir) + remove_stale_temporaries(output_dir / "eval")
            if removed:
                print(f"removed {len(removed)} temporary file(s) that an interrupted checkpoint save left in "
                      f"{output_dir}: {', '.join(p.name for p in removed)}", flush=True)
    problem = broadcast_object(problem)
    if problem:
        raise UserError(problem)


def _output_dir_problem(output_dir: Path) -> str | None:
    if output_dir.exists() and not output_dir.is_dir():
        return f"--output_dir {output_dir} is a file, not a folder"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        return f"--output_dir {output_dir} cannot be written: {exc.strerror or exc}"
    return None


def _model_flags(args: argparse.Namespace) -> dict:
    """This run's values of the flags that shape the model (compared with a checkpoint's that does not fit)."""
    return {name: getattr(args, name) for name in cli.model_flags() if hasattr(args, name)}


def _evaluation_due(epoch: int, args: argparse.Namespace) -> bool:
    return (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _param_groups(model: nn.Module, args: argparse.Namespace) -> list[dict]:
    """The optimiser groups: ``--optimizer_groups``' name patterns where given, else the architecture's."""
    if args.optimizer_groups:
        return pattern_param_groups(model, [parse_group_pattern(text) for text in args.optimizer_groups],
                                    args.lr_backbone, args.lr_attn)
    return architecture(args.meta_arch).param_groups(model, args)


def _step_schedule(args: argparse.Namespace, optimizer: torch.optim.Optimizer, loaders: Loaders):
    """What sets the learning rates before each optimiser step: DEIM's flat-cosine schedule (``--lr_scheduler
    flat_cosine``), the linear warm-up (``--warmup_iters``), or nothing (None)."""
    if args.lr_scheduler == "flat_cosine" and loaders.train is not None:
        steps_per_epoch = math.ceil(len(loaders.train) / args.accumulate_steps)
        return FlatCosineSchedule(optimizer, steps_per_epoch, args.epochs, args.warmup_iters, args.flat_epoch,
                                  args.no_aug_epoch, args.lr_gamma)
    return LinearWarmup(optimizer, args.warmup_iters) if args.warmup_iters else None


def _restart_from_best(s: Session, epoch: int) -> None:
    """D-FINE's and DEIM's second stage (``--ema_restart_decay``): at ``--stop_epoch`` the run goes on from its best
    checkpoint so far (model, moving average, optimiser) with the moving average's decay set anew."""
    best = s.output_dir / BEST_NAME if s.output_dir is not None else None
    if best is None or not best.is_file():
        print(f"epoch {epoch}: no {BEST_NAME} to restart from; going on with the current weights", flush=True)
    else:
        checkpoint = load_checkpoint(str(best), flag="--ema_restart_decay")
        s.model_without_ddp.load_state_dict(checkpoint["model"])
        load_optimizer_state(s.optimizer, checkpoint["optimizer"])
        if s.ema is not None and not s.ema.load(checkpoint):
            s.ema.module.load_state_dict(checkpoint["model"])
        print(f"epoch {epoch} (--stop_epoch): restarting from {best} (epoch {checkpoint['epoch']})", flush=True)
    if s.ema is not None:
        s.ema.decay = s.args.ema_restart_decay


def _extra_state(s: Session) -> dict:
    """Checkpoint entries beyond the model and optimiser: the dataset's category names (id -> name, for the tools),
    the EMA (``--ema``) and the fp16 gradient scaler."""
    extra = s.ema.state() if s.ema is not None else {}
    extra["category_names"] = {str(k): str(c.get("name", k)) for k, c in s.data.coco_ground_truth.cats.items()}
    if s.precision is not None and s.precision.scaler is not None:
        extra["scaler"] = s.precision.scaler.state_dict()
    return extra


def _print_summary(stats: dict, output_dir: Path | None, prefix: str = "") -> None:
    if is_main_process() and "coco_eval_bbox" in stats:
        print(prefix + summary_line(stats, output_dir), flush=True)
