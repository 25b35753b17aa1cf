"""An exponential moving average of a model's weights (``--ema DECAY``).

After every optimiser step each floating-point entry of the state dict (parameters and normalisation statistics)
moves towards the model's: ``ema += (1 - d) * (model - ema)`` with ``d = min(DECAY, (1 + n) / (10 + n))`` at
update ``n`` (1, 2, ...; the ramp of TensorFlow's ``ExponentialMovingAverage(num_updates=n)``, so that the average
forgets the random initialisation within the first few hundred steps); ``--ema_warmups N`` uses RT-DETRv2's ramp
``DECAY * (1 - exp(-n / N))`` instead. Other entries (BatchNorm's batch counters)
are copied. The average is saved as ``model_ema`` with its update count ``ema_updates`` in the checkpoint, so a
resumed run continues it exactly. It is updated after every training step, also after a step that
``--amp fp16``'s gradient scaler skipped (it then moves towards unchanged weights), resumed or not.
"""
import copy
import math

import torch
from torch import nn


class ModelEMA:
    """The moving average of ``model`` (the model itself, not a DistributedDataParallel or compiled wrapper; built
    after the model has reached its device and memory format). ``module`` is the averaged copy, in eval mode."""

    def __init__(self, model: nn.Module, decay: float, warmups: int | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ModelEMA: decay must be between 0 and 1, got {decay}")
        if warmups is not None and warmups < 1:
            raise ValueError(f"ModelEMA: warmups must be at least 1, got {warmups}")
        self.decay = decay
        self.warmups = warmups
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses: ``min(decay, (1 + n) / (10 + n))`` at update n, or with ``warmups`` N
        ``decay * (1 - exp(-n / N))`` (RT-DETRv2's ``ModelEMA``)."""
        n = self.updates + 1
        if self.warmups is not None:
            return self.decay * (1 - math.exp(-n / self.warmups))
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        weight = 1.0 - self.current_decay()
        averaged, current, copied_to, copied_from = [], [], [], []
        model_state = model.state_dict()
        for name, value in self.module.state_dict().items():
            source = model_state[name]
            if value.is_floating_point():
                averaged.append(value)
                current.append(source)
            else:
                copied_to.append(value)
                copied_from.append(source)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)
        for target, source in zip(copied_to, copied_from):
            target.copy_(source)
        self.updates += 1

    def state(self) -> dict:
        """The checkpoint entries: ``model_ema`` (a state dict named as the model's) and ``ema_updates``."""
        return {"model_ema": self.module.state_dict(), "ema_updates": self.updates}

    def load(self, checkpoint: dict) -> bool:
        """Take the average from a checkpoint's entries; False (the average left as it is) when it has none."""
        if "model_ema" not in checkpoint:
            return False
        self.module.load_state_dict(checkpoint["model_ema"])
        self.updates = int(checkpoint.get("ema_updates", 0))
        return True
