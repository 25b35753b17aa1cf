"""checkpoint_best.pth kept by validation AP (the metric named in log.txt) and --early_stop."""
import json
import math

import pytest
import torch

from run import run
from util.best_checkpoint import BEST_NAME, BestCheckpoint


def _line(epoch: int, ap: float) -> dict:
    return {"epoch": epoch, "test_coco_eval_bbox": [ap, 0.5] + [0.0] * 10}


def test_the_tracker_keeps_the_first_of_the_best_and_counts_evaluations_since(tmp_path):
    best = BestCheckpoint("test_coco_eval_bbox")
    assert best.value == -math.inf and best.epoch is None
    improved = [best.update(e, _line(e, ap)) for e, ap in enumerate([0.1, 0.3, 0.3, 0.2, 0.35, 0.1])]
    assert improved == [True, True, False, False, True, False]  # a tie keeps the earlier epoch
    assert (best.value, best.epoch, best.evaluations_since_best) == (0.35, 4, 1)
    assert best.description() == {"metric": "test_coco_eval_bbox[0]", "value": 0.35, "epoch": 4,
                                  "checkpoint": "checkpoint_best.pth"}
    # a resumed run reads the same from log.txt (epochs without an evaluation are skipped)
    lines = [_line(0, 0.1), {"epoch": 1, "train_loss": 1.0}, _line(2, 0.4), _line(3, 0.2)]
    (tmp_path / "log.txt").write_text("".join(json.dumps(x) + "\n" for x in lines))
    resumed = BestCheckpoint.from_log("test_coco_eval_bbox", tmp_path)
    assert (resumed.value, resumed.epoch, resumed.evaluations_since_best) == (0.4, 2, 1)
    assert BestCheckpoint.from_log("test_ema_coco_eval_bbox", tmp_path).epoch is None  # another metric


def test_a_run_keeps_its_best_epoch_and_stops_early(tiny_coco, tmp_path, tiny_args):
    out = tmp_path / "run"
    early_stop = 1
    args = tiny_args(tiny_coco, "--epochs", "3", "--output_dir", str(out), "--eval_every", "1", "--early_stop",
                     str(early_stop), "--lr", "1e-3")
    run(args)
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    aps = [line["test_coco_eval_bbox"][0] for line in lines]
    # the best, recomputed from the logged APs (the first of equal ones)
    best_epoch = max(range(len(aps)), key=lambda e: (aps[e], -e))
    described = json.loads((out / "best.json").read_text())
    assert described == {"metric": "test_coco_eval_bbox[0]", "value": aps[best_epoch], "epoch": best_epoch,
                         "checkpoint": BEST_NAME}
    assert not any(key.startswith("best") for line in lines for key in line)  # log.txt's lines as they were
    # stopped at the first evaluation that was not better than the best before it
    worse = next((e for e in range(1, len(aps)) if aps[e] <= max(aps[:e])), None)
    assert len(lines) == (worse + 1 if worse is not None else 3)
    kept = torch.load(out / BEST_NAME, weights_only=True)
    assert kept["epoch"] == best_epoch
    if kept["epoch"] == lines[-1]["epoch"]:  # the best is the last epoch: the same weights as checkpoint.pth
        last = torch.load(out / "checkpoint.pth", weights_only=True)
        assert all(torch.equal(v, last["model"][k]) for k, v in kept["model"].items())


def test_flags(tiny_coco, tiny_args):
    import cli

    with pytest.raises(ValueError, match="--early_stop"):
        cli.check_args(tiny_args(tiny_coco, "--early_stop", "-1"))
    with pytest.raises(ValueError, match="--accumulate_steps"):
        cli.check_args(tiny_args(tiny_coco, "--accumulate_steps", "0"))
