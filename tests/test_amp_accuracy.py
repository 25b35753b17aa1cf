"""benchmarks/amp_accuracy.py: the paired statistics against scipy and hand-computed cases, the run folders it
reads, and one real training run through the command line it builds."""
import fcntl
import json
import math

import pytest
import yaml
from scipy import stats

from benchmarks.amp_accuracy import ap_by_epoch, divergence_by_epoch, main, paired_summary, parse_arm, table, train
from tests.conftest import TINY_FLAGS


def test_paired_interval_matches_scipy_paired_t_test():
    reference = [0.552, 0.589, 0.609, 0.594, 0.604]
    candidate = [0.575, 0.614, 0.498, 0.640, 0.544]
    summary = paired_summary(reference, candidate, margin=0.01)
    for level, key in ((0.95, "ci95"), (0.90, "ci90")):
        expected = stats.ttest_rel(candidate, reference).confidence_interval(level)
        assert summary[key] == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert summary["diffs"] == pytest.approx([0.023, 0.025, -0.111, 0.046, -0.060])
    assert summary["mean"] == pytest.approx(-0.0154)
    assert summary["verdict"] == "undecided"
    assert summary["pairs_needed"] is None  # |mean| beyond the margin: more pairs cannot show equivalence


def test_verdicts():
    base = [0.5, 0.6, 0.55, 0.58]
    close = paired_summary(base, [b + d for b, d in zip(base, [0.001, -0.001, 0.002, 0.0])], margin=0.01)
    assert close["verdict"] == "equivalent"
    worse = paired_summary(base, [b + d for b, d in zip(base, [-0.05, -0.06, -0.055, -0.052])], margin=0.01)
    assert worse["verdict"] == "different"
    noisy = paired_summary(base, [b + d for b, d in zip(base, [0.05, -0.05, 0.03, -0.02])], margin=0.01)
    assert noisy["verdict"] == "undecided"


def test_pairs_needed_is_the_first_count_whose_90_percent_interval_fits_the_margin():
    summary = paired_summary([0.0, 0.0, 0.0], [0.02, -0.02, 0.01], margin=0.01)
    n, sd, room = summary["pairs_needed"], summary["sd"], 0.01 - abs(summary["mean"])
    assert sd == pytest.approx(math.sqrt(((0.02 - 1 / 300) ** 2 + (0.02 + 1 / 300) ** 2 + (0.01 - 1 / 300) ** 2) / 2))
    assert stats.t.ppf(0.95, n - 1) * sd / math.sqrt(n) < room
    assert stats.t.ppf(0.95, n - 2) * sd / math.sqrt(n - 1) >= room


def test_parse_arm():
    assert parse_arm("fp32=") == ("fp32", [])
    assert parse_arm('bf16=--amp bf16 --fold_frozen_bn "on"') == ("bf16", ["--amp", "bf16", "--fold_frozen_bn", "on"])
    for bad in ("bf16", "=--amp bf16", "a/b=--amp bf16"):
        with pytest.raises(SystemExit, match="--arm"):
            parse_arm(bad)


def test_ap_by_epoch_reads_evaluated_epochs_only(tmp_path):
    assert ap_by_epoch(tmp_path) == []
    lines = [{"epoch": 0, "train_loss": 3.0, "test_coco_eval_bbox": [0.1] + [0.0] * 11},
             {"epoch": 1, "train_loss": 2.0},
             {"epoch": 2, "train_loss": 1.0, "test_coco_eval_bbox": [0.3] + [0.0] * 11}]
    (tmp_path / "log.txt").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert ap_by_epoch(tmp_path) == [0.1, 0.3]
    resumed = {"epoch": 2, "train_loss": 1.0, "test_coco_eval_bbox": [0.35] + [0.0] * 11}  # epoch 2 logged again
    with open(tmp_path / "log.txt", "a") as log:
        log.write(json.dumps(resumed) + "\n")
    assert ap_by_epoch(tmp_path) == [0.1, 0.35]


def write_log(run_dir, aps):
    run_dir.mkdir(parents=True)
    lines = [{"epoch": e, "test_coco_eval_bbox": [ap] + [0.0] * 11} for e, ap in enumerate(aps)]
    (run_dir / "log.txt").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_no_train_reports_the_seeds_finished_in_every_arm(tmp_path):
    for seed, (a, b) in {1: (0.50, 0.52), 2: (0.60, 0.57), 3: (0.55, 0.56)}.items():
        write_log(tmp_path / "ref" / f"seed{seed}", [0.1] * 15 + [a])
        write_log(tmp_path / "cand" / f"seed{seed}", [0.1] * 15 + [b])
    write_log(tmp_path / "ref" / "seed4", [0.1] * 16)
    write_log(tmp_path / "cand" / "seed4", [0.1] * 9)  # unfinished: left out
    text = main(["--seeds", "1", "2", "3", "4", "--arm", "ref=", "--arm", "cand=--amp bf16", "--out", str(tmp_path),
                 "--no_train", "--no_write"])
    assert "| arm | 1 | 2 | 3 | mean ± sd |" in text
    assert "| cand - ref | +0.020 | -0.030 | +0.010 | +0.000 ± 0.026 |" in text


def test_train_refuses_a_folder_another_process_trains_into(tmp_path, tiny_coco):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with open(run_dir / "train.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SystemExit, match="another process is training into this folder"):
            train("configs/demo_cpu.yaml", 0, TINY_FLAGS, run_dir, tiny_coco, threads=1)
    assert not (run_dir / "log.txt").exists()


def test_divergence_and_table():
    reference = [[0.1, 0.5], [0.2, 0.6]]
    candidate = [[0.1, 0.4], [0.25, 0.7]]
    assert divergence_by_epoch(reference, candidate) == pytest.approx([0.025, 0.1])
    text = table("p.yaml", [1, 2], {"a": [], "b": ["--amp", "bf16"]}, {"a": reference, "b": candidate}, 0.01, "cpu")
    assert "| a | 0.500 | 0.600 | 0.550 ± 0.071 |" in text
    assert "| b - a | -0.100 | +0.100 | +0.000 ± 0.141 |" in text
    assert "| b | 0.025 | 0.100 |" in text
    assert "undecided" in text


def test_train_runs_main_py_with_the_arm_flags(tmp_path, tiny_coco):
    run_dir = tmp_path / "bf16" / "seed0"
    with pytest.raises(SystemExit, match="backbone_trainable_layers must be in 0..4"):  # demo_cpu: layer3
        train("configs/demo_cpu.yaml", 0, TINY_FLAGS, tmp_path / "bad", tiny_coco, threads=1)
    flags = [*TINY_FLAGS, "--feature_layer", "layer4", "--epochs", "1", "--amp", "bf16"]
    train("configs/demo_cpu.yaml", 0, flags, run_dir, tiny_coco, threads=1)
    aps = ap_by_epoch(run_dir)
    assert len(aps) == 1 and 0.0 <= aps[0] <= 1.0
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (resolved["amp"], resolved["seed"], resolved["epochs"]) == ("bf16", 0, 1)
