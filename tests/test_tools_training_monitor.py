"""Watching training: the gradient norm (before clipping) in the log, TensorBoard event files read back with
TensorBoard's own reader, and tools/plot_logs.py's pictures of logs and of a saved evaluation."""
import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import cli
from datasets import build_dataset
from engine import train_one_epoch
from models import build_model
from models.param_groups import build_param_groups
from tests.conftest import TINY_FLAGS
from tests.tiny_checkpoints import train_tiny
from tools import plot_logs
from tools.command_line import run_tool
from util.nested_tensor import collate_fn
from util.tensorboard_log import COCO_STATS_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")

ITERATIONS = 6  # 24 training images in batches of 4


@pytest.fixture(scope="module")
def run_dir(tiny_coco, tmp_path_factory) -> Path:
    """Two epochs of a tiny DETR with --tensorboard, evaluated after each."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("monitored") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        train_tiny(tiny_coco, out, "detr", "--epochs", "2", "--tensorboard")
    return out


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.txt").read_text().splitlines()]


def _events(run_dir: Path):
    reader = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    reader.Reload()
    return reader


def test_event_files_hold_every_logged_value_and_pictures(run_dir, tiny_coco):
    reader, log = _events(run_dir), _log(run_dir)
    scalars = set(reader.Tags()["scalars"])
    per_iteration = {"train/loss", "train/loss_ce", "train/loss_bbox", "train/loss_giou", "train/loss_ce_0",
                     "train_unscaled/class_error", "train_unscaled/cardinality_error", "train/grad_norm",
                     "lr/group0", "lr/group1", "speed/iterations_per_s"}
    assert per_iteration <= scalars
    assert {f"coco_bbox/{name}" for name in COCO_STATS_NAMES} <= scalars
    assert {"epoch/train_loss", "epoch/test_loss", "epoch/train_grad_norm", "epoch/test_class_error"} <= scalars
    assert [e.step for e in reader.Scalars("train/loss")] == list(range(2 * ITERATIONS))
    for epoch, entry in enumerate(log):
        steps = range(epoch * ITERATIONS, (epoch + 1) * ITERATIONS)
        # the log's epoch averages are the averages of the iterations TensorBoard got
        for tag, key in (("train/loss", "train_loss"), ("train/loss_giou", "train_loss_giou"),
                         ("train/grad_norm", "train_grad_norm"), ("train_unscaled/class_error", "train_class_error")):
            values = [e.value for e in reader.Scalars(tag) if e.step in steps]
            assert sum(values) / len(values) == pytest.approx(entry[key], rel=1e-5), tag
        assert [e.value for e in reader.Scalars("lr/group0") if e.step in steps] == pytest.approx(
            [entry["train_lr"]] * ITERATIONS)
        coco = {name: [e.value for e in reader.Scalars(f"coco_bbox/{name}") if e.step == epoch][0]
                for name in COCO_STATS_NAMES}
        assert list(coco.values()) == pytest.approx(entry["test_coco_eval_bbox"], abs=1e-6)
    first_val_ids = sorted(json.loads((tiny_coco / "annotations" / "instances_val2017.json").read_text())["images"],
                           key=lambda image: image["id"])[:4]
    assert sorted(reader.Tags()["images"]) == sorted([f"val/{image['id']}" for image in first_val_ids]
                                                     + ["val_confusion_matrix"])
    assert [e.step for e in reader.Images("val_confusion_matrix")] == [0, 1]
    val = json.loads((tiny_coco / "annotations" / "instances_val2017.json").read_text())
    with_boxes = {c["name"] for c in val["categories"] if any(a["category_id"] == c["id"] for a in val["annotations"])}
    assert {tag.rsplit("/", 1)[1] for tag in scalars if tag.startswith("val_per_class/AP/")} == with_boxes
    pictures = reader.Images(f"val/{first_val_ids[0]['id']}")
    assert [p.step for p in pictures] == [0, 1]
    # ground truth | predictions, each 64 px enlarged 4 times, 4 px apart
    assert (pictures[0].width, pictures[0].height) == (2 * 256 + 4, 256)


def test_log_has_the_gradient_norm_average(run_dir):
    for entry in _log(run_dir):
        assert math.isfinite(entry["train_grad_norm"]) and entry["train_grad_norm"] > 0


@pytest.mark.parametrize("max_norm", [0.0, 0.1])
def test_gradient_norm_is_the_norm_before_clipping(tiny_coco, max_norm):
    torch.manual_seed(0)
    args = cli.get_args_parser().parse_args([*TINY_FLAGS, "--coco_path", str(tiny_coco), "--num_classes", "12"])
    model, criterion, _ = build_model(args)
    dataset = build_dataset("train", args)
    batch = collate_fn([dataset[i] for i in range(2)])
    reference = copy.deepcopy(model).train()  # the same weights, gradients computed by hand
    outputs = reference(batch[0])
    losses = criterion(outputs, list(batch[1]))
    sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict).backward()
    # in float64: one float32 sum over the 11 M gradient values is off by about 1e-3
    expected = torch.cat([p.grad.double().flatten() for p in reference.parameters() if p.grad is not None]).norm()
    optimizer = torch.optim.AdamW(build_param_groups(model, args.lr_backbone), lr=args.lr)
    with contextlib.redirect_stdout(io.StringIO()):
        stats = train_one_epoch(model, criterion, [batch], optimizer, torch.device("cpu"), epoch=0,
                                max_norm=max_norm, print_freq=1000)
    assert expected > 1.0  # far above the clipping threshold
    assert stats["grad_norm"] == pytest.approx(expected.item(), rel=1e-5)


def test_tensorboard_needs_an_output_folder(tiny_coco):
    args = cli.get_args_parser().parse_args([*TINY_FLAGS, "--coco_path", str(tiny_coco), "--tensorboard"])
    with pytest.raises(ValueError, match="--tensorboard .* --output_dir"):
        cli.check_args(args)


def test_plot_logs_draws_two_runs_and_the_precision_recall_of_a_saved_evaluation(run_dir, tmp_path):
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "log.txt").write_text("".join(json.dumps({**e, "train_loss": 2 * e["train_loss"]}) + "\n"
                                           for e in _log(run_dir)))
    out = tmp_path / "plots" / "curves.png"
    with contextlib.redirect_stdout(io.StringIO()):
        written = plot_logs.main([str(run_dir / "log.txt"), str(other), "--out", str(out),
                                  "--pr", str(run_dir / "eval" / "latest.pth")])
    assert written == [out, tmp_path / "plots" / "curves_pr.png"]
    # 8 panels (loss, loss_bbox, loss_ce, loss_giou, class_error, grad_norm, bbox AP, bbox AP50): 2 rows of 4
    # panels of 4 x 3 inches at 100 dpi
    picture = Image.open(out)
    assert picture.size == (1600, 600)
    pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    for rgb in ((31, 119, 180), (255, 127, 14)):  # matplotlib's first two line colours: one per run
        assert (np.abs(pixels.astype(int) - rgb).sum(1) < 30).sum() > 100
    assert Image.open(written[1]).size == (1200, 420)  # 3 panels of 4 x 4.2 inches


def test_plot_logs_errors_are_one_line(tmp_path, capsys):
    assert run_tool(plot_logs.main, [str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x.png")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no such file" in lines[0]
