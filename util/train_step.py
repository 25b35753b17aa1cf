"""One optimisation step: forward (under ``--amp``'s autocast), set loss in fp32, backward, clipping, update, EMA.

A step never makes the host wait for the device. Whether the loss is finite is decided on the device: with a fused
optimiser (the default on CPU and CUDA, util/optimizer.py) a non-finite step is handed to the optimiser as
``found_inf`` and its whole update (weights, moments, step count) is skipped inside the kernel; the loss log reads
the terms later and stops the run naming that step (util/loss_log.py). Optimisers without that switch (AdamW or
SGD built with ``foreach``/``plain``, as ``--official_paths`` builds them) read the loss on the host each step and stop
before the backward pass, as the official loop does.
"""
import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from util.amp import Precision
from util.compile import CompiledWithFallback
from util.distributed import reduce_dict
from util.ema import ModelEMA


def takes_targets(model: nn.Module) -> bool:
    """Whether the model's training forward takes the targets too (``model(samples, targets)``: DINO's denoising
    queries are built from them); looks through DistributedDataParallel and torch.compile wrappers."""
    return getattr(getattr(model, "module", model), "takes_targets", False)


@dataclass
class StepResult:
    """What one step leaves for the log: the loss terms averaged over processes (device tensors), the gradient norm
    before clipping (a device tensor, computed without ``--clip_max_norm`` too; None for a step that stopped before
    its backward pass), and ``read_now``: the step found a
    non-finite loss on the host and did not update (its terms must be read at once to stop the run)."""

    loss_dict: dict[str, Tensor]
    grad_norm: Tensor | None
    read_now: bool = False


class TrainStep:
    """``step(samples, targets)`` trains ``model`` on one batch and returns a :class:`StepResult`.

    ``max_norm`` > 0 clips the gradient norm (``torch.nn.utils.clip_grad_norm_``, its foreach kernels where the
    device has them); ``precision`` is ``--amp`` (util/amp.py; default off); ``ema`` is updated from ``ema_source``
    (the model without DDP or compile wrappers; default ``model``) after every step; ``host_check`` forces the
    official per-step host check of the loss (default: only where the optimiser cannot skip a step by itself);
    ``warmup`` (util/optimizer.LinearWarmup) sets the learning rates of the step whose index the call gives.
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float = 0.0,
                 *, precision: Precision | None = None, ema: ModelEMA | None = None,
                 ema_source: nn.Module | None = None, host_check: bool | None = None, warmup=None):
        self.model, self.criterion, self.optimizer, self.max_norm = model, criterion, optimizer, max_norm
        self.warmup = warmup
        self.precision = precision or Precision("off", torch.device("cpu"))
        self.ema, self.ema_source = ema, ema_source if ema_source is not None else model
        skips_by_itself = bool(optimizer.defaults.get("fused"))
        self.host_check = not skips_by_itself if host_check is None else host_check

    def __call__(self, samples, targets: list[dict], step_index: int | None = None) -> StepResult:
        """One step on a batch; ``step_index``: its index among the run's optimiser steps (for the warm-up)."""
        return self.accumulated([(samples, targets)], step_index)

    def accumulated(self, batches: list[tuple], step_index: int | None = None) -> StepResult:
        """One optimiser step on the summed gradients of ``batches`` (``[(samples, targets), ...]``;
        ``--accumulate_steps``), each batch's losses normalised as part of the whole (the criterion's
        ``normalised_over``): with frozen normalisation the step is that of one batch holding them all. The returned
        terms are those of the whole: the weighted ones summed over the batches, the logged ones (class error)
        averaged."""
        if self.warmup is not None and step_index is not None:
            self.warmup(step_index)
        scaler = self.precision.scaler
        weight_dict = self.criterion.weight_dict
        self.optimizer.zero_grad()
        summed: dict[str, Tensor] = {}
        normalise = contextlib.nullcontext()
        if len(batches) > 1:
            device = next(t["labels"].device for _, targets in batches for t in targets) if any(
                targets for _, targets in batches) else torch.device("cpu")
            total = self.criterion.num_boxes([t for _, targets in batches for t in targets], device)
            normalise = self.criterion.normalised_over(total, len(batches))
        with normalise:
            for k, (samples, targets) in enumerate(batches):
                sync = self.model.no_sync() if k < len(batches) - 1 and hasattr(self.model, "no_sync") else \
                    contextlib.nullcontext()  # DDP: gradients all-reduced once, after the last batch
                with sync:
                    with self.precision.autocast():
                        outputs = self.model(samples, targets) if takes_targets(self.model) else self.model(samples)
                    outputs = self.precision.to_fp32(outputs)
                    loss_dict = self.criterion(outputs, targets)
                    losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
                    if self.host_check:
                        finite = torch.stack([v.detach() for k, v in loss_dict.items() if k in weight_dict])
                        if not bool(finite.isfinite().all()):
                            return StepResult(reduce_dict(loss_dict), None, read_now=True)  # before backward
                    try:
                        (scaler.scale(losses) if scaler is not None else losses).backward()
                    except Exception as exc:  # noqa: BLE001 - only a --compile backward failure is handled
                        if not (isinstance(self.model, CompiledWithFallback) and self.model.fall_back(exc)):
                            raise
                        return self.accumulated(batches, step_index)  # the same step again, eager
                for name, value in loss_dict.items():
                    value = value.detach() if name in weight_dict else value.detach() / len(batches)
                    summed[name] = summed[name] + value if name in summed else value
        reduced = reduce_dict(summed)
        finite = torch.stack([reduced[k] for k in reduced if k in weight_dict]).isfinite().all()
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.max_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        else:  # the norm alone, for the log (train_grad_norm)
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        if scaler is not None:  # skips steps with non-finite gradients itself (on the device for fused optimisers)
            scaler.step(self.optimizer)
            scaler.update()
        elif self.host_check:
            self.optimizer.step()
        else:
            self.optimizer.found_inf = (~finite).float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        if self.ema is not None:
            self.ema.update(self.ema_source)
        return StepResult(reduced, grad_norm)
