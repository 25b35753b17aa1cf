"""Loss terms read from the device only when they are shown: at ``--print_freq`` and at the end of an epoch.

The official training loop calls ``.item()`` on every loss term of every iteration, which makes the host wait for
the device each step. Here each step's (process-averaged) terms stay on the device, stacked into one vector; at a
progress line or the end of the epoch all pending vectors come to the host in one transfer and enter the
MetricLogger step by step with the same values, in the same order, as the official loop gives it (the logs are
identical). The first step whose weighted loss is not finite raises :class:`NonFiniteLossError` with that step's
terms; the training step has made sure such a step left the weights alone (see util/train_step.py).
"""
import math

import torch
from torch import Tensor

from util.metric_logger import MetricLogger


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; carries the epoch, iteration and the loss terms."""

    def __init__(self, epoch: int, iteration: int, loss_terms: dict[str, float]):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in sorted(loss_terms.items()))
        super().__init__(f"non-finite loss at epoch {epoch}, iteration {iteration}: {terms}")
        self.epoch, self.iteration, self.loss_terms = epoch, iteration, loss_terms


def weighted_terms(values: dict[str, float], weight_dict: dict) -> tuple[float, dict, dict]:
    """(total weighted loss, weighted terms, unweighted terms ``NAME_unscaled``) from host values, as the official
    loop computes them (Python floats, the total a plain sum)."""
    unscaled = {f"{k}_unscaled": v for k, v in values.items()}
    scaled = {k: v * weight_dict[k] for k, v in values.items() if k in weight_dict}
    return sum(scaled.values()), scaled, unscaled


class DeferredLosses:
    """Pending loss terms of the steps since the last read; ``add`` one step's (with its learning rate, or None in
    evaluation), ``flush`` them into a MetricLogger.

    ``every_step``: read each step at once (the official loop's behaviour; ``--official_paths``).
    ``stop_on_non_finite``: False logs non-finite values as they are (evaluation).
    """

    def __init__(self, weight_dict: dict, epoch: int, every_step: bool = False, stop_on_non_finite: bool = True):
        self.weight_dict, self.epoch, self.every_step = weight_dict, epoch, every_step
        self.stop_on_non_finite = stop_on_non_finite
        self.names: list[str] | None = None
        self.pending: list[tuple[int, Tensor, float]] = []  # (iteration, stacked terms, learning rate)

    def add(self, iteration: int, loss_dict: dict[str, Tensor], lr: float | None, metric_logger: MetricLogger,
            read_now: bool = False) -> None:
        """Keep one step's terms (already averaged over processes); read them at once with ``read_now`` or
        ``every_step``, raising NonFiniteLossError if the loss is not finite."""
        names = list(loss_dict)
        if self.names is None:
            self.names = names
        elif names != self.names:  # a model whose terms change between steps: read what is pending first
            self.flush(metric_logger)
            self.names = names
        self.pending.append((iteration, torch.stack([v.detach() for v in loss_dict.values()]), lr))
        if read_now or self.every_step:
            self.flush(metric_logger)

    def flush(self, metric_logger: MetricLogger) -> None:
        """Read every pending step (one device-to-host transfer) into ``metric_logger``; raise NonFiniteLossError
        at the first step whose weighted loss is not finite (the steps before it are logged) unless told not to."""
        if not self.pending:
            return
        rows = torch.stack([terms.double() for _, terms, _ in self.pending]).tolist()
        pending, self.pending = self.pending, []
        for (iteration, _, lr), row in zip(pending, rows):
            loss_value, scaled, unscaled = weighted_terms(dict(zip(self.names, row)), self.weight_dict)
            if self.stop_on_non_finite and not math.isfinite(loss_value):
                raise NonFiniteLossError(self.epoch, iteration, scaled)
            metric_logger.update(loss=loss_value, **scaled, **unscaled)
            if "class_error_unscaled" in unscaled:  # criteria that log a class error (not RT-DETRv2's)
                metric_logger.update(class_error=unscaled["class_error_unscaled"])
            if lr is not None:
                metric_logger.update(lr=lr)
