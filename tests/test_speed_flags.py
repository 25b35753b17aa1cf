"""Every speed option trains a tiny model end to end (python main.py's path) with finite losses."""
import json
import math

import pytest
import torch

from run import run
from tools.data.synthetic import generate


@pytest.fixture(scope="module")
def small_coco(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("speed_data"), num_train=8, num_val=4, image_size=64, seed=2)


def _trained(tiny_args, coco, out, *flags) -> dict:
    run(tiny_args(coco, "--epochs", "1", "--output_dir", str(out), *flags))
    return json.loads((out / "log.txt").read_text().splitlines()[-1])


@pytest.mark.parametrize("flags", [
    ("--amp", "bf16", "--channels_last", "on", "--aspect_ratio_grouping", "--eval_backend", "faster_coco_eval"),
    ("--amp", "fp16"),
    ("--official_paths",),
], ids=["bf16_channels_last_grouping_faster_eval", "fp16", "official_paths"])
def test_options_train_with_finite_losses(small_coco, tiny_args, tmp_path, flags):
    log = _trained(tiny_args, small_coco, tmp_path / "run", *flags)
    losses = {k: v for k, v in log.items() if k.startswith("train_loss")}
    assert losses and all(math.isfinite(v) for v in losses.values())
    assert len(log["test_coco_eval_bbox"]) == 12
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ("scaler" in checkpoint) == ("fp16" in flags)


def test_compile_flag_trains_eager_where_it_cannot_compile(small_coco, tiny_args, tmp_path, monkeypatch, capsys):
    import util.compile as compile_module

    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)  # as on a machine without g++
    log = _trained(tiny_args, small_coco, tmp_path / "run", "--compile")
    assert math.isfinite(log["train_loss"])
    assert capsys.readouterr().out.count("--compile: no C++ compiler") == 1


def test_official_paths_log_what_the_fast_paths_log(small_coco, tiny_args, tmp_path):
    """Same seed, same data: the fast defaults (fused AdamW, deferred reads, fused attention in evaluation) give the
    official-path run's numbers up to floating-point rounding."""
    fast = _trained(tiny_args, small_coco, tmp_path / "fast")
    official = _trained(tiny_args, small_coco, tmp_path / "official", "--official_paths")
    for key, value in official.items():
        if isinstance(value, float) and key != "train_epoch_time":
            assert fast[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
