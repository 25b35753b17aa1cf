"""--warmup_iters: the learning rates ramp linearly over the first optimiser steps (RT-DETRv2's LinearWarmup), then
the epoch schedule takes over; the ramp follows the run's step index, so a resumed run continues it."""
import pytest
import torch

from util.optimizer import LinearWarmup, build_lr_scheduler
from util.train_step import TrainStep


def _optimizer():
    model = torch.nn.Linear(2, 1)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 1e-5}]
    return model, torch.optim.AdamW(groups, lr=1e-4)


def test_rates_of_each_step_against_a_hand_computation():
    _, optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, lr_drop=1000)
    warmup = LinearWarmup(optimizer, warmup_iters=4)
    seen = []
    for step in range(6):
        warmup(step)
        seen.append([group["lr"] for group in optimizer.param_groups])
    expected = [[1e-4 * f, 1e-5 * f] for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)]
    assert sum(seen, []) == pytest.approx(sum(expected, []))
    scheduler.step()  # an epoch later the schedule goes on from the full rates
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-5])
    warmup(1)  # a resumed run in the middle of the ramp: the rate of that step
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-4)
    with pytest.raises(ValueError, match="warmup_iters"):
        LinearWarmup(optimizer, 0)


def test_the_training_step_trains_at_the_ramped_rate():
    model, optimizer = _optimizer()

    class Criterion(torch.nn.Module):
        weight_dict = {"loss": 1.0}

        def forward(self, outputs, targets):
            return {"loss": outputs.sum()}

    step = TrainStep(model, Criterion(), optimizer, warmup=LinearWarmup(optimizer, 10))
    before = model.weight.detach().clone()
    step(torch.ones(1, 2), [], step_index=0)
    # AdamW's first step at lr = 1e-4 / 10: decay w * (1 - lr * 0.01), then minus lr (the normalised gradient, 1)
    lr = 1e-5
    torch.testing.assert_close(model.weight.detach(), before * (1 - lr * 0.01) - lr, rtol=0, atol=1e-9)
