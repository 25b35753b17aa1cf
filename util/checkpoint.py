"""Checkpoint files: atomic saving, safe loading (``weights_only=True``), partial loading for fine-tuning.

The official DETR checkpoints pickle an ``argparse.Namespace`` under ``args``; that one type is allowlisted.
Our own checkpoints store ``args`` as a plain dict.
"""
import argparse
import contextlib
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from torch import nn

from util.user_error import UserError

# The temporary files save_checkpoint writes next to NAME.pth: ".NAME.pth.XXXXXXXX.tmp" (tempfile.mkstemp's names).
TEMPORARY_NAME = re.compile(r"\..+\.pth\.[a-z0-9_]{8}\.tmp")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read or written; the message names the flag or the file (a RuntimeError, as
    these errors always were)."""


class _WriteErrorKeeper:
    """A binary file for ``torch.save`` that keeps the OSError its writing raised (torch reports a failed write as
    a RuntimeError that does not say why)."""

    def __init__(self, file):
        self._file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._file.flush()


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    A crash while writing leaves any earlier file at ``path`` intact; a failed write (a full disk) removes the
    temporary file and raises CheckpointError saying so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            keeper = _WriteErrorKeeper(f)
            try:
                torch.save(state, keeper)
                f.flush()
                os.fsync(f.fileno())
            except (OSError, RuntimeError) as exc:
                cause = exc if isinstance(exc, OSError) else keeper.error
                if cause is None:
                    raise
                kept = "the checkpoint already there is intact" if path.exists() else "no checkpoint was written"
                raise CheckpointError(f"cannot write {path}: {cause.strerror or cause}; {kept}") from exc
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_name, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted :func:`save_checkpoint` calls left in ``folder`` (only names it
    makes, ``.NAME.pth.XXXXXXXX.tmp``; call it where no other process is saving); returns the removed paths."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if TEMPORARY_NAME.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _why_unloadable(path: Path, exc: Exception) -> str:
    """What is wrong with a checkpoint file torch could not load, in one line (never advising ``weights_only=False``:
    a file holding code-running objects is refused)."""
    size = path.stat().st_size
    text = str(exc)
    if size == 0:
        return "is empty (0 bytes): an interrupted copy or write?"
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = found.group(1) if found else "an object"
        return (f"holds {what}, which is not a tensor, number, string, container or argparse.Namespace; refused, "
                "since unpickling it could run code")
    if "central directory" in text or "zip archive" in text or isinstance(exc, (EOFError, KeyError, IndexError,
                                                                                 pickle.UnpicklingError)):
        return f"is truncated or not a PyTorch checkpoint ({size} bytes)"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"cannot be read: {'it is not a safe checkpoint' if 'weights_only' in first else first}"


def load_checkpoint(path_or_url: str, flag: str = "--resume", map_location="cpu") -> dict:
    """Load a checkpoint from a local path or an https URL (downloaded into torch.hub's cache).

    Only tensors, plain containers and ``argparse.Namespace`` are unpickled. ``flag`` names the command-line
    option the path came from, for error messages: FileNotFoundError for a missing file, CheckpointError (one line)
    for one that cannot be downloaded or read.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        if path_or_url.startswith(("https://", "http://")):
            try:
                return torch.hub.load_state_dict_from_url(path_or_url, map_location=map_location, check_hash=True,
                                                          weights_only=True)
            except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
                reason = " ".join(str(exc).split()[:40]) if "weights_only" not in str(exc) else "not a safe checkpoint"
                raise CheckpointError(f"{flag}: cannot load {path_or_url}: {reason}") from exc
        path = Path(path_or_url)
        if not path.is_file():
            raise FileNotFoundError(f"{flag}: checkpoint file {path} does not exist")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or unsafe files
            raise CheckpointError(f"{flag}: checkpoint file {path} {_why_unloadable(path, exc)}") from exc


def downloaded_state_dict(url: str, what: str) -> dict:
    """The state dict at ``url`` from torch.hub's download cache (downloaded if missing; tensors only). Without a
    network, a FileNotFoundError that says which file to put where; ``what`` names the weights in it."""
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except (URLError, OSError) as exc:
        path = f"{torch.hub.get_dir()}/checkpoints/{url.rsplit('/', 1)[-1]}"
        raise FileNotFoundError(f"{what} are not in torch.hub's cache and cannot be downloaded ({exc}): copy {url} "
                                f"to {path}, or start from random weights") from exc


def load_matching_state_dict(model: nn.Module, state_dict: dict) -> tuple[list[str], list[str]]:
    """Load the entries of ``state_dict`` whose name and shape match ``model``; the rest keep their values.

    Returns (skipped: names present in both whose shapes differ, or unknown to the model; missing: model
    entries absent from the file).
    """
    own = model.state_dict()
    usable = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(
        f"{k} (file {tuple(v.shape)} vs model {tuple(own[k].shape)})" if k in own else f"{k} (not in model)"
        for k, v in state_dict.items() if k not in usable)
    missing = sorted(k for k in own if k not in state_dict)
    model.load_state_dict(usable, strict=False)
    return skipped, missing


def rng_state() -> dict:
    """The RNG states of python, numpy and torch (CPU and CUDA), as tensors so they load with weights_only."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng_state():
    """Run a block without moving this process's python, numpy and torch RNGs."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
