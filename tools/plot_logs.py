"""Training curves of one or more runs, and precision/recall curves of a saved evaluation, as PNG files.

    python -m tools.plot_logs outputs/a/log.txt outputs/b [--names A B] --out curves.png \\
        [--pr outputs/a/eval/latest.pth] [--pr_out pr.png] [--coco_path DIR]

``LOG``: a run's ``log.txt`` or its output folder. ``--out``: one panel per quantity, epochs on the x axis, every run
in its own colour (named by ``--names``, default its folder's name), training solid and validation dashed: the
total loss, each loss term of the last decoder layer (``loss_ce``, ``loss_bbox``, ``loss_giou`` ..., as weighted in
the total), the class error, the gradient norm, and box AP and AP50 (mask AP with masks). Panels are
``PANEL_SIZE`` inches at ``DPI``, ``COLUMNS`` to a row, so the picture is 1600 pixels wide and 300 high per row.

``--pr``: ``eval/latest.pth`` (or ``eval/NNN.pth``), the COCOeval state ``engine.finish_epoch`` saves; written to
``--pr_out`` (default: ``--out`` with ``_pr`` before the suffix): precision against recall for each category at IoU
0.50 and at 0.75 (all object sizes, up to 100 detections per image), and the mean detection score against recall,
as the official ``util/plot_utils.py`` shows them (``util.plot_utils`` keeps the official functions). Category
names come from the annotation files of ``--coco_path``, or of the run's ``config.yaml`` next to the ``eval``
folder.
"""
import argparse
import math
import re
from pathlib import Path

import numpy as np

from datasets.category_names import dataset_category_names
from tools.command_line import run_tool
from util.plot_utils import load_evaluation, read_log
from util.user_error import UserError

COLUMNS = 4
PANEL_SIZE = (4.0, 3.0)  # inches
DPI = 100
MAIN_TERM = re.compile(r"loss_[a-z]+(_dn|_interm|_enc)?")  # the last layer's terms (not _0, _1 ...), by name


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Plot training logs and precision/recall curves")
    parser.add_argument("logs", nargs="*", metavar="LOG", help="log.txt files or run output folders")
    parser.add_argument("--names", nargs="+", help="one name per LOG for the legends (default: the folder names)")
    parser.add_argument("--out", help="PNG file for the training curves")
    parser.add_argument("--pr", help="a saved evaluation (OUTPUT_DIR/eval/latest.pth) for precision/recall curves")
    parser.add_argument("--pr_out", help="PNG file for the precision/recall curves (default: --out with _pr)")
    parser.add_argument("--coco_path", help="dataset folder whose annotation files name the categories of --pr")
    return parser


def run_name(path: Path) -> str:
    """A run's name: its output folder's."""
    path = path.resolve()
    return (path if path.is_dir() else path.parent).name


def panels(runs: list[list[dict]]) -> list[str]:
    """The quantities to draw, in order: loss, the main loss terms, class error, gradient norm, then AP and AP50
    (box, then mask) where evaluated."""
    keys = {key for run in runs for entry in run for key in entry}
    terms = sorted({k[len("train_"):] for k in keys if k.startswith("train_") and MAIN_TERM.fullmatch(k[6:])})
    names = ["loss"] + terms + [k for k in ("class_error", "grad_norm") if f"train_{k}" in keys or f"test_{k}" in keys]
    for kind in ("bbox", "masks"):
        if f"test_coco_eval_{kind}" in keys:
            names += [f"{kind} AP", f"{kind} AP50"]
    return names


def _series(run: list[dict], panel: str) -> list[tuple[str, list[float], list[float]]]:
    """(line style, epochs, values) of one run's panel: training solid, validation dashed."""
    if panel.endswith(" AP") or panel.endswith(" AP50"):
        kind, name = panel.split(" ")
        index = 0 if name == "AP" else 1
        points = [(e["epoch"], e[f"test_coco_eval_{kind}"][index]) for e in run if f"test_coco_eval_{kind}" in e]
        return [("--", [p[0] for p in points], [p[1] for p in points])]
    lines = []
    for prefix, style in (("train_", "-"), ("test_", "--")):
        points = [(e["epoch"], e[prefix + panel]) for e in run if isinstance(e.get(prefix + panel), (int, float))]
        if points:
            lines.append((style, [p[0] for p in points], [p[1] for p in points]))
    return lines


