"""TIDE: how much box AP each kind of error costs (Bolya et al., "TIDE: A General Toolbox for Identifying Object
Detection Errors", ECCV 2020, https://arxiv.org/abs/2008.08115), written from the paper's definitions.

AP is COCO's AP at IoU 0.5 (``foreground_iou``), computed as COCOeval computes it (at most 100 detections per image
and class, 101 recall points, categories without ground truth left out, crowd regions ignored), so the base AP
equals COCOeval's AP50 of the same detections. Matching is COCOeval's too: within an image and class, detections in
score order each take the unmatched ground-truth box of their class with the highest IoU >= 0.5; one that takes
none but lies on a crowd region of its class (intersection over its area >= 0.5) is ignored; the others are false
positives. Each false positive gets one error type, tested in this order (t_f = 0.5, t_b = 0.1 the
``background_iou``; IoU_max is its highest IoU with a ground-truth box of the kind named, used or not):

  Loc   IoU_max with boxes of its own class in [t_b, t_f): right class, box not good enough
  Cls   IoU_max with boxes of other classes >= t_f: good box, wrong class
  Dupe  IoU_max with boxes of its own class that a higher-scoring detection took >= t_f: a duplicate
  Bkg   IoU_max with every box <= t_b (or the image has no ground truth): background detected as an object
  Both  the rest: wrong class and t_b < IoU < t_f with a box of another class
  Miss  ground-truth boxes no detection took and no Cls or Loc error aims at (see below)

The dAP of a type is the AP after fixing every error of that type alone, minus the base AP (never negative):
Cls and Loc errors become true positives of their target box (the box of highest IoU in the test above; Cls with
the target's class, Loc with its own) at their score; of several errors aiming at one box the highest-scoring one is
fixed and the others are removed (they would be duplicates), and errors aiming at a box already taken are removed.
Both, Dupe and Bkg errors are removed. Misses are taken out of the ground-truth count. A class left without
ground truth scores AP 0; the classes averaged are always those with ground truth in the evaluation. The special
errors: FalsePos removes every false positive, FalseNeg takes every unmatched box out of the ground-truth count.

Where the authors' tidecv package differs (small differences, on edge cases): it keeps 100 detections per image
rather than per image and class, averages classes that have detections but no ground truth (as AP 0), lets Cls and
Loc errors compete for one box even when only one of the two types is fixed, and ignores detections on crowds above
(not at) IoU 0.5.
"""
from dataclasses import dataclass, field

import numpy as np
from pycocotools.cocoeval import Params

from evaluation.saved_detections import SavedDetections, box_iou

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_ERROR_TYPES = ("FalsePos", "FalseNeg")
FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1
MAX_DETECTIONS = 100  # per image and class, as COCOeval's AP
RECALL_THRESHOLDS = Params(iouType="bbox").recThrs  # COCO's 101 recall points


@dataclass
class Scored:
    """Scored detections, one entry each (true positives and false positives; ignored ones are not here): class
    index ``label``, ``score``, ``order`` (its rank in COCOeval's order among equal scores), ``true_positive``,
    ``error`` (one of ERROR_TYPES for a false positive, '' otherwise), ``target`` (for Cls and Loc errors: the
    ground-truth box aimed at, an index into the saved ground truth; -1 otherwise)."""

    label: np.ndarray
    score: np.ndarray
    order: np.ndarray
    true_positive: np.ndarray
    error: np.ndarray
    target: np.ndarray


@dataclass
class TideResult:
    """``ap``: base AP at the foreground IoU in [0, 1]; ``delta_ap``: error type -> AP gained by fixing it (same
    units); ``counts``: error type -> number of errors; ``special``: FalsePos / FalseNeg -> AP gained."""

    ap: float
    delta_ap: dict[str, float]
    counts: dict[str, int]
    special: dict[str, float]
    images: int = 0
    detections: int = 0
    ground_truth_boxes: int = 0
    settings: dict = field(default_factory=dict)


