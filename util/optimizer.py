"""The optimiser and learning-rate schedule of a run."""
import math

import torch
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

IMPLEMENTATIONS = ("auto", "fused", "foreach", "plain")


def optimizer_implementation(param_groups: list[dict], implementation: str = "auto") -> str:
    """Which update kernel to use: ``fused`` (one kernel for all parameters; CPU and CUDA), ``foreach`` (grouped
    tensor ops) or ``plain`` (a Python loop over parameters, as the official code's torch version ran it).

    ``auto`` is ``fused`` where every parameter is a floating-point tensor on a device with fused kernels, else
    ``foreach``. All three compute the same update up to floating-point rounding.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"optimizer implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "auto":
        return implementation
    params = [p for group in param_groups for p in group["params"]]
    fused_devices = _get_fused_kernels_supported_devices()
    if params and all(p.is_floating_point() and p.device.type in fused_devices for p in params):
        return "fused"
    return "foreach"


def build_optimizer(param_groups: list[dict], lr: float, weight_decay: float, sgd: bool = False,
                    implementation: str = "auto") -> torch.optim.Optimizer:
    """AdamW (DETR), or SGD with momentum 0.9 (``--sgd``, Deformable DETR's option), over ``param_groups``;
    ``implementation`` as :func:`optimizer_implementation` decides (build it after moving the model to its device).

    A fused optimiser skips its whole update (parameters, moments and step count) when ``optimizer.found_inf`` is
    set to a non-zero tensor, without reading it on the host (the training step uses this for non-finite losses).
    """
    kind = optimizer_implementation(param_groups, implementation)
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "plain": {"foreach": False}}[kind]
    if sgd:
        return torch.optim.SGD(param_groups, lr=lr, momentum=0.9, weight_decay=weight_decay, **options)
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, **options)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping this optimiser's implementation (a saved state carries the
    ``fused``/``foreach`` choice of the run that wrote it, which would otherwise replace this run's), with AdamW's
    step counts where that implementation keeps them (on the parameter's device when fused, on the CPU otherwise)."""
    implementation = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keys in zip(optimizer.param_groups, implementation):
        group.update(keys)
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if torch.is_tensor(step):
                device = p.device if group.get("fused") else torch.device("cpu")
                optimizer.state[p]["step"] = step.to(device=device, dtype=torch.float32)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, lr_drop: int, lr_drop_epochs: list[int] | None = None
                       ) -> torch.optim.lr_scheduler.LRScheduler:
    """Learning rate x0.1 every ``lr_drop`` epochs (DETR's StepLR), or x0.1 at each of ``lr_drop_epochs``."""
    if lr_drop_epochs:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, sorted(lr_drop_epochs))
    return torch.optim.lr_scheduler.StepLR(optimizer, lr_drop)


class LinearWarmup:
    """Learning rates ramped linearly over the first ``warmup_iters`` optimiser steps: step s (0-based, counted over
    the whole run) trains at ``min(1, (s + 1) / warmup_iters)`` times each group's initial rate (RT-DETRv2's
    ``LinearWarmup``); from step ``warmup_iters`` on the rates are left to the epoch schedule. The step index comes
    from the epoch and the iteration, so a resumed run continues the ramp where it was."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int):
        if warmup_iters < 1:
            raise ValueError(f"LinearWarmup: warmup_iters must be at least 1, got {warmup_iters}")
        self.optimizer = optimizer
        self.warmup_iters = warmup_iters
        self.initial_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]

    def __call__(self, step: int) -> None:
        """Set the rates of optimiser step ``step``."""
        if step >= self.warmup_iters:
            return
        factor = (step + 1) / self.warmup_iters
        for group, initial in zip(self.optimizer.param_groups, self.initial_lrs):
            group["lr"] = initial * factor


LR_SCHEDULERS = ("step", "flat_cosine")


class FlatCosineSchedule:
    """DEIM's learning-rate schedule (the official ``FlatCosineLRScheduler``, after RTMDet), set per optimiser step:
    a quadratic warm-up, a flat stretch, a cosine decay to ``lr_gamma`` times the initial rate, then that floor.

    With ``n`` optimiser steps per epoch, W = ``warmup_iters``, F = n x ``flat_epoch``, E = n x ``epochs`` and
    A = n x ``no_aug_epoch``, a group of initial rate r and floor m = r x ``lr_gamma`` has the official rate after
    step i::

        f(i) = r (i / W)^2                                   for i <= W  (the warm-up)
             = r                                             for W < i <= F
             = m                                             for i >= E - A  (the epochs without augmentation)
             = m + (r - m) (1 + cos(pi (i - F) / (E - F - A))) / 2   otherwise

    in that order of cases (a ``flat_epoch`` beyond ``epochs - no_aug_epoch`` keeps r to the end, as DEIM-N's
    7800 does). The official sets f(i) after its step i, so step s (0-based over the run) trains at f(s - 1) here
    too; its first step trains at the rate its linear warm-up's construction left, r / (that warm-up's length),
    here r / W (DEIM's RT-DETRv2 configs: the same 2000; its D-FINE configs: 500). W = 0: no warm-up, r from the
    first step (the official divides by zero there). The step index comes from the epoch and the iteration, so a
    resumed run continues where it was. Called as :class:`LinearWarmup` is: ``schedule(step)`` before each step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int, warmup_iters: int,
                 flat_epoch: int, no_aug_epoch: int, lr_gamma: float):
        for name, value in (("iters_per_epoch", iters_per_epoch), ("epochs", epochs)):
            if value < 1:
                raise ValueError(f"FlatCosineSchedule: {name} must be at least 1, got {value}")
        for name, value in (("warmup_iters", warmup_iters), ("flat_epoch", flat_epoch),
                            ("no_aug_epoch", no_aug_epoch), ("lr_gamma", lr_gamma)):
            if value < 0:
                raise ValueError(f"FlatCosineSchedule: {name} must not be negative, got {value}")
        self.optimizer = optimizer
        self.warmup_iters = warmup_iters
        self.total_iters = iters_per_epoch * epochs
        self.flat_iters = iters_per_epoch * flat_epoch
        self.no_aug_iters = iters_per_epoch * no_aug_epoch
        self.initial_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.min_lrs = [lr * lr_gamma for lr in self.initial_lrs]

    def rate(self, step: int, initial_lr: float, min_lr: float) -> float:
        """The rate of optimiser step ``step`` for a group of initial rate ``initial_lr`` and floor ``min_lr``."""
        if step == 0 and self.warmup_iters:
            return (1 / self.warmup_iters) * initial_lr
        i = step - 1 if step > 0 else 0
        if self.warmup_iters and i <= self.warmup_iters:
            return initial_lr * (i / float(self.warmup_iters)) ** 2
        if i <= self.flat_iters:
            return initial_lr
        if i >= self.total_iters - self.no_aug_iters:
            return min_lr
        decay = 0.5 * (1 + math.cos(math.pi * (i - self.flat_iters) /
                                    (self.total_iters - self.flat_iters - self.no_aug_iters)))
        return min_lr + (initial_lr - min_lr) * decay

    def __call__(self, step: int) -> None:
        """Set the rates of optimiser step ``step``."""
        for group, initial, floor in zip(self.optimizer.param_groups, self.initial_lrs, self.min_lrs):
            group["lr"] = self.rate(step, initial, floor)
