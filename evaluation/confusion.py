"""A detection confusion matrix: which class each ground-truth box was detected as, and what the confident detections
that match no ground truth are; ``eval/confusion_matrix.csv`` and ``eval/confusion_matrix.png``.

Orientation: rows are the ground truth's class, the last row ``background`` (confident detections of no object);
columns are the predicted class, the last column ``background`` (objects no confident detection found). The
diagonal counts correct detections; cell [background, background] is always 0.

Matching, image by image: the detections with score >= the threshold (``--confusion_threshold``), highest score
first (ties in their saved order), each take the highest-IoU ground-truth box of any class that no detection has
taken yet, if that IoU is >= 0.5 (ties in IoU: the first box) -> cell [its class, predicted class]. A detection that
takes no box counts as [background, predicted class], unless it lies on a crowd region (COCO's crowd IoU, the
intersection over the detection's area, >= 0.5): crowd regions are no objects to find, and detections on them are
left out, as COCOeval leaves them out. Boxes no detection took count as [their class, background]. Detections of
ids that are not categories of the ground truth are left out (COCOeval does not evaluate them).
"""
import csv
from pathlib import Path

import numpy as np

from evaluation.saved_detections import SavedDetections, box_iou

IOU_THRESHOLD = 0.5
BACKGROUND = "background"
ANNOTATED_UP_TO = 30  # cells carry their counts up to this many classes (background included)


def confusion_matrix(saved: SavedDetections, score_threshold: float = 0.5,
                     iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """Counts ``[K + 1, K + 1]`` (int64): rows ground-truth class (``saved.category_ids`` order, then background),
    columns predicted class (same order, then background), matched as the module docstring says."""
    index = {category_id: i for i, category_id in enumerate(saved.category_ids)}
    background = len(index)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    det, gt = saved.detections, saved.ground_truth
    for _, det_indices, gt_indices in saved.by_image():
        det_indices = det_indices[(det["score"][det_indices] >= score_threshold)
                                  & np.isin(det["category_id"][det_indices], saved.category_ids)]
        det_indices = det_indices[np.argsort(-det["score"][det_indices], kind="stable")]
        gt_indices = gt_indices[np.isin(gt["category_id"][gt_indices], saved.category_ids)]
        crowd = gt["iscrowd"][gt_indices]
        regular, crowds = gt_indices[~crowd], gt_indices[crowd]
        ious = box_iou(det["bbox"][det_indices], gt["bbox"][regular], np.zeros(len(regular), bool))
        crowd_ious = box_iou(det["bbox"][det_indices], gt["bbox"][crowds], np.ones(len(crowds), bool))
        taken = np.zeros(len(regular), dtype=bool)
        for d, det_index in enumerate(det_indices):
            predicted = index[int(det["category_id"][det_index])]
            candidates = np.where(taken, -1.0, ious[d])
            best = int(np.argmax(candidates)) if len(regular) else -1
            if best >= 0 and candidates[best] >= iou_threshold:
                taken[best] = True
                matrix[index[int(gt["category_id"][regular[best]])], predicted] += 1
            elif not (crowd_ious[d] >= iou_threshold).any():
                matrix[background, predicted] += 1
        for missed in regular[~taken]:
            matrix[index[int(gt["category_id"][missed])], background] += 1
    return matrix


def labels(saved: SavedDetections) -> list[str]:
    """The names of the matrix's rows and columns: the category names, then ``background``."""
    return list(saved.category_names) + [BACKGROUND]


def write_confusion_csv(matrix: np.ndarray, names: list[str], path: str | Path) -> Path:
    """The matrix as CSV: a header ``ground_truth\\predicted, <names>``, then one row per ground-truth class (its
    name, then its counts); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ground_truth\\predicted", *names])
        for name, counts in zip(names, matrix.tolist()):
            writer.writerow([name, *counts])
    return path


def read_confusion_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(names, matrix) of a file :func:`write_confusion_csv` wrote."""
    with Path(path).open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0][1:], np.array([[int(v) for v in row[1:]] for row in rows[1:]], dtype=np.int64)


def confusion_figure(matrix: np.ndarray, names: list[str], score_threshold: float):
    """A matplotlib Figure of the matrix (no pyplot state): each row coloured by its share of the row's total
    (where that ground-truth class's boxes went), counts written in the cells for up to ANNOTATED_UP_TO classes."""
    from matplotlib.figure import Figure

    n = len(names)
    side = min(24.0, max(5.0, 0.32 * n + 2.5))  # inches
    fig = Figure(figsize=(side, side * 0.9), dpi=100)
    ax = fig.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title(f"confusion matrix (score >= {score_threshold:g}, IoU >= {IOU_THRESHOLD:g})", fontsize=10)
    if n <= ANNOTATED_UP_TO:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                ax.text(column, row, str(count), ha="center", va="center", fontsize=7,
                        color="white" if shares[row, column] > 0.5 else "black")
    fig.tight_layout()
    return fig


def figure_pixels(fig) -> np.ndarray:
    """A Figure drawn as RGB pixels ``[H, W, 3]`` uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_confusion_png(matrix: np.ndarray, names: list[str], score_threshold: float, path: str | Path) -> Path:
    """Draw :func:`confusion_figure` to ``path`` (PNG); returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = confusion_figure(matrix, names, score_threshold)
    FigureCanvasAgg(fig)
    fig.savefig(path)
    return path
