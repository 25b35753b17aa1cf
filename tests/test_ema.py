"""--ema: the moving average's arithmetic, its evaluation and checkpoint entries, and an exact resume."""
import json

import pytest
import torch
from torch import nn

from run import run
from tools.data.synthetic import generate
from util.ema import ModelEMA


def test_average_follows_the_decay_ramp_and_copies_counters():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)  # the average starts at 1.0
    model.num_batches_tracked.fill_(7)
    ema.update(model)  # update 1: decay min(0.5, 2/11) = 2/11
    expected = 1.0 + (1 - 2 / 11) * (3.0 - 1.0)
    torch.testing.assert_close(ema.module.weight, torch.full((2,), expected), rtol=1e-6, atol=0)
    ema.update(model)  # update 2: decay min(0.5, 3/12) = 0.25
    expected = expected + 0.75 * (3.0 - expected)
    torch.testing.assert_close(ema.module.weight, torch.full((2,), expected), rtol=1e-6, atol=0)
    for _ in range(20):
        ema.update(model)
    assert ema.current_decay() == 0.5 and ema.updates == 22
    assert ema.module.num_batches_tracked.item() == 7  # copied, not averaged
    assert not ema.module.weight.requires_grad and not ema.module.training
    with pytest.raises(ValueError, match="decay must be between 0 and 1"):
        ModelEMA(model, decay=1.0)


def test_rtdetr_ramp_with_warmups():
    """--ema_warmups N: the decay of update n is DECAY * (1 - exp(-n / N)), as RT-DETRv2's ModelEMA."""
    import math

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9, warmups=4)
    expected = 0.0
    with torch.no_grad():
        for n in range(1, 6):
            model.weight.fill_(float(n))
            d = 0.9 * (1 - math.exp(-n / 4))
            assert ema.current_decay() == pytest.approx(d)
            ema.update(model)
            expected = d * expected + (1 - d) * n
            assert ema.module.weight.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="warmups"):
        ModelEMA(model, decay=0.9, warmups=0)


@pytest.fixture(scope="module")
def small_coco(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("ema_data"), num_train=8, num_val=4, image_size=64, seed=1)


def _run(tiny_args, coco, out, epochs, *extra):
    return run(tiny_args(coco, "--epochs", str(epochs), "--ema", "0.9", "--output_dir", str(out), *extra))


def test_ema_is_evaluated_saved_and_resumes_exactly(small_coco, tiny_args, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run(tiny_args, small_coco, straight, 2)
    _run(tiny_args, small_coco, split, 1)
    _run(tiny_args, small_coco, split, 2, "--resume", str(split / "checkpoint.pth"))
    a = torch.load(straight / "checkpoint.pth", weights_only=True)
    b = torch.load(split / "checkpoint.pth", weights_only=True)
    assert a["ema_updates"] == b["ema_updates"] == 4  # 2 epochs of 2 steps
    assert a["model_ema"].keys() == a["model"].keys()
    for name, value in a["model_ema"].items():
        assert torch.equal(value, b["model_ema"][name]), name  # bit-identical continuation
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert any(not torch.equal(v, a["model"][k]) for k, v in a["model_ema"].items() if v.is_floating_point())
    log = [json.loads(line) for line in (straight / "log.txt").read_text().splitlines()]
    assert len(log[-1]["test_ema_coco_eval_bbox"]) == 12 and len(log[-1]["test_coco_eval_bbox"]) == 12
    resumed = [json.loads(line) for line in (split / "log.txt").read_text().splitlines()]
    assert resumed[-1]["test_ema_coco_eval_bbox"] == log[-1]["test_ema_coco_eval_bbox"]
    # --eval with --ema evaluates the saved average next to the raw weights
    evaluated = run(tiny_args(small_coco, "--eval", "--ema", "0.9", "--resume", str(straight / "checkpoint.pth")))
    assert evaluated["ema_coco_eval_bbox"] == pytest.approx(log[-1]["test_ema_coco_eval_bbox"])
    assert evaluated["coco_eval_bbox"] == pytest.approx(log[-1]["test_coco_eval_bbox"])
