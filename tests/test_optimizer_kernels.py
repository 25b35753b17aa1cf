"""Fused and foreach optimiser updates and foreach gradient clipping against the plain per-parameter loops; a saved
optimiser state keeps this run's implementation; a fused optimiser skips a flagged step entirely."""
import copy

import pytest
import torch
from torch import nn

from util.optimizer import build_optimizer, load_optimizer_state, optimizer_implementation


def _model() -> nn.Module:
    torch.manual_seed(0)
    # (no conv bias before the BatchNorm: its true gradient is 0, and Adam turns rounding noise into full steps)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 5))


def _groups(model: nn.Module) -> list[dict]:
    """Two groups with their own learning rates, as DETR's backbone / rest split."""
    return [{"params": list(model[0].parameters()) + list(model[1].parameters()), "lr": 1e-3},
            {"params": list(model[4].parameters())}]


def _train(implementation: str, sgd: bool, steps: int = 5) -> nn.Module:
    model = _model()
    optimizer = build_optimizer(_groups(model), lr=1e-2, weight_decay=1e-2, sgd=sgd, implementation=implementation)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("sgd", [False, True], ids=["adamw", "sgd"])
@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_updates_equal_the_plain_loop(implementation, sgd):
    plain = _train("plain", sgd)
    other = _train(implementation, sgd)
    for (name, a), b in zip(plain.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(plain[4].weight, _model()[4].weight)  # the steps moved the weights


def test_auto_is_fused_on_cpu_and_foreach_for_other_tensors():
    model = _model()
    assert optimizer_implementation(_groups(model)) == "fused"
    half = [{"params": [nn.Parameter(torch.zeros(3, dtype=torch.int32), requires_grad=False)]}]
    assert optimizer_implementation(half) == "foreach"
    assert build_optimizer(_groups(model), 1e-3, 1e-4).defaults["fused"] is True
    with pytest.raises(ValueError, match="implementation"):
        build_optimizer(_groups(model), 1e-3, 1e-4, implementation="fast")


def test_foreach_clipping_equals_the_plain_one():
    torch.manual_seed(0)
    grads = [torch.randn(s) * 3 for s in ((64, 3, 7, 7), (64,), (256, 64), (1,))]
    params = {}
    for foreach in (False, True):
        params[foreach] = [nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params[foreach], grads):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(params[foreach], 0.1, foreach=foreach)
        expected = torch.cat([g.flatten() for g in grads]).norm()  # the norm before clipping
        torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    for a, b in zip(params[False], params[True]):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6)
    clipped = torch.cat([p.grad.flatten() for p in params[True]]).norm()
    torch.testing.assert_close(clipped, torch.tensor(0.1), rtol=1e-5, atol=0)


def test_resumed_state_keeps_this_runs_implementation():
    plain_model = _model()
    plain = build_optimizer(_groups(plain_model), 1e-2, 1e-2, implementation="plain")
    plain_model(torch.randn(2, 3, 8, 8)).sum().backward()
    plain.step()
    fused_model = copy.deepcopy(plain_model)
    fused = build_optimizer(_groups(fused_model), 1e-2, 1e-2, implementation="fused")
    load_optimizer_state(fused, copy.deepcopy(plain.state_dict()))  # fresh tensors, as from a checkpoint file
    assert all(g["fused"] for g in fused.param_groups)
    step = fused.state[fused.param_groups[0]["params"][0]]["step"]
    assert step.dtype == torch.float32 and step.item() == 1.0
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for model, optimizer in ((plain_model, plain), (fused_model, fused)):  # one more step each: the same update
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
    for a, b in zip(plain_model.state_dict().values(), fused_model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sgd", [False, True], ids=["adamw", "sgd"])
def test_fused_step_flagged_found_inf_changes_nothing(sgd):
    model = _model()
    optimizer = build_optimizer(_groups(model), 1e-2, 1e-2, sgd=sgd)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()  # state exists now
    before = copy.deepcopy(model.state_dict())
    state_before = copy.deepcopy(optimizer.state_dict()["state"])
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.step()
    del optimizer.found_inf
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, state_before[index][key]), (index, key)
