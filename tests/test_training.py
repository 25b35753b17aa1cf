"""End-to-end training behaviour: learning, exact resume, non-finite loss, evaluation of a checkpoint."""
import hashlib
import json

import pytest
import torch

import cli
from datasets import build_dataset
from engine import train_one_epoch
from models import build_model
from models.detr import SetCriterion
from models.param_groups import build_param_groups
from run import run
from util.nested_tensor import collate_fn


def _log(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "log.txt").read_text().splitlines()]


def test_loss_falls_when_fitting_a_few_images(tiny_coco, tiny_args):
    torch.manual_seed(0)
    args = tiny_args(tiny_coco)
    args.num_classes = 12
    model, criterion, _ = build_model(args)
    dataset = build_dataset("train", args)
    batch = collate_fn([dataset[i] for i in range(4)])
    optimizer = torch.optim.AdamW(build_param_groups(model, args.lr_backbone), lr=args.lr)
    stats = [train_one_epoch(model, criterion, [batch], optimizer, torch.device("cpu"), epoch=i, max_norm=0.1,
                             print_freq=1000)["loss"] for i in range(40)]
    assert stats[-1] < 0.7 * stats[0], stats


def test_epoch_stats_leave_out_a_meter_the_criterion_never_updates(tiny_coco, tiny_args):
    """A criterion without a class error (as RT-DETRv2's) must not log a class error of 0 (a perfect classifier)."""
    class NoClassError(SetCriterion):
        def forward(self, outputs, targets):
            return {k: v for k, v in super().forward(outputs, targets).items() if k != "class_error"}

    torch.manual_seed(0)
    args = tiny_args(tiny_coco)
    args.num_classes = 12
    model, criterion, _ = build_model(args)
    batch = collate_fn([build_dataset("train", args)[i] for i in range(2)])
    optimizer = torch.optim.AdamW(build_param_groups(model, args.lr_backbone), lr=args.lr)
    with_error = train_one_epoch(model, criterion, [batch], optimizer, torch.device("cpu"), epoch=0, print_freq=1000)
    criterion.__class__ = NoClassError
    without = train_one_epoch(model, criterion, [batch], optimizer, torch.device("cpu"), epoch=1, print_freq=1000)
    assert 0 <= with_error["class_error"] <= 100
    assert "class_error" not in without and "loss_ce" in without


def test_training_writes_logs_and_checkpoint_and_eval_reproduces(tiny_coco, tiny_args, tmp_path):
    out = tmp_path / "run"
    stats = run(tiny_args(tiny_coco, "--epochs", "2", "--output_dir", str(out)))
    log = _log(out)
    assert [e["epoch"] for e in log] == [0, 1]
    assert {"train_loss", "train_loss_ce", "train_class_error", "test_coco_eval_bbox", "n_parameters"} <= set(log[-1])
    assert len(log[-1]["test_coco_eval_bbox"]) == 12
    assert (out / "config.yaml").is_file() and (out / "checkpoint.pth").is_file()
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and isinstance(ckpt["args"], dict)
    # Evaluating the checkpoint gives the numbers the training run printed for its last epoch.
    evaluated = run(tiny_args(tiny_coco, "--eval", "--resume", str(out / "checkpoint.pth")))
    assert evaluated["coco_eval_bbox"] == pytest.approx(stats["coco_eval_bbox"])


