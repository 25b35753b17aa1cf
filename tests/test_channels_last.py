"""--channels_last is the same math as the default layout: in fp64, where rounding cannot hide a difference, one
training step gives the same loss and gradients either way (in fp32 they differ by rounding, which the
benchmarks/amp_accuracy.py control arm measures over whole trainings)."""
import copy

import torch

from models import build_model


def _loss_and_grads(model, criterion, images, targets):
    outputs = model(images)
    losses = criterion(outputs, targets)
    loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    model.zero_grad()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_channels_last_backbone_gives_the_same_fp64_gradients(tiny_args, tiny_coco):
    torch.manual_seed(0)
    model, criterion, _ = build_model(tiny_args(tiny_coco, "--num_classes", "12"))
    model, criterion = model.double().train(), criterion.double()
    channels_last = copy.deepcopy(model)
    channels_last.backbone.to(memory_format=torch.channels_last)
    assert channels_last.backbone[0].body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 48, generator=g, dtype=torch.float64), torch.rand(3, 40, 64, generator=g,
                                                                                  dtype=torch.float64)]
    targets = [{"labels": torch.tensor([1, 5]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.2]],
                                                                        dtype=torch.float64)},
               {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.4, 0.4, 0.5, 0.5]], dtype=torch.float64)}]
    loss, grads = _loss_and_grads(model, criterion, images, targets)
    loss_cl, grads_cl = _loss_and_grads(channels_last, criterion, images, targets)
    assert abs(loss_cl - loss) <= 1e-12 * abs(loss)
    assert grads.keys() == grads_cl.keys() and any(n.startswith("backbone") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_cl[name], grad, rtol=1e-9, atol=1e-12, msg=name)