def write_training_curves(paths: list[Path], out: Path, names: list[str] | None = None) -> Path:
    """Write the training curves of the runs ``paths`` to ``out`` (PNG); returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_log(path) for path in paths]
    names = names or [run_name(path) for path in paths]
    if len(names) != len(runs):
        raise UserError(f"--names gives {len(names)} names for {len(runs)} logs")
    quantities = panels(runs)
    rows = math.ceil(len(quantities) / COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(PANEL_SIZE[0] * COLUMNS, PANEL_SIZE[1] * rows), dpi=DPI,
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, quantity in zip(axes.flat, quantities):
        for k, (run, name) in enumerate(zip(runs, names)):
            for style, epochs, values in _series(run, quantity):
                part = "val" if style == "--" else "train"
                ax.plot(epochs, values, style, color=colours[k % len(colours)], label=f"{name} {part}",
                        marker="o" if len(epochs) == 1 else None)
        ax.set_title(quantity, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(quantities):]:
        ax.set_axis_off()
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def write_precision_recall(path: Path, out: Path, category_names: dict[int, str] | None = None) -> Path:
    """Write per-category precision/recall curves at IoU 0.50 and 0.75 and score/recall of ``path`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_evaluation(path)
    params = data["params"]
    precision, scores = np.asarray(data["precision"]), np.asarray(data["scores"])  # [T, R, K, A, M]
    recall = np.asarray(params.recThrs)
    iou_thresholds = [round(float(t), 2) for t in params.iouThrs]
    area, max_dets = params.areaRngLbl.index("all"), len(params.maxDets) - 1
    names = category_names or {}
    fig, axes = plt.subplots(1, 3, figsize=(PANEL_SIZE[0] * 3, PANEL_SIZE[1] * 1.4), dpi=DPI)
    for ax, iou in zip(axes[:2], (0.5, 0.75)):
        t = iou_thresholds.index(iou)
        for k, category in enumerate(params.catIds):
            curve = precision[t, :, k, area, max_dets]
            if (curve < 0).all():  # no ground truth of this category
                continue
            ap = curve[curve >= 0].mean()
            ax.plot(recall, np.where(curve < 0, np.nan, curve), label=f"{names.get(category, category)} {ap:.2f}")
        mean = np.where(precision[t, :, :, area, max_dets] < 0, np.nan, precision[t, :, :, area, max_dets])
        ax.plot(recall, np.nanmean(mean, axis=1), "k--", label="mean")
        ax.set_title(f"precision / recall, IoU {iou:.2f} (legend: AP)", fontsize=10)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6)
    t = iou_thresholds.index(0.5)
    curve = np.where(scores[t, :, :, area, max_dets] < 0, np.nan, scores[t, :, :, area, max_dets])
    axes[2].plot(recall, np.nanmean(curve, axis=1), "k")
    axes[2].set_title("detection score / recall, IoU 0.50 (mean of categories)", fontsize=10)
    axes[2].set_xlabel("recall", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _run_coco_path(eval_file: Path) -> str | None:
    """The ``coco_path`` of the run whose ``eval`` folder holds ``eval_file`` (from its config.yaml)."""
    config = eval_file.resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    return (yaml.safe_load(config.read_text()) or {}).get("coco_path")


def main(argv: list[str] | None = None) -> list[Path]:
    """Run the command line ``argv``; returns the PNG files written."""
    args = get_parser().parse_args(argv)
    if not args.logs and not args.pr:
        raise UserError("nothing to plot: give LOG files (with --out) and/or --pr EVAL_FILE")
    if args.logs and not args.out:
        raise UserError("--out is required with LOG files: the PNG file for the training curves")
    written = []
    if args.logs:
        written.append(write_training_curves([Path(p) for p in args.logs], Path(args.out), args.names))
    if args.pr:
        pr_out = Path(args.pr_out) if args.pr_out else None
        if pr_out is None:
            if not args.out:
                raise UserError("--pr_out is required without --out: the PNG file for the precision/recall curves")
            pr_out = Path(args.out).with_name(f"{Path(args.out).stem}_pr{Path(args.out).suffix or '.png'}")
        coco_path = args.coco_path or _run_coco_path(Path(args.pr))
        names = dataset_category_names(coco_path) if coco_path else {}
        written.append(write_precision_recall(Path(args.pr), pr_out, names))
    for path in written:
        print(f"wrote {path}", flush=True)
    return written


if __name__ == "__main__":
    raise SystemExit(run_tool(main))