def average_precision(label: np.ndarray, score: np.ndarray, order: np.ndarray, true_positive: np.ndarray,
                      positives: np.ndarray, averaged: np.ndarray) -> float:
    """COCOeval's AP of scored detections: for each class k with ``averaged[k]``, the 101-point interpolated
    precision of its detections sorted by score (ties by ``order``) against ``positives[k]`` ground-truth boxes
    (precision 0 everywhere with none); the mean over those classes and recall points, with COCOeval's arithmetic."""
    q_all = -np.ones((len(RECALL_THRESHOLDS), len(averaged)))
    for k in np.flatnonzero(averaged):
        mine = label == k
        ranked = np.lexsort((order[mine], -score[mine].astype(np.float64)))
        tp = true_positive[mine][ranked]
        q = np.zeros(len(RECALL_THRESHOLDS))
        if positives[k] > 0 and len(tp):
            tp_sum = np.cumsum(tp).astype(float)
            fp_sum = np.cumsum(~tp).astype(float)
            recall = tp_sum / positives[k]
            precision = np.maximum.accumulate((tp_sum / (fp_sum + tp_sum + np.spacing(1)))[::-1])[::-1]
            points = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
            reached = points < len(tp)
            q[reached] = precision[points[reached]]
        q_all[:, k] = q
    defined = q_all[q_all > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def _classify(saved: SavedDetections, foreground_iou: float, background_iou: float,
              max_detections: int) -> tuple[Scored, np.ndarray, np.ndarray, set[int]]:
    """Match every image and name each false positive's error; returns (scored detections, the number of
    non-crowd boxes of each class [K], the number of Miss errors of each class [K], the boxes true positives took
    (indices into the saved ground truth))."""
    index = {category_id: i for i, category_id in enumerate(saved.category_ids)}
    det, gt = saved.detections, saved.ground_truth
    positives = np.zeros(len(index), dtype=np.int64)
    rows: list[tuple[int, float, int, bool, str, int]] = []
    misses = np.zeros(len(index), dtype=np.int64)
    taken_boxes: set[int] = set()
    order_base = 0
    for det_indices, gt_indices in ((d, g) for _, d, g in saved.by_image()):
        det_indices = det_indices[np.isin(det["category_id"][det_indices], saved.category_ids)]
        det_indices = det_indices[np.argsort(-det["score"][det_indices].astype(np.float64), kind="stable")]
        det_labels = np.array([index[int(c)] for c in det["category_id"][det_indices]], dtype=np.int64)
        kept = _top_per_class(det_labels, max_detections)
        det_indices, det_labels = det_indices[kept], det_labels[kept]
        gt_indices = gt_indices[np.isin(gt["category_id"][gt_indices], saved.category_ids)]
        crowd = gt["iscrowd"][gt_indices]
        regular, crowds = gt_indices[~crowd], gt_indices[crowd]
        gt_labels = np.array([index[int(c)] for c in gt["category_id"][regular]], dtype=np.int64)
        crowd_labels = np.array([index[int(c)] for c in gt["category_id"][crowds]], dtype=np.int64)
        np.add.at(positives, gt_labels, 1)
        boxes = det["bbox"][det_indices]
        ious = box_iou(boxes, gt["bbox"][regular], np.zeros(len(regular), bool))
        crowd_ious = box_iou(boxes, gt["bbox"][crowds], np.ones(len(crowds), bool))
        same = det_labels[:, None] == gt_labels[None, :]
        taken = np.zeros(len(regular), dtype=bool)
        status = []  # per detection: "tp", "ignored" or "fp"
        for d in range(len(det_indices)):
            candidates = same[d] & ~taken & (ious[d] >= foreground_iou)
            if candidates.any():
                best = np.flatnonzero(candidates & (ious[d] == ious[d][candidates].max()))[-1]  # COCOeval: the last
                taken[best] = True
                status.append("tp")
            elif ((crowd_labels == det_labels[d]) & (crowd_ious[d] >= foreground_iou)).any():
                status.append("ignored")
            else:
                status.append("fp")
        usable = np.zeros(len(regular), dtype=bool)  # aimed at, untaken, by a Cls or Loc error
        for d, state in enumerate(status):
            if state == "ignored":
                continue
            error, target = ("", -1) if state == "tp" else _error_type(
                ious[d], same[d], taken, foreground_iou, background_iou)
            if target >= 0 and not taken[target]:
                usable[target] = True
            rows.append((int(det_labels[d]), float(det["score"][det_indices[d]]), order_base + d, state == "tp", error,
                         int(regular[target]) if target >= 0 else -1))
        order_base += len(det_indices)
        taken_boxes.update(int(i) for i in regular[taken])
        np.add.at(misses, gt_labels[~taken & ~usable], 1)
    columns = list(zip(*rows)) if rows else [[]] * 6
    scored = Scored(np.array(columns[0], dtype=np.int64), np.array(columns[1], dtype=np.float64),
                    np.array(columns[2], dtype=np.int64), np.array(columns[3], dtype=bool),
                    np.array(columns[4], dtype="<U4"), np.array(columns[5], dtype=np.int64))
    return scored, positives, misses, taken_boxes


def _top_per_class(labels: np.ndarray, max_detections: int) -> np.ndarray:
    """Mask [N] of the first ``max_detections`` detections of each class (already in score order)."""
    seen: dict[int, int] = {}
    keep = np.zeros(len(labels), dtype=bool)
    for i, label in enumerate(labels.tolist()):
        seen[label] = seen.get(label, 0) + 1
        keep[i] = seen[label] <= max_detections
    return keep


def _error_type(ious: np.ndarray, same: np.ndarray, taken: np.ndarray, foreground_iou: float,
                background_iou: float) -> tuple[str, int]:
    """(error type, index of the box a Cls or Loc error aims at, else -1) of a false positive whose IoU with the
    image's non-crowd boxes is ``ious`` [M] (``same``: boxes of its class, ``taken``: matched boxes)."""
    if len(ious) == 0:
        return "Bkg", -1
    own = np.where(same, ious, 0.0)
    best_own = int(np.argmax(own))
    if background_iou <= own[best_own] < foreground_iou:
        return "Loc", best_own
    other = np.where(same, 0.0, ious)
    best_other = int(np.argmax(other))
    if other[best_other] >= foreground_iou:
        return "Cls", best_other
    if np.where(same & taken, ious, 0.0).max() >= foreground_iou:
        return "Dupe", -1
    if ious.max() <= background_iou:
        return "Bkg", -1
    return "Both", -1


def _fix_by_target(scored: Scored, error: str, relabel: bool, labels_of_boxes: dict[int, int],
                   taken_boxes: set[int]) -> Scored:
    """``scored`` with the ``error`` errors (Cls or Loc) fixed: for each target box not taken, its highest-scoring
    error (ties by order) becomes a true positive (of the box's class when ``relabel``); the other errors are
    removed."""
    chosen, claimed = [], set(taken_boxes)
    errors = np.flatnonzero(scored.error == error)
    for i in errors[np.lexsort((scored.order[errors], -scored.score[errors]))]:
        if int(scored.target[i]) not in claimed:
            claimed.add(int(scored.target[i]))
            chosen.append(i)
    keep = scored.error != error
    keep[chosen] = True
    label = scored.label.copy()
    true_positive = scored.true_positive.copy()
    for i in chosen:
        true_positive[i] = True
        if relabel:
            label[i] = labels_of_boxes[int(scored.target[i])]
    return Scored(label[keep], scored.score[keep], scored.order[keep], true_positive[keep], scored.error[keep],
                  scored.target[keep])


def _without(scored: Scored, remove: np.ndarray) -> Scored:
    keep = ~remove
    return Scored(scored.label[keep], scored.score[keep], scored.order[keep], scored.true_positive[keep],
                  scored.error[keep], scored.target[keep])


def tide_errors(saved: SavedDetections, foreground_iou: float = FOREGROUND_IOU, background_iou: float = BACKGROUND_IOU,
                max_detections: int = MAX_DETECTIONS) -> TideResult:
    """The TIDE breakdown of one evaluation's detections (module docstring): base AP, dAP and count per type."""
    scored, positives, misses, taken_boxes = _classify(saved, foreground_iou, background_iou, max_detections)
    averaged = positives > 0

    def ap(s: Scored, gt_count: np.ndarray = positives) -> float:
        return average_precision(s.label, s.score, s.order, s.true_positive, gt_count, averaged)

    base = ap(scored)
    index = {category_id: i for i, category_id in enumerate(saved.category_ids)}
    labels_of_boxes = {int(t): index[int(saved.ground_truth["category_id"][t])]
                       for t in scored.target[scored.target >= 0]}
    fixed = {
        "Cls": ap(_fix_by_target(scored, "Cls", True, labels_of_boxes, taken_boxes)),
        "Loc": ap(_fix_by_target(scored, "Loc", False, labels_of_boxes, taken_boxes)),
        "Both": ap(_without(scored, scored.error == "Both")),
        "Dupe": ap(_without(scored, scored.error == "Dupe")),
        "Bkg": ap(_without(scored, scored.error == "Bkg")),
        "Miss": ap(scored, positives - misses),
    }
    true_positives = np.bincount(scored.label[scored.true_positive], minlength=len(positives))
    special = {"FalsePos": ap(_without(scored, ~scored.true_positive)) - base,
               "FalseNeg": ap(scored, true_positives) - base}
    counts = {t: int((scored.error == t).sum()) for t in ERROR_TYPES if t != "Miss"}
    counts["Miss"] = int(misses.sum())
    return TideResult(base, {t: max(fixed[t] - base, 0.0) for t in ERROR_TYPES}, {t: counts[t] for t in ERROR_TYPES},
                      special, images=len(saved.image_ids), detections=len(scored.label),
                      ground_truth_boxes=int(positives.sum()),
                      settings={"foreground_iou": foreground_iou, "background_iou": background_iou,
                                "max_detections": max_detections})

