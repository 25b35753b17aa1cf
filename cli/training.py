"""Flags of the optimisation, checkpoints and the run itself."""
import argparse

import torch

from models.param_groups import parse_group_pattern
from util.optimizer import LR_SCHEDULERS

# DEIM's schedule flags: name -> default (read by --lr_scheduler flat_cosine only)
FLAT_COSINE_DEFAULTS = {"flat_epoch": None, "no_aug_epoch": 0, "lr_gamma": 0.5}


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--lr", default=1e-4, type=float)
    group.add_argument("--lr_backbone", default=1e-5, type=float)
    group.add_argument("--batch_size", default=2, type=int)
    group.add_argument("--accumulate_steps", default=1, type=int,
                       help="one optimiser step on the gradients of N batches, normalised as one batch N times larger "
                            "(the losses' box counts over all N; with frozen BatchNorm the same step)")
    group.add_argument("--weight_decay", default=1e-4, type=float)
    group.add_argument("--weight_decay_norm", default=None, type=float,
                       help="weight decay of the normalisation layers' parameters (default: --weight_decay)")
    group.add_argument("--weight_decay_bias", default=None, type=float,
                       help="weight decay of the other layers' biases (default: --weight_decay)")
    group.add_argument("--optimizer_groups", default=None, nargs="+", metavar="'REGEX [lr=X] [weight_decay=Y]'",
                       help="optimiser groups by state-dict name, as the official real-time configs' optimizer.params "
                            "(each a regular expression with its options; lr=lr_backbone reads --lr_backbone; the "
                            "parameters no pattern finds at --lr and --weight_decay); replaces the architecture's "
                            "groups, the attention blocks' excepted")
    group.add_argument("--epochs", default=300, type=int)
    group.add_argument("--lr_drop", default=200, type=int, help="multiply the learning rates by 0.1 every N epochs")
    group.add_argument("--lr_drop_epochs", default=None, type=int, nargs="+",
                       help="multiply the learning rates by 0.1 at each of these epochs instead (Deformable DETR's "
                            "flag, which its official code never reads)")
    group.add_argument("--lr_scheduler", default="step", choices=LR_SCHEDULERS,
                       help="step: the rates x0.1 at --lr_drop or --lr_drop_epochs, per epoch; flat_cosine: DEIM's "
                            "per-step schedule (its lrsheduler: flatcosine; util.optimizer.FlatCosineSchedule): a "
                            "quadratic ramp over --warmup_iters steps, the full rates until --flat_epoch, a cosine "
                            "decay to --lr_gamma times them, reached --no_aug_epoch epochs before the end")
    group.add_argument("--flat_epoch", default=FLAT_COSINE_DEFAULTS["flat_epoch"], type=int,
                       help="--lr_scheduler flat_cosine: the epoch the cosine decay starts at (DEIM: 4 + half the "
                            "epochs, e.g. 29 of 58; at or beyond --epochs minus --no_aug_epoch: no decay)")
    group.add_argument("--no_aug_epoch", default=FLAT_COSINE_DEFAULTS["no_aug_epoch"], type=int,
                       help="--lr_scheduler flat_cosine: the last epochs, trained at the floor rate (DEIM: those from "
                            "the STOP of --policy_epoch on, e.g. 8 of 58)")
    group.add_argument("--lr_gamma", default=FLAT_COSINE_DEFAULTS["lr_gamma"], type=float,
                       help="--lr_scheduler flat_cosine: the floor rate as a fraction of each group's rate (DEIM: 0.5)")
    group.add_argument("--warmup_iters", default=0, type=int,
                       help="linear learning-rate warm-up over the first N optimiser steps (lr x (step + 1) / N; "
                            "RT-DETRv2: 2000)")
    group.add_argument("--sgd", action="store_true", help="SGD with momentum 0.9 instead of AdamW")
    group.add_argument("--clip_max_norm", default=0.1, type=float, help="gradient clipping max norm")
    group.add_argument("--output_dir", default="", help="path where to save, empty for no saving")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="device to use for training / testing")
    group.add_argument("--seed", default=42, type=int)
    group.add_argument("--resume", default="", help="resume from checkpoint (path or https URL)")
    group.add_argument("--auto_resume", action="store_true",
                       help="resume from OUTPUT_DIR/checkpoint.pth when it exists (what a requeued SLURM job does)")
    group.add_argument("--finetune_from", default="",
                       help="initialise from a checkpoint, skipping entries whose shapes differ")
    group.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    group.add_argument("--early_stop", default=0, type=int, metavar="N",
                       help="stop after N evaluations without a better validation AP (the EMA's with --ema) than "
                            "the best, which checkpoint_best.pth keeps (0: never)")
    group.add_argument("--print_freq", default=10, type=int, help="iterations between progress lines")
    group.add_argument("--tensorboard", action="store_true",
                       help="also log losses, learning rates, gradient norm, speed, COCO AP/AR and validation "
                            "pictures as TensorBoard event files under OUTPUT_DIR/tensorboard")
    group.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                       help="mixed precision: autocast the model's forward (backbone, transformer) to bf16 or fp16; "
                            "the class and box heads, the matcher, losses and box conversions stay fp32; fp16 adds "
                            "a gradient scaler")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model (dynamic shapes); falls back to eager with one message where "
                            "it cannot compile")
    group.add_argument("--ema", default=None, type=float, metavar="DECAY",
                       help="keep an exponential moving average of the weights (decay min(DECAY, (1+n)/(10+n)) at "
                            "update n), evaluated next to the raw weights and saved as model_ema in the checkpoint")
    group.add_argument("--ema_warmups", default=None, type=int, metavar="N",
                       help="with --ema: decay DECAY * (1 - exp(-n / N)) at update n instead (RT-DETRv2: N 2000)")
    group.add_argument("--channels_last", default="auto", choices=("auto", "on", "off"),
                       help="backbone convolutions in channels_last memory format (the same math, other rounding): "
                            "auto = on for a GPU with --amp, off otherwise; on is 1.03-1.08x faster for training "
                            "on CPU (benchmarks/RESULTS.md)")
    group.add_argument("--fold_frozen_bn", default="auto", choices=("auto", "on", "off"),
                       help="apply each frozen BatchNorm of the backbone inside the convolution before it (the same "
                            "math, other rounding): auto = on with --amp, off otherwise; on: a whole R50 main.py "
                            "epoch on CPU 1.17x faster, 1.34x with --channels_last on (benchmarks/RESULTS.md)")
    group.add_argument("--official_paths", action="store_true",
                       help="the official code's slower paths for the same math (for speed comparisons): for-loop "
                            "AdamW, attention weights computed and averaged, every loss term read every iteration, "
                            "contiguous backbone with unfolded norms (whatever --channels_last and --fold_frozen_bn "
                            "say), no pinned memory or persistent workers")
    group.add_argument("--debug", action="store_true",
                       help="show the traceback of a failure the user can fix (as the environment variable "
                            "DETR_DEBUG=1 does), not only its one-line error")