def test_resume_continues_exactly(tiny_coco, tiny_args, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    # Evaluation runs after every epoch and must not disturb the training randomness.
    run(tiny_args(tiny_coco, "--epochs", "3", "--output_dir", str(straight)))
    run(tiny_args(tiny_coco, "--epochs", "1", "--output_dir", str(split)))
    run(tiny_args(tiny_coco, "--epochs", "3", "--output_dir", str(split),
                             "--resume", str(split / "checkpoint.pth")))
    a, b = _log(straight), _log(split)
    assert [e["epoch"] for e in b] == [0, 1, 2]
    for ea, eb in zip(a, b):
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=1e-6, abs=1e-7)
        assert eb["train_loss_bbox"] == pytest.approx(ea["train_loss_bbox"], rel=1e-6, abs=1e-7)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_coco, tiny_args, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(tiny_args(tiny_coco, "--epochs", "1", "--eval_every", "5", "--output_dir", str(out)))
    digest = hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest()

    calls = {"n": 0}
    real_loss_boxes = SetCriterion.loss_boxes

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        losses = real_loss_boxes(self, *args, **kwargs)
        if calls["n"] > 2 * 2:  # 2 decoder outputs (final + 1 aux) per iteration: poison iteration 2 on
            losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses

    monkeypatch.setattr(SetCriterion, "loss_boxes", poisoned)
    with pytest.raises(SystemExit) as excinfo:
        run(tiny_args(tiny_coco, "--epochs", "2", "--output_dir", str(out),
                                 "--resume", str(out / "checkpoint.pth")))
    message = str(excinfo.value)
    assert "epoch 1, iteration 2" in message and "loss_bbox=nan" in message
    assert hashlib.sha256((out / "checkpoint.pth").read_bytes()).hexdigest() == digest
    assert [e["epoch"] for e in _log(out)] == [0]


def test_finetune_from_skips_a_differently_sized_class_head(tiny_coco, tiny_args, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_args(tiny_coco, "--epochs", "1", "--eval_every", "5", "--output_dir", str(out)))
    capsys.readouterr()
    run(tiny_args(tiny_coco, "--epochs", "1", "--eval_every", "5", "--num_classes", "20",
                             "--finetune_from", str(out / "checkpoint.pth")))
    printed = capsys.readouterr().out
    assert "skipped 2 entries" in printed
    assert "class_embed.weight (file (13, 32) vs model (21, 32))" in printed


def test_category_id_above_num_classes_is_rejected(tiny_coco, tiny_args):
    with pytest.raises(ValueError, match="--num_classes"):
        run(tiny_args(tiny_coco, "--epochs", "1", "--num_classes", "5"))


def test_missing_coco_path_is_named():
    args = cli.get_args_parser().parse_args(["--device", "cpu"])
    with pytest.raises(ValueError, match="--coco_path"):
        run(args)


def test_resume_into_a_different_model_names_the_flag(tiny_coco, tiny_args, tmp_path):
    out = tmp_path / "run"
    run(tiny_args(tiny_coco, "--epochs", "1", "--eval_every", "5", "--output_dir", str(out)))
    with pytest.raises(ValueError, match="--resume .* does not fit the model"):
        run(tiny_args(tiny_coco, "--eval", "--hidden_dim", "64", "--resume", str(out / "checkpoint.pth")))


def test_resume_finishes_an_epoch_whose_evaluation_was_interrupted(tiny_coco, tiny_args, tmp_path):
    out = tmp_path / "run"
    run(tiny_args(tiny_coco, "--epochs", "2", "--output_dir", str(out)))
    lines = (out / "log.txt").read_text().splitlines()
    (out / "log.txt").write_text(lines[0] + "\n")  # as if stopped while evaluating epoch 1
    stats = run(tiny_args(tiny_coco, "--epochs", "2", "--output_dir", str(out), "--auto_resume"))
    restored = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in restored] == [0, 1]
    original = json.loads(lines[1])
    assert set(restored[1]) == set(original)
    for key, value in original.items():  # the same evaluation and training averages
        assert restored[1][key] == pytest.approx(value), key
    assert stats["coco_eval_bbox"] == pytest.approx(restored[1]["test_coco_eval_bbox"])


def test_auto_resume_continues_from_the_output_dir(tiny_coco, tiny_args, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_args(tiny_coco, "--epochs", "1", "--eval_every", "5", "--output_dir", str(out),
                             "--auto_resume"))  # nothing to resume yet: starts at epoch 0
    run(tiny_args(tiny_coco, "--epochs", "2", "--eval_every", "5", "--output_dir", str(out),
                             "--auto_resume"))
    assert "at epoch 1" in capsys.readouterr().out
    assert [e["epoch"] for e in _log(out)] == [0, 1]
