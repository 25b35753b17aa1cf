"""Train and evaluate DETR: ``python main.py --coco_path DIR`` (see README for recipes).

Flags keep the official DETR's names, meanings and defaults; ``--config FILE`` applies a flat YAML preset first.
"""
import argparse
import datetime
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

import datasets
from datasets.coco_eval import CocoEvaluator
from datasets.panoptic_eval import PanopticEvaluator
from engine import NonFiniteLossError, evaluate, train_one_epoch
from models import build_model
from models.backbone_attention import MaskedAttention
from models.segmentation import PostProcessPanoptic
from util.checkpoint import (
    load_checkpoint,
    load_matching_state_dict,
    preserved_rng_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from util.config import ConfigError, dump_config, is_plain, parse_args_with_config
from util.distributed import all_gather, barrier, broadcast_object, get_rank, init_distributed_mode, is_main_process
from util.nested_tensor import collate_fn


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Set transformer detector", add_help=False)
    parser.add_argument("--config", type=str, default=None,
                        help="flat YAML preset whose keys are flag names; explicit flags override it")
    parser.add_argument("--lr", default=1e-4, type=float)
    parser.add_argument("--lr_backbone", default=1e-5, type=float)
    parser.add_argument("--batch_size", default=2, type=int)
    parser.add_argument("--weight_decay", default=1e-4, type=float)
    parser.add_argument("--epochs", default=300, type=int)
    parser.add_argument("--lr_drop", default=200, type=int)
    parser.add_argument("--clip_max_norm", default=0.1, type=float, help="gradient clipping max norm")

    # Model parameters
    parser.add_argument("--frozen_weights", type=str, default=None,
                        help="Path to the pretrained model. If set, only the mask head will be trained")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="largest class id + 1 (default: from the training annotation file, 91 for COCO)")
    # * Backbone
    parser.add_argument("--backbone", default="resnet50", type=str, help="resnet18, resnet34, resnet50 or resnet101")
    parser.add_argument("--dilation", action="store_true",
                        help="replace stride with dilation in the last convolutional block (DC5)")
    parser.add_argument("--position_embedding", default="sine", type=str, choices=("sine", "learned"),
                        help="type of positional embedding to use on top of the image features")
    parser.add_argument("--no_pretrained_backbone", dest="pretrained_backbone", action="store_false",
                        help="start the backbone from random weights instead of torchvision's ImageNet weights")
    parser.add_argument("--backbone_norm", default="frozen_bn", choices=("frozen_bn", "bn"),
                        help="frozen BatchNorm (DETR) or trainable BatchNorm (for a backbone trained from scratch)")
    parser.add_argument("--backbone_trainable_layers", default=3, type=int, choices=range(6),
                        help="how many ResNet stages, counted from layer4 down to the stem, are trained")
    parser.add_argument("--backbone_attn", default="none",
                        help="attention block added to the backbone: none, gc, ca, se, eca, cbam, nl, cc, da")
    parser.add_argument("--attn_stages", default=None, type=int, nargs="+",
                        help="ResNet stages (1-4 = layer1-layer4) that get blocks (default: 2..last for blocks "
                             "inside residual blocks, the last stage for stage-output blocks)")
    parser.add_argument("--attn_position", default=None, choices=("block", "stage"),
                        help="inside every residual block, or once on each stage's output (default: the block's)")
    parser.add_argument("--lr_attn", default=1e-4, type=float,
                        help="learning rate of the backbone attention blocks (1e-4: see benchmarks/RESULTS.md)")
    parser.add_argument("--feature_layer", default="layer4", choices=("layer3", "layer4"),
                        help="backbone stage feeding the transformer: layer4 (stride 32, DETR) or layer3 (stride 16)")
    # * Transformer
    parser.add_argument("--enc_layers", default=6, type=int, help="number of encoding layers in the transformer")
    parser.add_argument("--dec_layers", default=6, type=int, help="number of decoding layers in the transformer")
    parser.add_argument("--dim_feedforward", default=2048, type=int,
                        help="intermediate size of the feedforward layers in the transformer blocks")
    parser.add_argument("--hidden_dim", default=256, type=int,
                        help="size of the embeddings (dimension of the transformer)")
    parser.add_argument("--dropout", default=0.1, type=float, help="dropout applied in the transformer")
    parser.add_argument("--nheads", default=8, type=int, help="number of attention heads inside the attentions")
    parser.add_argument("--num_queries", default=100, type=int, help="number of query slots")
    parser.add_argument("--pre_norm", action="store_true")
    parser.add_argument("--query_groups", default=1, type=int,
                        help="train with this many one-to-one matched query groups (Group DETR); 1 = DETR")
    # * Segmentation
    parser.add_argument("--masks", action="store_true", help="train the segmentation head if the flag is provided")

    # Loss
    parser.add_argument("--no_aux_loss", dest="aux_loss", action="store_false",
                        help="disables auxiliary decoding losses (loss at each layer)")
    # * Matcher
    parser.add_argument("--set_cost_class", default=1, type=float, help="class coefficient in the matching cost")
    parser.add_argument("--set_cost_bbox", default=5, type=float, help="L1 box coefficient in the matching cost")
    parser.add_argument("--set_cost_giou", default=2, type=float, help="giou box coefficient in the matching cost")
    # * Loss coefficients
    parser.add_argument("--mask_loss_coef", default=1, type=float)
    parser.add_argument("--dice_loss_coef", default=1, type=float)
    parser.add_argument("--bbox_loss_coef", default=5, type=float)
    parser.add_argument("--giou_loss_coef", default=2, type=float)
    parser.add_argument("--eos_coef", default=0.1, type=float,
                        help="relative classification weight of the no-object class")

    # dataset parameters
    parser.add_argument("--dataset_file", default="coco")
    parser.add_argument("--coco_path", type=str)
    parser.add_argument("--coco_panoptic_path", type=str)
    parser.add_argument("--remove_difficult", action="store_true")
    parser.add_argument("--image_size", default=800, type=int,
                        help="validation shorter side in pixels; DETR's training scales and crops scale with it")
    parser.add_argument("--no_multiscale", dest="multiscale", action="store_false",
                        help="train at --image_size with flips only (no multi-scale resize, no random crop)")

    parser.add_argument("--output_dir", default="", help="path where to save, empty for no saving")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to use for training / testing")
    parser.add_argument("--seed", default=42, type=int)
    parser.add_argument("--resume", default="", help="resume from checkpoint (path or https URL)")
    parser.add_argument("--auto_resume", action="store_true",
                        help="resume from OUTPUT_DIR/checkpoint.pth when it exists (what a requeued SLURM job does)")
    parser.add_argument("--finetune_from", default="",
                        help="initialise from a checkpoint, skipping entries whose shapes differ")
    parser.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--eval_every", default=1, type=int, help="evaluate every N epochs (and after the last)")
    parser.add_argument("--num_workers", default=2, type=int)
    parser.add_argument("--print_freq", default=10, type=int, help="iterations between progress lines")

    # distributed training parameters
    parser.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    parser.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.frozen_weights and not args.masks:
        raise ValueError("--frozen_weights is only for training the segmentation head: add --masks")
    if args.frozen_weights and args.finetune_from:
        raise ValueError("--frozen_weights and --finetune_from are exclusive: the first sets (and freezes) the box "
                         "model, the second would overwrite it")
    if args.resume and args.finetune_from:
        raise ValueError("--resume and --finetune_from are exclusive: resume continues a run, finetune starts one")
    if not args.coco_path:
        raise ValueError("--coco_path is required: a folder with train2017/, val2017/ and annotations/")
    if args.num_workers < 0:
        raise ValueError(f"--num_workers must be 0 or more, got {args.num_workers}")
    for flag in ("batch_size", "epochs", "lr_drop", "num_queries", "hidden_dim", "nheads", "eval_every",
                 "print_freq"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.hidden_dim % args.nheads:
        raise ValueError(f"--hidden_dim ({args.hidden_dim}) must be divisible by --nheads ({args.nheads})")


def build_param_groups(model: torch.nn.Module, lr_backbone: float, lr_attn: float | None = None) -> list[dict]:
    """AdamW groups decided by module identity, never by parameter name: everything outside the backbone
    (default lr), the backbone (``lr_backbone``), and when present the backbone attention blocks (``lr_attn``),
    whose scales, norms and biases (parameters with at most one dimension) get no weight decay."""
    attn_params = [p for m in model.modules() if isinstance(m, MaskedAttention) for p in m.parameters()
                   if p.requires_grad]
    attn_ids = {id(p) for p in attn_params}
    backbone_ids = {id(p) for p in model.backbone.parameters()} - attn_ids
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in backbone_ids and id(p) not in attn_ids]},
        {"params": [p for p in trainable if id(p) in backbone_ids], "lr": lr_backbone},
    ]
    if attn_params:
        lr_attn = lr_backbone if lr_attn is None else lr_attn
        groups += [{"params": [p for p in attn_params if p.ndim > 1], "lr": lr_attn},
                   {"params": [p for p in attn_params if p.ndim <= 1], "lr": lr_attn, "weight_decay": 0.0}]
    return groups