def check(args: argparse.Namespace) -> None:
    if args.frozen_weights and args.finetune_from:
        raise ValueError("--frozen_weights and --finetune_from are exclusive: the first sets (and freezes) the box "
                         "model, the second would overwrite it")
    if args.tensorboard and not args.output_dir:
        raise ValueError("--tensorboard writes its event files under OUTPUT_DIR/tensorboard: give --output_dir")
    if args.resume and args.finetune_from:
        raise ValueError("--resume and --finetune_from are exclusive: resume continues a run, finetune starts one")
    for flag in ("batch_size", "epochs", "lr_drop", "print_freq", "accumulate_steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.ema is not None and not 0.0 < args.ema < 1.0:
        raise ValueError(f"--ema must be a decay between 0 and 1 (e.g. 0.9998), got {args.ema}")
    if args.ema_warmups is not None and (args.ema is None or args.ema_warmups < 1):
        raise ValueError(f"--ema_warmups must be at least 1 and goes with --ema, got {args.ema_warmups}")
    if args.early_stop < 0:
        raise ValueError(f"--early_stop must be 0 (never) or a number of evaluations, got {args.early_stop}")
    if args.warmup_iters < 0:
        raise ValueError(f"--warmup_iters must be 0 or more, got {args.warmup_iters}")
    for flag in ("weight_decay_norm", "weight_decay_bias"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise ValueError(f"--{flag} must not be negative, got {getattr(args, flag)}")
    if args.optimizer_groups:
        for text in args.optimizer_groups:
            parse_group_pattern(text)
        if args.weight_decay_norm is not None or args.weight_decay_bias is not None:
            raise ValueError("--optimizer_groups gives every group's weight decay: drop --weight_decay_norm and "
                             "--weight_decay_bias")
    if args.lr_drop_epochs and min(args.lr_drop_epochs) < 1:
        raise ValueError(f"--lr_drop_epochs must be epochs of 1 or more, got {args.lr_drop_epochs}")
    _check_lr_scheduler(args)


def _check_lr_scheduler(args: argparse.Namespace) -> None:
    """Each schedule's flags with their schedule only; DEIM's values in range."""
    if args.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"--lr_scheduler must be one of {list(LR_SCHEDULERS)}, got {args.lr_scheduler!r}")
    if args.lr_scheduler == "step":
        for flag, default in FLAT_COSINE_DEFAULTS.items():
            if getattr(args, flag) != default:
                raise ValueError(f"--{flag} is read by --lr_scheduler flat_cosine only; this run's is step")
        return
    for flag, changed in (("--lr_drop", args.lr_drop != 200), ("--lr_drop_epochs", bool(args.lr_drop_epochs))):
        if changed:
            raise ValueError(f"{flag} is read by --lr_scheduler step only; flat_cosine decays by --flat_epoch, "
                             f"--no_aug_epoch and --lr_gamma")
    if args.flat_epoch is None:
        raise ValueError("--lr_scheduler flat_cosine needs --flat_epoch, the epoch its cosine decay starts at (DEIM: "
                         "4 + half the epochs)")
    if args.flat_epoch < 0:
        raise ValueError(f"--flat_epoch must be 0 or more, got {args.flat_epoch}")
    if not 0 <= args.no_aug_epoch <= args.epochs:
        raise ValueError(f"--no_aug_epoch must be 0 to --epochs ({args.epochs}), got {args.no_aug_epoch}")
    if args.lr_gamma < 0:
        raise ValueError(f"--lr_gamma must not be negative, got {args.lr_gamma}")
