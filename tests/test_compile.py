"""--compile: torch.compile with dynamic shapes where it can work, else eager with one message."""
import copy
import os

import pytest
import torch
from torch import nn

import util.compile as compile_module
from util.compile import CompiledWithFallback, compile_model, compile_problem


def test_no_cpu_compiler_means_eager_with_one_message(monkeypatch, capsys):
    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)
    assert "no C++ compiler" in compile_problem(torch.device("cpu"))
    model = nn.Linear(3, 2)
    assert compile_model(model, torch.device("cpu")) is model
    assert capsys.readouterr().out.count("--compile:") == 1


class _FailsToCompile(nn.Module):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        raise torch._dynamo.exc.InternalTorchDynamoError("the backend cannot lower this graph")


def test_a_failing_compilation_falls_back_to_eager_once(capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    wrapped = CompiledWithFallback(model, _FailsToCompile())
    x = torch.randn(5, 3)
    for _ in range(3):
        torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=0)
    assert _FailsToCompile.calls == 1 and wrapped.fell_back
    out = capsys.readouterr().out
    assert out.count("--compile: compiling the model failed") == 1 and "cannot lower" in out
    assert list(wrapped.parameters()) == list(model.parameters())  # the optimiser sees the model's parameters
    wrapped.eval()
    assert not model.training
    model.takes_targets = True
    assert wrapped.takes_targets  # attributes reach the model


def test_other_errors_are_not_swallowed():
    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("a bug in the model")

    with pytest.raises(ValueError, match="a bug"):
        CompiledWithFallback(nn.Identity(), Broken())(torch.zeros(1))


@pytest.mark.skipif(os.environ.get("DETR_SLOW_TESTS") != "1",
                    reason="compiling even the tiny DETR takes about 4 minutes on 1 CPU core (233 s measured); "
                           "set DETR_SLOW_TESTS=1 to run it")
def test_tiny_detr_compiles_with_dynamic_shapes_and_matches_eager():
    from models import build_model
    from tests.test_golden_outputs import TINY, _inputs, _parse
    from util.nested_tensor import nested_tensor_from_tensor_list

    torch.manual_seed(0)
    model, criterion, _ = build_model(_parse(TINY))
    model.eval()
    images, _ = _inputs()
    compiled = compile_model(model, torch.device("cpu"))
    assert isinstance(compiled, CompiledWithFallback)
    with torch.no_grad():
        for batch in (images[:2], images):  # two batch and image sizes: one dynamic graph
            samples = nested_tensor_from_tensor_list(batch)
            torch.testing.assert_close(compiled(samples)["pred_boxes"], model(samples)["pred_boxes"], rtol=1e-4,
                                       atol=1e-5)
    assert not compiled.fell_back


class _BackwardFails(torch.autograd.Function):
    """The identity, whose backward fails as a backward graph that cannot be compiled does (at the first
    ``backward()``, after a successful compiled forward)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise torch._dynamo.exc.InternalTorchDynamoError("the backend cannot lower the backward graph")


class _SquaredError(nn.Module):
    weight_dict = {"loss": 1.0}

    def forward(self, outputs, targets):
        return {"loss": (outputs - targets[0]["y"]).pow(2).mean()}


def test_a_backward_that_fails_to_compile_redoes_the_step_eager(capsys):
    from util.train_step import TrainStep

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    reference = copy.deepcopy(model)
    x, targets = torch.randn(5, 3), [{"y": torch.randn(5, 2)}]
    wrapped = CompiledWithFallback(model, lambda inputs: _BackwardFails.apply(model(inputs)))
    TrainStep(wrapped, _SquaredError(), torch.optim.SGD(model.parameters(), lr=0.1))(x, targets)
    TrainStep(reference, _SquaredError(), torch.optim.SGD(reference.parameters(), lr=0.1))(x, targets)
    assert wrapped.fell_back
    assert capsys.readouterr().out.count("--compile: compiling the model failed") == 1
    for p, q in zip(model.parameters(), reference.parameters()):  # one eager step, as without --compile
        torch.testing.assert_close(p, q, rtol=0, atol=0)
