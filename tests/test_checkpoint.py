"""util.checkpoint: atomic saving, safe loading of official-format files, partial loading, RNG state."""
import argparse
import random

import numpy as np
import pytest
import torch
from torch import nn

import util.checkpoint as checkpoint
from models.detr import build
from util.checkpoint import load_checkpoint, load_matching_state_dict, rng_state, save_checkpoint, set_rng_state

UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return "payload"


class Payload:
    """An arbitrary class; unpickling it would call ``_record_unpickling``."""

    def __reduce__(self):
        return _record_unpickling, ()


def test_save_is_atomic_when_torch_save_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "w": torch.arange(4.0)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary file left behind
    assert load_checkpoint(str(path))["epoch"] == 1


def test_save_creates_folder_and_overwrites(tmp_path):
    path = tmp_path / "a" / "b" / "ckpt.pth"
    save_checkpoint({"epoch": 1}, path)
    save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(str(path))["epoch"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]


def _small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_official_format_checkpoint_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = _small_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 200)
    official = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 499,
                "args": argparse.Namespace(lr=1e-4, backbone="resnet50", dilation=False, lr_drop=400)}
    path = tmp_path / "detr-r50.pth"
    torch.save(official, path)  # the official files were written by a plain torch.save

    loaded = load_checkpoint(str(path))
    assert isinstance(loaded["args"], argparse.Namespace) and loaded["args"].lr_drop == 400
    assert loaded["epoch"] == 499
    fresh = _small_model()
    fresh.load_state_dict(loaded["model"], strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-4)
    fresh_opt.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_other_classes_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "extra": Payload()}, path)
    UNPICKLED.clear()
    with pytest.raises(RuntimeError) as info:
        load_checkpoint(str(path), flag="--resume")
    assert "--resume" in str(info.value) and str(path) in str(info.value)
    assert UNPICKLED == []  # the payload never ran


def test_missing_file_names_flag_and_path(tmp_path):
    path = tmp_path / "nowhere" / "model.pth"
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(str(path), flag="--finetune_from")
    assert "--finetune_from" in str(info.value) and str(path) in str(info.value)


def test_load_matching_state_dict_skips_the_class_head(tiny_args):
    torch.manual_seed(0)
    source, _, _ = build(tiny_args("unused", "--num_classes", "91"))
    torch.manual_seed(1)
    target, _, _ = build(tiny_args("unused", "--num_classes", "3"))
    head_before = target.class_embed.weight.detach().clone()

    skipped, missing = load_matching_state_dict(target, source.state_dict())

    assert len(skipped) == 2
    assert skipped[0].startswith("class_embed.bias") and "(92,)" in skipped[0] and "(4,)" in skipped[0]
    assert skipped[1].startswith("class_embed.weight")
    assert missing == []
    assert torch.equal(target.class_embed.weight, head_before)  # kept its own initialisation
    for key, value in target.state_dict().items():
        if not key.startswith("class_embed."):
            assert torch.equal(value, source.state_dict()[key]), key


def test_load_matching_state_dict_reports_unknown_and_missing_entries():
    model = _small_model()
    state = {k: v for k, v in _small_model().state_dict().items() if not k.startswith("2.")}
    state["extra.weight"] = torch.zeros(1)
    skipped, missing = load_matching_state_dict(model, state)
    assert skipped == ["extra.weight (not in model)"]
    assert missing == ["2.bias", "2.weight"]


def _draw() -> tuple:
    return torch.rand(3).tolist(), random.random(), np.random.rand(), np.random.randn()


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    np.random.randn()  # leaves a cached Gaussian in numpy's legacy state
    save_checkpoint({"rng_state": [rng_state()]}, tmp_path / "ckpt.pth")
    expected = _draw()
    _draw()  # move every generator on

    set_rng_state(load_checkpoint(str(tmp_path / "ckpt.pth"))["rng_state"][0])
    assert _draw() == expected
