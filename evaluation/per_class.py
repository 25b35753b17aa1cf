"""COCO's numbers category by category: the table every evaluation prints and ``eval/per_class.csv``.

They are read from COCOeval's accumulated arrays (``precision`` [T, R, K, A, M], ``recall`` [T, K, A, M], -1 where
undefined) exactly as COCOeval's ``summarize`` reads them, restricted to one category k: AP is the mean of the
defined ``precision[:, :, k, area 'all', 100 detections]``, AP50 / AP75 at one IoU threshold, APs / APm / APl over
one area range, AR100 the mean of ``recall[:, k, 'all', 100]``; -1 where the category has no ground truth (of that
size), as COCOeval. A category with ground truth has all T x R entries defined, so COCOeval's AP (and each of the
other six numbers) is the mean of the per-category values over the categories where they are defined.
"""
import csv
from pathlib import Path

import numpy as np

COLUMNS = ("category_id", "name", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "gt_boxes")
# column -> (array, IoU threshold or None for their mean, area range), as COCOeval's summarize
METRICS = {"AP": ("precision", None, "all"), "AP50": ("precision", 0.5, "all"), "AP75": ("precision", 0.75, "all"),
           "APs": ("precision", None, "small"), "APm": ("precision", None, "medium"),
           "APl": ("precision", None, "large"), "AR100": ("recall", None, "all")}
MAX_DETECTIONS = 100
NAME_WIDTH = 24  # longer names are cut in the printed table (the CSV keeps them whole)


def _mean_defined(values: np.ndarray) -> float:
    """COCOeval's summary of an array slice: the mean of the entries > -1, or -1 when there are none."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def per_class_metrics(state: dict, category_names: dict[int, str], gt_boxes: dict[int, int]) -> list[dict]:
    """One row per category of a COCOeval ``eval`` state (``CocoEvaluator.saved_state()``, ``eval/latest.pth``):
    ``category_id``, ``name``, AP, AP50, AP75, APs, APm, APl, AR100 (in [0, 1], -1 when undefined) and
    ``gt_boxes`` (the category's non-crowd ground-truth boxes in the evaluated images)."""
    params = state["params"]
    arrays = {"precision": np.asarray(state["precision"]), "recall": np.asarray(state["recall"])}
    iou_thresholds = np.asarray(params.iouThrs)
    max_dets = list(params.maxDets).index(MAX_DETECTIONS)
    rows = []
    for k, category_id in enumerate(params.catIds):
        row = {"category_id": int(category_id), "name": category_names.get(category_id, str(category_id))}
        for column, (kind, iou, area_label) in METRICS.items():
            area = list(params.areaRngLbl).index(area_label)
            values = arrays[kind]
            values = values[np.where(iou == iou_thresholds)[0]] if iou is not None else values
            row[column] = _mean_defined(values[:, :, k, area, max_dets] if kind == "precision"
                                        else values[:, k, area, max_dets])
        row["gt_boxes"] = int(gt_boxes.get(category_id, 0))
        rows.append(row)
    return rows


def ground_truth_counts(coco_gt, image_ids) -> dict[int, int]:
    """category id -> number of non-crowd annotations in the images ``image_ids`` of a COCO ground truth (the boxes
    COCOeval counts at area 'all')."""
    image_ids = set(int(i) for i in image_ids)
    counts: dict[int, int] = {}
    for annotation in coco_gt.dataset.get("annotations", []):
        if annotation["image_id"] in image_ids and not annotation.get("iscrowd", 0):
            counts[annotation["category_id"]] = counts.get(annotation["category_id"], 0) + 1
    return counts


def evaluator_per_class(coco_evaluator, iou_type: str = "bbox") -> list[dict]:
    """:func:`per_class_metrics` of a CocoEvaluator after ``accumulate``, named by its ground truth's categories."""
    names = {int(k): str(c.get("name", k)) for k, c in coco_evaluator.coco_gt.cats.items()}
    return per_class_metrics(coco_evaluator.saved_state(iou_type), names,
                             ground_truth_counts(coco_evaluator.coco_gt, coco_evaluator.img_ids))


def format_per_class_table(rows: list[dict], title: str = "bbox") -> str:
    """The rows as a text table, with a last line of the means over the categories where each number is defined
    (COCOeval's own numbers)."""
    numbers = [c for c in COLUMNS if c in METRICS]
    width = max([len("category")] + [min(len(r["name"]), NAME_WIDTH) for r in rows])
    header = f"{'category':<{width}}  " + "  ".join(f"{c:>6}" for c in numbers) + f"  {'gt_boxes':>8}"
    lines = [f"Per-class {title} (IoU 0.50:0.95 unless named, 100 detections; -1: no ground truth of that size)",
             header]
    for row in rows:
        lines.append(f"{row['name'][:width]:<{width}}  " + "  ".join(f"{row[c]:6.3f}" for c in numbers)
                     + f"  {row['gt_boxes']:>8d}")
    means = {c: _mean_defined(np.array([r[c] for r in rows], dtype=float)) for c in numbers}
    lines.append(f"{'(mean)':<{width}}  " + "  ".join(f"{means[c]:6.3f}" for c in numbers)
                 + f"  {sum(r['gt_boxes'] for r in rows):>8d}")
    return "\n".join(lines)


def write_per_class_csv(rows: list[dict], path: str | Path) -> Path:
    """Write the rows to ``path`` (columns COLUMNS, numbers at full precision); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: row[c] for c in COLUMNS} for row in rows)
    return path
