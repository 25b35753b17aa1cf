"""benchmarks/amp_accuracy.py: the paired statistics against scipy and hand-computed cases, the run folders it
reads, and one real training run through the command line it builds."""
import fcntl
import json

import numpy as np
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
    worse = paired_summary(base, [b + d for b, d in zip(base, [-0.010, -0.012, -0.008, -0.011])], margin=0.01)
    assert worse["verdict"] == "different"  # below 0 for sure, but not surely beyond the margin
    noisy = paired_summary(base, [b + d for b, d in zip(base, [0.05, -0.05, 0.03, -0.02])], margin=0.01)
    assert noisy["verdict"] == "undecided"
    far = paired_summary(base, [b + d for b, d in zip(base, [-0.05, -0.06, -0.055, -0.052])], margin=0.04)
    assert far["verdict"] == "beyond the margin"


@pytest.mark.parametrize("true_mean", [0.0, 0.004])
def test_pairs_needed_gives_the_tost_check_80_percent_power(true_mean):
    """Simulated paired differences with the observed mean and sd: at ``pairs_needed`` pairs, the 90% interval
    falls inside the margin in about 80% of trials, at half as many far less often."""
    sd = 0.06
    observed = [true_mean + sd * z for z in (1.0, -1.0, 0.0)]  # mean true_mean, sd exactly 0.06
    n = paired_summary([0.0] * 3, observed, margin=0.01)["pairs_needed"]
    assert n > 50
    rng = np.random.default_rng(0)

    def success_rate(pairs):
        diffs = rng.normal(true_mean, sd, size=(4000, pairs))
        half = stats.t.ppf(0.95, pairs - 1) * diffs.std(axis=1, ddof=1) / np.sqrt(pairs)
        mean = diffs.mean(axis=1)
        return np.mean((mean - half > -0.01) & (mean + half < 0.01))

    assert 0.76 <= success_rate(n) <= 0.85
    assert success_rate(n // 2) < 0.6


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
            train("configs/demo_cpu.yaml", 0, TINY_FLAGS, run_dir, tiny_coco, threads=1, epochs=1)
    assert not (run_dir / "log.txt").exists()


def test_train_leaves_a_finished_folder_alone(tmp_path, tiny_coco):
    write_log(tmp_path / "done", [0.2, 0.4])
    train("no_such_preset.yaml", 0, [], tmp_path / "done", tiny_coco, threads=1, epochs=2)  # would fail if run
    assert not (tmp_path / "done" / "stdout.txt").exists()
    assert ap_by_epoch(tmp_path / "done") == [0.2, 0.4]


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
        train("configs/demo_cpu.yaml", 0, TINY_FLAGS, tmp_path / "bad", tiny_coco, threads=1, epochs=1)
    flags = [*TINY_FLAGS, "--feature_layer", "layer4", "--epochs", "1", "--amp", "bf16"]
    train("configs/demo_cpu.yaml", 0, flags, run_dir, tiny_coco, threads=1, epochs=1)
    aps = ap_by_epoch(run_dir)
    assert len(aps) == 1 and 0.0 <= aps[0] <= 1.0
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (resolved["amp"], resolved["seed"], resolved["epochs"]) == ("bf16", 0, 1)
