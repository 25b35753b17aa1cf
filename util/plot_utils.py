"""Plots of training logs and saved evaluations, under the official DETR's names (``util.plot_utils``).

``plot_logs(logs, fields, ewm_col, log_name)`` and ``plot_precision_recall(files, naming_scheme)`` take the official
arguments and return ``(fig, axs)`` (matplotlib, no pandas or seaborn needed). ``read_log`` and
``load_evaluation`` read a run's ``log.txt`` and a saved COCOeval state safely; ``tools/plot_logs.py`` builds its
command line on them.
"""
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from util.user_error import UserError


def read_log(path: str | Path) -> list[dict]:
    """The epochs of a ``log.txt`` (one JSON object per line; ``path`` may be the run's folder), in order."""
    path = Path(path)
    path = path / "log.txt" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{path}: no such file (a run's log.txt or its output folder)")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not JSON ({exc.msg})") from exc
    if not entries:
        raise UserError(f"{path}: no epoch logged yet")
    return entries


def load_evaluation(path: str | Path) -> dict:
    """A saved COCOeval ``eval`` dict (``precision`` [T, R, K, A, M], ``scores``, ``recall``, ``params``), loaded
    with only pycocotools' Params and numpy arrays allowed besides tensors and containers."""
    from numpy._core import multiarray  # where numpy 2 pickles arrays from
    from pycocotools.cocoeval import Params

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (a run's eval/latest.pth)")
    allowed = [Params, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files it cannot read
        raise UserError(f"{path}: not a saved evaluation ({type(exc).__name__})") from exc
    if not isinstance(data, dict) or "precision" not in data:
        raise UserError(f"{path}: not a saved COCOeval state (no 'precision')")
    return data


def ewm_mean(values: Sequence[float], com: float) -> np.ndarray:
    """Exponentially weighted mean of a series with centre of mass ``com`` (pandas' ``ewm(com).mean()``, adjusted:
    value i weighs ``(1 - alpha) ** (n - 1 - i)`` with alpha = 1 / (1 + com)); NaN values are skipped."""
    values = np.asarray(values, dtype=float)
    decay = 1 - 1 / (1 + com)
    out, weighted, total = np.empty_like(values), 0.0, 0.0
    for i, value in enumerate(values):
        weighted, total = weighted * decay, total * decay
        if not np.isnan(value):
            weighted, total = weighted + value, total + 1.0
        out[i] = weighted / total if total else np.nan
    return out


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")  # no screen needed; notebooks keep their inline backend
    import matplotlib.pyplot as plt

    return plt


def plot_logs(logs, fields: Sequence[str] = ("class_error", "loss_bbox_unscaled", "mAP"), ewm_col: float = 0,
              log_name: str = "log.txt"):
    """One panel per field of each run folder in ``logs`` (a Path or a list of them): training solid, validation
    dashed, smoothed by ``ewm_mean(com=ewm_col)``; ``mAP`` is the box AP of each evaluation. Returns (fig, axs)."""
    plt = _pyplot()
    logs = [logs] if isinstance(logs, (str, Path)) else list(logs)
    runs = [read_log(Path(run) / log_name) for run in logs]
    fig, axs = plt.subplots(ncols=len(fields), figsize=(16, 5), squeeze=False)
    axs = axs[0]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, run in enumerate(runs):
        colour = colours[k % len(colours)]
        epochs = [entry.get("epoch", i) for i, entry in enumerate(run)]
        for ax, field in zip(axs, fields):
            if field == "mAP":
                points = [(e, entry["test_coco_eval_bbox"][0]) for e, entry in zip(epochs, run)
                          if "test_coco_eval_bbox" in entry]
                if points:
                    ax.plot([p[0] for p in points], ewm_mean([p[1] for p in points], ewm_col), color=colour)
                continue
            for prefix, style in (("train_", "-"), ("test_", "--")):
                series = [entry.get(prefix + field, np.nan) for entry in run]
                if not np.isnan(np.asarray(series, dtype=float)).all():
                    ax.plot(epochs, ewm_mean(series, ewm_col), style, color=colour)
    for ax, field in zip(axs, fields):
        ax.legend([Path(run).name for run in logs])
        ax.set_title(field)
    return fig, axs


def plot_precision_recall(files, naming_scheme: str = "iter"):
    """Precision and detection score against recall at IoU 0.5 (all categories, all sizes, 100 detections) of saved
    evaluations ``files`` (``eval/*.pth``), named by file stem (``iter``) or experiment folder (``exp_id``); prints
    each one's AP50, mean score and F1. Returns (fig, axs)."""
    if naming_scheme == "exp_id":
        names = [Path(f).parts[-3] for f in files]
    elif naming_scheme == "iter":
        names = [Path(f).stem for f in files]
    else:
        raise ValueError(f"plot_precision_recall: naming_scheme must be 'iter' or 'exp_id', got {naming_scheme!r}")
    plt = _pyplot()
    fig, axs = plt.subplots(ncols=2, figsize=(16, 5))
    for f, name in zip(files, names):
        data = load_evaluation(f)
        recall = np.asarray(data["params"].recThrs)
        precision = np.asarray(data["precision"])[0, :, :, 0, -1].mean(1)
        scores = np.asarray(data["scores"])[0, :, :, 0, -1].mean(1)
        prec, rec = precision.mean(), np.asarray(data["recall"])[0, :, 0, -1].mean()
        print(f"{naming_scheme} {name}: mAP@50={prec * 100: 05.1f}, score={scores.mean():0.3f}, "
              f"f1={2 * prec * rec / (prec + rec + 1e-8):0.3f}")
        axs[0].plot(recall, precision)
        axs[1].plot(recall, scores)
    axs[0].set_title("Precision / Recall")
    axs[0].legend(names)
    axs[1].set_title("Scores / Recall")
    axs[1].legend(names)
    return fig, axs