def _ignore_job_signals(worker_id: int) -> None:
    """DataLoader workers leave SLURM's requeue signal (SIGUSR2) to the main process's handler."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _make_loaders(args, dataset_train, dataset_val):
    sampler_val = DistributedSampler(dataset_val, shuffle=False) if args.distributed else SequentialSampler(dataset_val)
    loader_val = DataLoader(dataset_val, args.batch_size, sampler=sampler_val, drop_last=False,
                            collate_fn=collate_fn, num_workers=args.num_workers, worker_init_fn=_ignore_job_signals)
    if dataset_train is None:
        return None, None, loader_val
    if args.distributed:
        sampler_train = DistributedSampler(dataset_train)
    else:
        sampler_train = RandomSampler(dataset_train)
    batch_sampler_train = BatchSampler(sampler_train, args.batch_size, drop_last=True)
    if len(batch_sampler_train) == 0:
        raise ValueError(f"--batch_size {args.batch_size} is larger than the training set per process "
                         f"({len(dataset_train)} images / {args.world_size} processes)")
    loader_train = DataLoader(dataset_train, batch_sampler=batch_sampler_train, collate_fn=collate_fn,
                              num_workers=args.num_workers, worker_init_fn=_ignore_job_signals)
    return loader_train, sampler_train, loader_val


def main(args: argparse.Namespace) -> dict:
    """Train (or with ``--eval`` evaluate) as the flags say; returns the last evaluation's stats."""
    _check_args(args)
    init_distributed_mode(args)
    print(f"git: {_git_sha()}", flush=True)
    device = torch.device(args.device)

    seed = args.seed + get_rank()
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    dataset_val = datasets.build_dataset(image_set="val", args=args)
    dataset_train = None if args.eval else datasets.build_dataset(image_set="train", args=args)
    if args.num_classes is None:
        args.num_classes = (dataset_val if dataset_train is None else dataset_train).num_classes()
        print(f"num_classes inferred from the annotations: {args.num_classes}", flush=True)

    model, criterion, postprocessors = build_model(args)
    model.to(device)
    model_without_ddp = model
    if args.distributed:
        device_ids = [args.gpu] if args.gpu is not None else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        model_without_ddp = model.module
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("number of params:", n_parameters, flush=True)

    optimizer = torch.optim.AdamW(build_param_groups(model_without_ddp, args.lr_backbone, args.lr_attn), lr=args.lr,
                                  weight_decay=args.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, args.lr_drop)
    data_loader_train, sampler_train, data_loader_val = _make_loaders(args, dataset_train, dataset_val)
    if args.dataset_file == "coco_panoptic":  # box and mask AP against the COCO instances of the same images
        base_ds = datasets.get_coco_api_from_dataset(datasets.build_dataset("val", _as_coco_detection(args)))
    else:
        base_ds = datasets.get_coco_api_from_dataset(dataset_val)
    if "panoptic" in postprocessors:  # things and stuff as the annotations define them
        postprocessors["panoptic"] = PostProcessPanoptic(dataset_val.is_thing_map(),
                                                         postprocessors["panoptic"].threshold)

    output_dir = Path(args.output_dir) if args.output_dir else None
    if args.auto_resume and not args.eval and output_dir is not None:
        # decided once, by the main process, so every process resumes from the same state
        if broadcast_object((output_dir / "checkpoint.pth").is_file() if is_main_process() else None):
            args.resume, args.finetune_from = str(output_dir / "checkpoint.pth"), ""
    if output_dir is not None and is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(get_args_parser(), args, output_dir / "config.yaml")

    def run_evaluation() -> tuple[dict, CocoEvaluator]:
        if "panoptic" not in postprocessors:
            return evaluate(model, criterion, postprocessors, data_loader_val, base_ds, device, args.print_freq)
        # predicted PNGs go to OUTPUT_DIR/panoptic_eval, else to a temporary folder all processes share
        temporary = output_dir is None
        folder = output_dir / "panoptic_eval" if not temporary else Path(
            broadcast_object(tempfile.mkdtemp(prefix="panoptic_eval_") if is_main_process() else None))
        panoptic_evaluator = PanopticEvaluator(dataset_val.ann_file, dataset_val.ann_folder, output_dir=str(folder))
        result = evaluate(model, criterion, postprocessors, data_loader_val, base_ds, device, args.print_freq,
                          panoptic_evaluator=panoptic_evaluator)
        if temporary and is_main_process():  # evaluate() returns after the main process has read every PNG
            shutil.rmtree(folder, ignore_errors=True)
        return result

    def finish_epoch(epoch: int, train_stats: dict) -> dict:
        """Evaluate when due and append the epoch's line to log.txt; returns the evaluation's stats or {}."""
        log_stats = {f"train_{k}": v for k, v in train_stats.items()}
        test_stats = {}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            # Evaluation leaves the RNGs as it found them (its loader and transforms draw from them), so a run
            # resumed from this epoch's checkpoint trains exactly as the uninterrupted one.
            with preserved_rng_state():
                test_stats, coco_evaluator = run_evaluation()
            log_stats.update({f"test_{k}": v for k, v in test_stats.items()})
            if output_dir is not None and is_main_process():
                (output_dir / "eval").mkdir(exist_ok=True)
                names = ["latest.pth"] + ([f"{epoch:03}.pth"] if epoch % 50 == 0 else [])
                for name in names:
                    save_checkpoint(coco_evaluator.coco_eval["bbox"].eval, output_dir / "eval" / name)
        log_stats.update({"epoch": epoch, "n_parameters": n_parameters})
        if output_dir is not None and is_main_process():
            with (output_dir / "log.txt").open("a") as f:
                f.write(json.dumps(log_stats) + "\n")
        return test_stats

    if args.frozen_weights and not args.resume:  # (a resumed run's checkpoint holds the frozen box model too)
        # the official recipe: a trained box model, frozen, under a new mask head
        checkpoint = load_checkpoint(args.frozen_weights, flag="--frozen_weights")
        state = _state_for(model_without_ddp.detr, _model_state(checkpoint, "--frozen_weights"))
        try:
            model_without_ddp.detr.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"--frozen_weights {args.frozen_weights} does not fit the box model built from these "
                             f"flags (backbone, hidden_dim, layers, num_queries, query_groups, num_classes ...)"
                             f"{_class_count_hint(state, args)}: {exc}") from exc
    if args.finetune_from:
        checkpoint = load_checkpoint(args.finetune_from, flag="--finetune_from")
        state = _state_for(model_without_ddp, _model_state(checkpoint, "--finetune_from"))
        skipped, missing = load_matching_state_dict(model_without_ddp, state)
        if len(skipped) == len(state):
            raise ValueError(f"--finetune_from {args.finetune_from}: no entry of the checkpoint fits this model "
                             f"(e.g. {skipped[:3]})")
        print(f"--finetune_from {args.finetune_from}: skipped {len(skipped)} entries: {skipped}; "
              f"left at initialisation: {missing}", flush=True)
    test_stats = {}  # the last evaluation's stats
    if args.resume:
        checkpoint = load_checkpoint(args.resume, flag="--resume")
        try:
            model_without_ddp.load_state_dict(_model_state(checkpoint, "--resume"))
        except RuntimeError as exc:
            raise ValueError(f"--resume {args.resume} does not fit the model built from these flags "
                             f"(backbone, hidden_dim, layers, num_queries, num_classes, --masks ...)"
                             f"{_class_count_hint(_model_state(checkpoint, '--resume'), args)}: {exc}") from exc
        if not args.eval and all(k in checkpoint for k in ("optimizer", "lr_scheduler", "epoch")):
            try:
                optimizer.load_state_dict(checkpoint["optimizer"])
            except ValueError as exc:
                raise ValueError(f"--resume {args.resume}: the optimizer state does not fit this run's parameter "
                                 "groups; keep --backbone_trainable_layers, --lr_backbone > 0 and --backbone_attn "
                                 f"as in the run that wrote it (or use --finetune_from): {exc}") from exc
            lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
            args.start_epoch = checkpoint["epoch"] + 1
            if "rng_state" in checkpoint and get_rank() < len(checkpoint["rng_state"]):
                set_rng_state(checkpoint["rng_state"][get_rank()])
            print(f"resumed from {args.resume} at epoch {args.start_epoch}", flush=True)
            if output_dir is not None and "train_stats" in checkpoint:
                # The run stopped between saving this checkpoint and logging its epoch (e.g. a requeue during
                # evaluation): finish that epoch's evaluation and log line first.
                logged = broadcast_object(_logged_epochs(output_dir) if is_main_process() else None)
                if checkpoint["epoch"] not in logged:
                    test_stats = finish_epoch(checkpoint["epoch"], checkpoint["train_stats"])

    if args.eval:
        test_stats, coco_evaluator = run_evaluation()
        if output_dir is not None and is_main_process():
            save_checkpoint(coco_evaluator.coco_eval["bbox"].eval, output_dir / "eval.pth")
        _print_ap(test_stats, output_dir)
        return test_stats

    if args.distributed:
        sampler_train.set_epoch(args.start_epoch)
        shard = list(sampler_train)
        print(f"data: rank {args.rank} of {args.world_size} trains on {len(shard)} of {len(dataset_train)} images "
              f"per epoch; epoch {args.start_epoch} starts with images {shard[:8]}", flush=True)
    print("Start training", flush=True)
    start_time = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        if args.distributed:
            sampler_train.set_epoch(epoch)
        try:
            train_stats = train_one_epoch(model, criterion, data_loader_train, optimizer, device, epoch,
                                          args.clip_max_norm, args.print_freq)
        except NonFiniteLossError as err:
            kept = output_dir / "checkpoint.pth" if output_dir else "none (no --output_dir)"
            raise SystemExit(f"Stopping: {err}. Last good checkpoint: {kept}") from err
        lr_scheduler.step()
        if output_dir is not None:
            _save_training_state(output_dir, model_without_ddp, optimizer, lr_scheduler, epoch, args, train_stats)
        test_stats = finish_epoch(epoch, train_stats) or test_stats

    total_time = datetime.timedelta(seconds=int(time.time() - start_time))
    print(f"Training time {total_time}", flush=True)
    _print_ap(test_stats, output_dir)
    return test_stats


