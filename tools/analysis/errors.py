"""The TIDE error breakdown of a saved evaluation: how much box AP50 classification, localisation, both, duplicate,
background and missed errors cost (Bolya et al., ECCV 2020, https://arxiv.org/abs/2008.08115; evaluation/tide.py
says how each is defined and fixed).

    python -m tools.analysis.errors OUTPUT_DIR/eval/latest.pth [--out DIR]

``EVAL``: ``eval/latest.pth`` (the detections of the same evaluation, ``eval/detections.pth``, are read),
``eval/NNN.pth`` (``eval/NNN_detections.pth``), ``--eval``'s ``OUTPUT_DIR/eval.pth`` (``OUTPUT_DIR/eval/
detections.pth``), an ``eval`` folder or a detections file itself. Prints the base AP50 and, per error type, the AP
gained by fixing it (dAP, in AP points x 100 as TIDE prints them) and the number of errors; with ``--out``, writes
``DIR/errors.json`` (the same numbers, AP in [0, 1]) and ``DIR/errors.png`` (a bar chart).
"""
import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from evaluation.saved_detections import FILE_NAME, SavedDetections
from evaluation.tide import BACKGROUND_IOU, ERROR_TYPES, FOREGROUND_IOU, SPECIAL_ERROR_TYPES, TideResult, tide_errors
from tools.command_line import run_tool
from util.plot_utils import load_evaluation
from util.user_error import UserError


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("TIDE error breakdown of a saved evaluation")
    parser.add_argument("eval", metavar="EVAL", help="OUTPUT_DIR/eval/latest.pth (or eval/NNN.pth, an eval folder, "
                                                     f"a {FILE_NAME} file)")
    parser.add_argument("--out", help="folder for errors.json and errors.png")
    return parser


def detections_file(path: Path) -> Path:
    """The detections file saved with the evaluation ``path`` names (module docstring); a one-line UserError when
    there is none."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder (a run's eval/latest.pth)")
    if path.is_dir():
        candidates = [path / FILE_NAME, path / "eval" / FILE_NAME]
    elif path.name == FILE_NAME or path.name.endswith(f"_{FILE_NAME}"):
        return path
    elif path.stem == "latest":
        candidates = [path.with_name(FILE_NAME)]
    elif path.stem == "eval":  # --eval's OUTPUT_DIR/eval.pth
        candidates = [path.parent / "eval" / FILE_NAME]
    else:
        candidates = [path.with_name(f"{path.stem}_{FILE_NAME}")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"{path}: no saved detections beside it (looked for {', '.join(str(c) for c in candidates)}); "
                    f"evaluate again with --output_dir to save them")


def saved_ap50(path: Path) -> float | None:
    """COCOeval's AP50 in a saved COCOeval state ``path`` (None if ``path`` is no such state)."""
    try:
        state = load_evaluation(path)
    except UserError:
        return None
    params = state["params"]
    t = int(np.flatnonzero(np.asarray(params.iouThrs) == FOREGROUND_IOU)[0])
    precision = np.asarray(state["precision"])[t, :, :, list(params.areaRngLbl).index("all"), -1]
    defined = precision[precision > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def format_result(result: TideResult, source: Path) -> str:
    """The breakdown as TIDE prints it (AP points x 100)."""
    header = "  ".join(f"{name:>6}" for name in ERROR_TYPES)
    return "\n".join([
        f"TIDE error breakdown of {source}: {result.images} images, {result.detections} detections of its "
        f"categories (crowd matches left out), {result.ground_truth_boxes} ground-truth boxes",
        f"bbox AP50 = {100 * result.ap:.2f}  (foreground IoU {FOREGROUND_IOU}, background IoU {BACKGROUND_IOU}; "
        f"dAP: AP gained by fixing every error of the type)",
        f"type    {header}",
        "dAP     " + "  ".join(f"{100 * result.delta_ap[name]:6.2f}" for name in ERROR_TYPES),
        "count   " + "  ".join(f"{result.counts[name]:6d}" for name in ERROR_TYPES),
        "special " + ", ".join(f"{name} dAP {100 * result.special[name]:.2f}" for name in SPECIAL_ERROR_TYPES)
        + " (FalsePos: every false positive removed; FalseNeg: every missed box)",
    ])


def write_chart(result: TideResult, path: Path) -> Path:
    """A bar chart of the dAP of each error type (and the special ones) to ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), dpi=100)
    main, special = fig.subplots(1, 2, width_ratios=(3, 1))
    main.bar(ERROR_TYPES, [100 * result.delta_ap[name] for name in ERROR_TYPES], color="tab:blue")
    main.set_title(f"TIDE main errors (AP50 {100 * result.ap:.2f})", fontsize=10)
    main.set_ylabel("dAP (AP points)")
    special.bar(SPECIAL_ERROR_TYPES, [100 * result.special[name] for name in SPECIAL_ERROR_TYPES], color="tab:grey")
    special.set_title("special", fontsize=10)
    for ax in (main, special):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> TideResult:
    """Run the command line ``argv``; returns the breakdown."""
    args = get_parser().parse_args(argv)
    path = Path(args.eval)
    source = detections_file(path)
    result = tide_errors(SavedDetections.load(source))
    print(format_result(result, source), flush=True)
    coco_ap50 = saved_ap50(path) if path.is_file() and path != source else None
    if coco_ap50 is not None and abs(coco_ap50 - result.ap) > 1e-9:
        print(f"note: {path} holds AP50 = {100 * coco_ap50:.2f}, not the {100 * result.ap:.2f} of {source}: the two "
              f"files come from different evaluations", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "errors.json").write_text(json.dumps({"source": str(source), **asdict(result)}, indent=1) + "\n")
        print(f"wrote {out / 'errors.json'} and {write_chart(result, out / 'errors.png')}", flush=True)
    return result


if __name__ == "__main__":
    raise SystemExit(run_tool(main))
