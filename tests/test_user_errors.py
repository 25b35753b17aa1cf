"""Issue 14, errors a user can act on: every such failure of ``python main.py`` ends in one line ``error: ...``
naming the flag, file or key, without a traceback unless --debug or DETR_DEBUG=1 asks for one."""
import argparse
import errno
import io
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

import main
import util.checkpoint as checkpoint_module
from models import build_model
from tests.conftest import TINY_FLAGS
from util import training_state
from util.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from util.user_error import UserError, one_line

REAL_CONNECT = socket.socket.connect


class Payload:
    """Unpickling it would call print: a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        return print, ("payload ran",)


def _command(capsys, *flags) -> tuple[int, str]:
    """main.py's command line in this process: (exit status, stderr)."""
    capsys.readouterr()
    status = main.command_line([*TINY_FLAGS, *flags])
    return status, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def small_coco(tiny_coco, tmp_path) -> Path:
    """A copy of the tiny dataset (its images linked) that a test may damage: 4 train, 2 val images."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split, count in (("train", 4), ("val", 2)):
        data = json.loads((tiny_coco / f"annotations/instances_{split}2017.json").read_text())
        data["images"] = sorted(data["images"], key=lambda img: img["id"])[:count]
        ids = {img["id"] for img in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        (root / f"{split}2017").mkdir()
        for img in data["images"]:
            (root / f"{split}2017" / img["file_name"]).symlink_to(tiny_coco / f"{split}2017" / img["file_name"])
        (root / f"annotations/instances_{split}2017.json").write_text(json.dumps(data))
    return root


# ---------------------------------------------------------------- checkpoints


def _damaged_checkpoints(folder: Path) -> dict[str, Path]:
    good = folder / "good.pth"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 0}, good)
    data = good.read_bytes()
    files = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"hello world" * 20}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pth"
        paths[name].write_bytes(content)
    paths["unsafe"] = folder / "unsafe.pth"
    torch.save({"model": {}, "extra": Payload()}, paths["unsafe"])
    return paths


@pytest.mark.parametrize("kind, says", [("empty", "is empty (0 bytes)"),
                                        ("truncated", "is truncated or not a PyTorch checkpoint"),
                                        ("garbage", "is truncated or not a PyTorch checkpoint"),
                                        ("unsafe", "holds print, which is not a tensor")])
def test_unreadable_checkpoints_give_one_line_without_unsafe_advice(tmp_path, kind, says, capsys):
    path = _damaged_checkpoints(tmp_path)[kind]
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path), flag="--resume")
    message = str(err.value)
    assert message.startswith(f"--resume: checkpoint file {path} ") and says in message
    assert "\n" not in message and "weights_only" not in message
    assert "payload ran" not in capsys.readouterr().out


def test_a_corrupt_resume_file_through_the_command_line(small_coco, tmp_path, capsys, monkeypatch):
    path = _damaged_checkpoints(tmp_path)["truncated"]
    status, err = _command(capsys, "--coco_path", str(small_coco), "--eval", "--resume", str(path))
    assert status == 1
    assert _one_error_line(err) == f"error: --resume: checkpoint file {path} is truncated or not a PyTorch " \
        f"checkpoint ({path.stat().st_size} bytes)"
    # the traceback is there when asked for, with --debug or DETR_DEBUG=1
    with pytest.raises(CheckpointError):
        main.command_line([*TINY_FLAGS, "--coco_path", str(small_coco), "--eval", "--resume", str(path), "--debug"])
    monkeypatch.setenv("DETR_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main.command_line([*TINY_FLAGS, "--coco_path", str(small_coco), "--eval", "--resume", str(path)])


def _tiny_model(tiny_args, *flags):
    args = tiny_args("unused", "--num_classes", "12", *flags)
    torch.manual_seed(0)
    return build_model(args)[0], args


@pytest.mark.parametrize("stored_as", ["dict", "namespace"])
def test_a_checkpoint_of_another_architecture_names_the_flags(tmp_path, tiny_args, stored_as):
    source, source_args = _tiny_model(tiny_args, "--hidden_dim", "32", "--num_queries", "8")
    saved = {k: v for k, v in vars(source_args).items()}
    path = tmp_path / "other.pth"
    torch.save({"model": source.state_dict(),
                "args": saved if stored_as == "dict" else argparse.Namespace(**saved)}, path)
    target, target_args = _tiny_model(tiny_args, "--hidden_dim", "64", "--num_queries", "8", "--nheads", "4")
    run_flags = {k: getattr(target_args, k) for k in ("hidden_dim", "nheads", "num_queries", "backbone")}
    with pytest.raises(ValueError) as err:
        training_state.resume(str(path), target, 12, run_flags=run_flags)
    message = str(err.value)
    assert "does not fit the model" in message and "\n" not in message
    assert "--hidden_dim 64 here, 32 in the checkpoint" in message and "--nheads 4 here, 2 in the checkpoint" in message
    assert "--num_queries" not in message and "--backbone" not in message  # equal: not named


def test_a_checkpoint_without_flags_still_says_what_differs(tmp_path, tiny_args):
    source, _ = _tiny_model(tiny_args, "--hidden_dim", "32")
    path = tmp_path / "bare.pth"
    torch.save({"model": source.state_dict()}, path)
    target, _ = _tiny_model(tiny_args, "--hidden_dim", "64")
    with pytest.raises(ValueError) as err:
        training_state.resume(str(path), target, 12, run_flags={"hidden_dim": 64})
    message = str(err.value)
    assert "entries of other shapes" in message and "checkpoint (" in message and "\n" not in message


# ---------------------------------------------------------------- the output folder and a full disk


def test_output_dir_that_is_a_file_or_read_only(small_coco, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "out.txt"
    a_file.write_text("not a folder")
    status, err = _command(capsys, "--coco_path", str(small_coco), "--eval", "--output_dir", str(a_file))
    assert status == 1 and _one_error_line(err) == f"error: --output_dir {a_file} is a file, not a folder"

    import run

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(run.tempfile, "TemporaryFile", read_only)
    out = tmp_path / "ro"
    status, err = _command(capsys, "--coco_path", str(small_coco), "--eval", "--output_dir", str(out))
    assert status == 1
    assert _one_error_line(err) == f"error: --output_dir {out} cannot be written: Read-only file system"


class _FullDisk(io.FileIO):
    """A file whose writes fail after a few kilobytes, as on a full disk."""

    def write(self, data) -> int:
        if self.tell() > 4096:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def _full_disk_fdopen(fd, mode="rb", *args, **kwargs):
    return _FullDisk(fd, mode.replace("b", ""), closefd=True)


def test_a_full_disk_while_saving_keeps_the_checkpoint_in_place(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "w": torch.arange(8.0)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint_module.os, "fdopen", _full_disk_fdopen)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint({"epoch": 2, "w": torch.zeros(100_000)}, path)
    assert str(err.value) == f"cannot write {path}: No space left on device; the checkpoint already there is intact"
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # the temporary file is gone
    with pytest.raises(CheckpointError, match="no checkpoint was written"):
        save_checkpoint({"w": torch.zeros(100_000)}, tmp_path / "new.pth")


def test_a_full_disk_through_the_command_line(small_coco, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint_module.os, "fdopen", _full_disk_fdopen)
    status, err = _command(capsys, "--coco_path", str(small_coco), "--output_dir", str(out), "--batch_size", "4",
                           "--lr_backbone", "0", "--epochs", "1")
    assert status == 1
    assert _one_error_line(err) == f"error: cannot write {out / 'checkpoint.pth'}: No space left on device; no " \
        "checkpoint was written"
    assert not list(out.glob(".*.tmp")) and not (out / "checkpoint.pth").exists()


# ---------------------------------------------------------------- data and network


def test_no_network_for_imagenet_weights_is_one_line(small_coco, tmp_path, capsys, monkeypatch):
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    flags = [f for f in TINY_FLAGS if f != "--no_pretrained_backbone"]
    capsys.readouterr()
    status = main.command_line([*flags, "--coco_path", str(small_coco), "--epochs", "1"])
    line = _one_error_line(capsys.readouterr().err)
    assert status == 1 and line.startswith("error: --backbone resnet18 starts from ImageNet weights")
    assert "--no_pretrained_backbone" in line


def test_an_empty_val_set_is_named(small_coco, capsys):
    ann_file = small_coco / "annotations/instances_val2017.json"
    data = json.loads(ann_file.read_text())
    ann_file.write_text(json.dumps({**data, "images": [], "annotations": []}))
    status, err = _command(capsys, "--coco_path", str(small_coco), "--epochs", "1")
    assert status == 1
    assert _one_error_line(err) == f"error: the val set is empty: annotation file {ann_file} lists no image"


def test_a_bad_image_read_in_a_dataloader_worker_is_one_line(small_coco, capsys, monkeypatch):
    def connect(sock, address):  # workers pass tensors over Unix sockets; still no network
        if sock.family != socket.AF_UNIX:
            raise RuntimeError("tests must not use the network")
        return REAL_CONNECT(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    data = json.loads((small_coco / "annotations/instances_val2017.json").read_text())
    first = sorted(data["images"], key=lambda img: img["id"])[0]
    image = small_coco / "val2017" / first["file_name"]
    image.unlink()
    image.write_bytes(b"")
    flags = [f if f != "0" or i == 0 or TINY_FLAGS[i - 1] != "--num_workers" else "1"
             for i, f in enumerate(TINY_FLAGS)]
    capsys.readouterr()
    status = main.command_line([*flags, "--coco_path", str(small_coco), "--eval"])
    line = _one_error_line(capsys.readouterr().err)
    assert status == 1 and line == f"error: image file {image} (image id {first['id']}) is empty (0 bytes)"


def test_one_line_unwraps_a_worker_traceback():
    wrapped = RuntimeError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                           "last):\n  File \"x.py\", line 1, in f\n    raise OSError(m)\n"
                           "datasets.image_file.BadImageError: image file a.jpg (image id 3) is empty (0 bytes)\n")
    assert one_line(wrapped) == "image file a.jpg (image id 3) is empty (0 bytes)"
    assert one_line(UserError("two\nlines")) == "two lines"


# ---------------------------------------------------------------- leftovers of interrupted saves


def test_leftover_temporary_files_are_removed_at_the_next_start(small_coco, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "eval").mkdir(parents=True)
    leftovers = [out / ".checkpoint.pth.k3j_9x2a.tmp", out / ".checkpoint0099.pth.abcdefgh.tmp",
                 out / "eval" / ".latest.pth.0123abcd.tmp"]
    kept = [out / ".checkpoint.pth.tmp", out / "notes.pth.abcdefgh.tmp", out / ".data.json.abcdefgh.tmp",
            out / "checkpoint.pth.partial"]
    for path in leftovers + kept:
        path.write_bytes(b"x" * 100)
    capsys.readouterr()
    assert main.command_line([*TINY_FLAGS, "--coco_path", str(small_coco), "--eval", "--output_dir", str(out)]) == 0
    assert "removed 3 temporary file(s)" in capsys.readouterr().out
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in kept)
    shutil.rmtree(out)