def _state_for(model: torch.nn.Module, state: dict) -> dict:
    """A checkpoint's model entries named for ``model``: a box model's under a mask head gain the ``detr.`` prefix;
    a segmentation checkpoint's box model (its ``detr.`` entries) loads into a plain DETR."""
    wants_prefix = any(k.startswith("detr.") for k in model.state_dict())
    has_prefix = any(k.startswith("detr.") for k in state)
    if wants_prefix and not has_prefix:
        return {f"detr.{k}": v for k, v in state.items()}
    if has_prefix and not wants_prefix:
        return {k[len("detr."):]: v for k, v in state.items() if k.startswith("detr.")}
    return state


def _class_count_hint(state: dict, args: argparse.Namespace) -> str:
    """'; the checkpoint has N classes: add --num_classes N' when the classifier's size is what differs."""
    bias = next((v for k, v in state.items() if k.endswith("class_embed.bias")), None)
    if bias is None or bias.shape[0] - 1 == args.num_classes:
        return ""
    return (f"; the checkpoint has {bias.shape[0] - 1} classes and this run {args.num_classes}: add --num_classes "
            f"{bias.shape[0] - 1}")


def _model_state(checkpoint: dict, flag: str) -> dict:
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{flag}: the file has no 'model' entry (keys: {sorted(checkpoint)[:10]})")
    return checkpoint["model"]


