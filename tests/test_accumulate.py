"""--accumulate_steps N: one optimiser step on the gradients of N batches, each normalised as part of the whole, is
the step of one batch N times larger (frozen BatchNorm, no dropout, images of one size so that no batch pads
differently), including the normalisation of the box losses by the number of boxes of all N batches."""
import copy

import pytest
import torch

import cli
from models import build_model
from tests.conftest import TINY_MODEL_FLAGS, tiny_architecture_flags
from util.nested_tensor import nested_tensor_from_tensor_list
from util.train_step import TrainStep

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 64, 64, generator=g, dtype=torch.float64) for _ in range(n)]


def _targets(counts: list[int], seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    targets = []
    for n in counts:
        centres = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, 5, (n,), generator=g), "boxes": torch.cat([centres, sizes], 1)})
    return targets


def _step_grads(model, criterion, batches) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the gradients are what is compared
    TrainStep(model, criterion, optimizer, max_norm=0.0).accumulated(batches)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("meta_arch, counts", [
    ("deformable_detr", [3, 1, 0, 2]),  # every loss per box: any numbers of targets
    ("detr", [2, 1, 1, 2]),  # DETR's cross-entropy is a mean over queries: batches holding as many targets
])
def test_accumulated_step_equals_one_larger_batch(meta_arch, counts):
    flags = [*tiny_architecture_flags(meta_arch, TINY_MODEL_FLAGS), "--num_classes", "6", "--backbone_norm",
             "frozen_bn", "--accumulate_steps", "2"]
    args = cli.get_args_parser().parse_args(flags)
    cli.check_args(args)
    torch.manual_seed(0)
    model, criterion, _ = build_model(args)
    model, criterion = model.double().train(), criterion.double().train()
    images, targets = _images(4, 1), _targets(counts, 2)
    whole = _step_grads(copy.deepcopy(model), criterion, [(nested_tensor_from_tensor_list(images), targets)])
    halves = [(nested_tensor_from_tensor_list(images[:2]), targets[:2]),
              (nested_tensor_from_tensor_list(images[2:]), targets[2:])]
    accumulated = _step_grads(copy.deepcopy(model), criterion, halves)
    assert whole.keys() == accumulated.keys() and len(whole) > 20
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-9, atol=1e-12, msg=name)
    # without the shared normalisation (each half normalised by its own boxes) the box-loss gradients differ
    separate = copy.deepcopy(model)
    optimizer = torch.optim.SGD(separate.parameters(), lr=0.0)
    optimizer.zero_grad()
    for samples, half_targets in halves:
        losses = criterion(separate(samples), half_targets)
        sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict).backward()
    differs = [n for n, p in separate.named_parameters() if p.grad is not None
               and not torch.allclose(p.grad, whole[n], rtol=1e-6, atol=1e-9)]
    assert differs


def test_logged_terms_of_an_accumulated_step_are_the_larger_batchs():
    flags = [*tiny_architecture_flags("deformable_detr", TINY_MODEL_FLAGS), "--num_classes", "6", "--backbone_norm",
             "frozen_bn"]
    torch.manual_seed(0)
    model, criterion, _ = build_model(cli.get_args_parser().parse_args(flags))
    model, criterion = model.double().train(), criterion.double().train()
    images, targets = _images(4, 3), _targets([1, 2, 2, 1], 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = TrainStep(model, criterion, optimizer)
    whole = step.accumulated([(nested_tensor_from_tensor_list(images), targets)]).loss_dict
    halves = step.accumulated([(nested_tensor_from_tensor_list(images[:2]), targets[:2]),
                               (nested_tensor_from_tensor_list(images[2:]), targets[2:])]).loss_dict
    for name in ("loss_ce", "loss_bbox", "loss_giou", "loss_bbox_0"):
        torch.testing.assert_close(halves[name], whole[name], rtol=1e-9, atol=1e-12, msg=name)
    assert criterion.num_boxes(targets, torch.device("cpu")) == 6.0  # the normaliser is back to the batch's own
