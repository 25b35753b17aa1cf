"""benchmarks/convergence.py: each synthetic data set keeps its own record and data folder, and the summary's
means, spreads and iteration counts are the logs' (hand-computed)."""
import argparse
import json
import math

import pytest

from benchmarks import convergence


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for key, value in convergence.DATA_DEFAULTS.items():
        parser.add_argument(f"--{key}", type=type(value), default=value)
    parser.add_argument("--record", default=None)
    parser.add_argument("--data", default=None)
    return parser.parse_args(argv)


def test_record_and_data_folder_follow_the_data_set():
    easy, hard = _options(), _options("--difficulty", "hard")
    assert convergence.record_name(easy) == "convergence" and str(convergence.data_folder(easy)) == "data/synthetic"
    assert convergence.record_name(hard) == "convergence_hard"
    assert str(convergence.data_folder(hard)) == "data/synthetic_hard"
    other = _options("--difficulty", "hard", "--data_seed", "7", "--image_size", "160")
    assert convergence.record_name(other) == "convergence_hard_data_seed7_image_size160"
    assert str(convergence.data_folder(other)) == "data/synthetic_hard_data_seed7_image_size160"
    named = _options("--difficulty", "hard", "--record", "mine", "--data", "elsewhere")
    assert convergence.record_name(named) == "mine" and str(convergence.data_folder(named)) == "elsewhere"
    assert str(convergence.data_folder(_options("--difficulty", "hard", "--record", "mine"))) == "data/synthetic_hard"
    assert "--difficulty hard --seed 7" in convergence.data_description(other)


def test_summary_means_spreads_and_table_markers():
    logs = [[{"test_coco_eval_bbox": [0.1, 0.3], "train_epoch_time": 60.0},
             {"test_coco_eval_bbox": [0.4, 0.6], "train_epoch_time": 60.0}],
            [{"test_coco_eval_bbox": [0.3, 0.5], "train_epoch_time": 30.0},
             {"test_coco_eval_bbox": [0.6, 0.8], "train_epoch_time": 30.0}]]
    summary = convergence.summarise("p.yaml", logs, iters_per_epoch=250, its_per_s=5.0)
    first, last = summary["epochs"]
    assert (first["iterations"], last["iterations"]) == (250, 500)
    assert math.isclose(first["ap"], 0.2) and math.isclose(first["ap_sd"], math.sqrt(0.02))
    assert math.isclose(last["ap50"], 0.7) and math.isclose(last["minutes"], 500 / 5.0 / 60)
    assert summary["measured_minutes"] == [2.0, 1.0]
    assert convergence.iterations_to_reach(summary, 0.45) == 500
    assert convergence.iterations_to_reach(summary, 0.9) is None
    text = convergence.table([summary], 0.5, "cpu", "<!-- r:begin -->", "<!-- r:end -->", "some data", 200)
    assert text.startswith("<!-- r:begin -->") and text.endswith("<!-- r:end -->") and "Data: some data" in text
    assert "| `p.yaml` | 2 | 5.00 | 0.500 ± 0.141 | 0.700 ± 0.141 | 500 | 1.7 | 500 |" in text


def test_hard_data_ablation_table_means_by_iteration_and_seeds():
    from benchmarks import hard_data_ablation as ablation

    def run(variant, seed, ap, error):
        return {"preset": "configs/p.yaml", "variant": variant, "seed": seed, "iters_per_epoch": 250, "ap": ap,
                "ap50": [2 * a for a in ap], "class_error": error}

    results = [run("hard", 42, [0.0, 0.1], [85.0, 80.0]), run("hard", 43, [0.2, 0.3], [75.0, 70.0]),
               run("without_all", 42, [0.4, 0.5, 0.6], [60.0, 50.0, None])]
    text = ablation.table(results)
    assert text.startswith(ablation.BEGIN) and text.endswith(ablation.END)
    assert ("| `p` | `hard` | the hard set, the preset as it is | 2 | 0.100 / 0.200 | 0.100 (42), 0.300 (43) | 0.400 "
            "| 75 |") in text
    assert ("| `p` | `without_all` | the nine scene properties off | 1 | 0.400 / 0.500 / 0.600 | 0.600 (42) | 1.200 "
            "| - |") in text
    assert set(ablation.VARIANTS["without_all"][0]) == set(ablation.HARD_SCENE_PROPERTIES)
    assert set(ablation.VARIANTS["like_easy"][0]) == set(ablation.HARD_PROPERTIES)


def test_hard_data_ablation_saves_each_run_and_keeps_other_rows(tmp_path, monkeypatch):
    from benchmarks import hard_data_ablation as ablation
    record, results = tmp_path / "record.json", tmp_path / "RESULTS.md"
    old = {"preset": "configs/q.yaml", "variant": "hard", "seed": 42, "iters_per_epoch": 250, "ap": [0.9],
           "ap50": [0.95], "class_error": [10.0]}
    record.write_text(json.dumps([old]))
    results.write_text("# Benchmark results\n\nkept\n")
    calls = []

    def fake_result(preset, variant, seed, out):
        calls.append((variant, seed))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second run is interrupted
        return {"preset": preset, "variant": variant, "seed": seed, "iters_per_epoch": 250, "ap": [0.1 * seed / 42],
                "ap50": [0.2], "class_error": [None]}

    monkeypatch.setattr(ablation, "result", fake_result)
    argv = ["--preset", "configs/p.yaml", "--variants", "2000it", "hard", "--seeds", "43"]
    with pytest.raises(KeyboardInterrupt):
        ablation.main(argv, record, results)
    saved = json.loads(record.read_text())
    assert [(r["preset"], r["variant"], r["seed"]) for r in saved] == [("configs/q.yaml", "hard", 42),
                                                                         ("configs/p.yaml", "2000it", 43)]
    assert "kept" in results.read_text() and "| `p` | `2000it` |" in results.read_text()
    monkeypatch.setattr(ablation, "result", lambda preset, variant, seed, out: {
        "preset": preset, "variant": variant, "seed": seed, "iters_per_epoch": 250, "ap": [0.5], "ap50": [0.6],
        "class_error": [50.0]})
    rows = ablation.main(argv, record, results)
    assert len(rows) == 3 and [r["ap"] for r in rows if r["preset"] == "configs/p.yaml"] == [[0.5], [0.5]]
    text = results.read_text()
    # the table lists variants in the order of VARIANTS ("hard" before "2000it"), whatever order they ran in
    assert text.index("| `p` | `hard` |") < text.index("| `p` | `2000it` |") < text.index("| `q` | `hard` |")
    assert text.count(ablation.BEGIN) == 1 and "kept" in text