def _logged_epochs(output_dir: Path) -> set[int]:
    log = output_dir / "log.txt"
    if not log.is_file():
        return set()
    return {json.loads(line)["epoch"] for line in log.read_text().splitlines() if line.strip()}


def _save_training_state(output_dir: Path, model, optimizer, lr_scheduler, epoch: int, args,
                         train_stats: dict) -> None:
    """checkpoint.pth every epoch (atomically), plus a kept copy before each lr drop and every 100 epochs.

    Every process takes part (its RNG states are gathered); only the main process writes.
    """
    rng_states = all_gather(rng_state())
    if is_main_process():
        paths = [output_dir / "checkpoint.pth"]
        if (epoch + 1) % args.lr_drop == 0 or (epoch + 1) % 100 == 0:
            paths.append(output_dir / f"checkpoint{epoch:04}.pth")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "lr_scheduler": lr_scheduler.state_dict(), "epoch": epoch,
                 "args": {k: v for k, v in vars(args).items() if is_plain(v)}, "rng_state": rng_states,
                 "train_stats": train_stats}
        for path in paths:
            save_checkpoint(state, path)
    barrier()


def _as_coco_detection(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "dataset_file": "coco"})


def _print_ap(stats: dict, output_dir: Path | None) -> None:
    if not is_main_process() or "coco_eval_bbox" not in stats:
        return
    parts = [f"bbox AP = {stats['coco_eval_bbox'][0]:.3f}, AP50 = {stats['coco_eval_bbox'][1]:.3f}"]
    if "coco_eval_masks" in stats:
        parts.append(f"mask AP = {stats['coco_eval_masks'][0]:.3f}, AP50 = {stats['coco_eval_masks'][1]:.3f}")
    if "PQ_all" in stats:
        parts.append(f"PQ = {stats['PQ_all']['pq']:.3f} (things {stats['PQ_th']['pq']:.3f}, "
                     f"stuff {stats['PQ_st']['pq']:.3f})")
    where = f"; outputs in {output_dir.resolve()}" if output_dir is not None else ""
    print("; ".join(parts) + where, flush=True)


def _git_sha() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    parser = argparse.ArgumentParser("DETR training and evaluation script", parents=[get_args_parser()])
    try:
        cli_args = parse_args_with_config(parser)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        main(cli_args)
    except (FileNotFoundError, ValueError, NotImplementedError) as exc:
        sys.exit(f"error: {exc}")
