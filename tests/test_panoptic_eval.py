"""Panoptic quality against hand-computed cases, torchmetrics' PanopticQuality, and a COCO panoptic file round trip."""
import json

import numpy as np
import pytest
import torch

import evaluation.panoptic_eval as panoptic_eval_module
from evaluation.panoptic_eval import PanopticEvaluator, PQStat, format_pq_table, pq_compute, pq_stat_single
from util.panoptic_png import encode_panoptic_png, read_panoptic_png

PERSON, CAR, SKY, GRASS = 1, 3, 17, 21  # not 1..N, to catch index/id mix-ups
CATEGORIES = [{"id": PERSON, "name": "person", "isthing": 1}, {"id": CAR, "name": "car", "isthing": 1},
              {"id": SKY, "name": "sky", "isthing": 0}, {"id": GRASS, "name": "grass", "isthing": 0}]


def _panoptic(rows: str, legend: dict) -> tuple[np.ndarray, list[dict]]:
    """A small id map drawn with characters: ``rows`` separated by "/", "." is id 0, and ``legend`` maps a character
    to ``(segment id, category id)`` or ``(segment id, category id, iscrowd)``. Lists the segments that appear."""
    chars = np.array([list(row) for row in rows.split("/")])
    ids = np.zeros(chars.shape, np.int64)
    segments = []
    for char, (segment_id, category_id, *crowd) in legend.items():
        if (chars == char).any():
            ids[chars == char] = segment_id
            segments.append({"id": segment_id, "category_id": category_id, "iscrowd": crowd[0] if crowd else 0})
    return ids, segments


def _results(gt: tuple, pred: tuple) -> dict:
    return pq_stat_single(gt[0], gt[1], pred[0], pred[1], CATEGORIES).results(CATEGORIES)


def _assert_group(results: dict, name: str, pq: float, sq: float, rq: float, n: int) -> None:
    assert results[name] == {"pq": pytest.approx(pq), "sq": pytest.approx(sq), "rq": pytest.approx(rq), "n": n}


# 4 x 6 pixels: sky 12 px, grass 4 px, a person 4 px, a car 4 px.
GT_LEGEND = {"S": (5, SKY), "G": (9, GRASS), "P": (300, PERSON), "C": (70000, CAR)}
GT_ROWS = "SSSSSS/SSSSSS/GPPGCC/GPPGCC"
# The prediction numbers its segments differently. "." (id 0, not listed) is unlabelled.
PRED_LEGEND = {"S": (10, SKY), "G": (11, GRASS), "P": (12, PERSON), "C": (3, CAR), "Q": (14, PERSON)}


@pytest.mark.parametrize("sky_id", [10, 0])
def test_perfect_prediction(sky_id):
    # sky_id 0: the official DETR post-processor numbers segments from 0; a listed id 0 is an ordinary segment.
    pred_legend = {**PRED_LEGEND, "S": (sky_id, SKY)}
    results = _results(_panoptic(GT_ROWS, GT_LEGEND), _panoptic(GT_ROWS, pred_legend))
    _assert_group(results, "All", 1, 1, 1, 4)
    _assert_group(results, "Things", 1, 1, 1, 2)
    _assert_group(results, "Stuff", 1, 1, 1, 2)
    assert results["per_class"] == {c["id"]: {"pq": 1.0, "sq": 1.0, "rq": 1.0} for c in CATEGORIES}


def test_missed_segment_is_a_false_negative():
    # The car's pixels are left unlabelled (id 0, not listed): car TP 0, FN 1 -> PQ = SQ = RQ = 0; the others are 1.
    # All = (1 + 0 + 1 + 1) / 4 = 0.75 for each of PQ, SQ, RQ; Things = (1 + 0) / 2; Stuff = 1.
    results = _results(_panoptic(GT_ROWS, GT_LEGEND), _panoptic("SSSSSS/SSSSSS/GPPG../GPPG..", PRED_LEGEND))
    _assert_group(results, "All", 0.75, 0.75, 0.75, 4)
    _assert_group(results, "Things", 0.5, 0.5, 0.5, 2)
    _assert_group(results, "Stuff", 1, 1, 1, 2)
    assert results["per_class"][CAR] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_extra_segment_is_a_false_positive():
    # A second person Q (2 px) painted on the sky. Person: TP 1 (IoU 1) + FP 1 -> PQ = RQ = 1 / (1 + 1/2) = 2/3, SQ 1.
    # Sky: predicted 10 px inside the 12 px of the ground truth, IoU 10/12 -> PQ = SQ = 5/6, RQ 1.
    results = _results(_panoptic(GT_ROWS, GT_LEGEND), _panoptic("QQSSSS/SSSSSS/GPPGCC/GPPGCC", PRED_LEGEND))
    assert results["per_class"][PERSON] == pytest.approx({"pq": 2 / 3, "sq": 1.0, "rq": 2 / 3})
    assert results["per_class"][SKY] == pytest.approx({"pq": 5 / 6, "sq": 5 / 6, "rq": 1.0})
    _assert_group(results, "All", (2 / 3 + 1 + 5 / 6 + 1) / 4, (1 + 1 + 5 / 6 + 1) / 4, (2 / 3 + 1 + 1 + 1) / 4, 4)
    _assert_group(results, "Things", (2 / 3 + 1) / 2, 1, (2 / 3 + 1) / 2, 2)
    _assert_group(results, "Stuff", (5 / 6 + 1) / 2, (5 / 6 + 1) / 2, 1, 2)


def test_listed_id_0_owns_the_pixels_with_id_0():
    # Sky listed as segment 0, car not predicted: the car's pixels (id 0) belong to the sky, 16 px over its 12,
    # IoU 12/16. Car FN. All PQ = (1 + 0 + 3/4 + 1) / 4, SQ the same, RQ = 3/4.
    pred_legend = {**PRED_LEGEND, "S": (0, SKY)}
    results = _results(_panoptic(GT_ROWS, GT_LEGEND), _panoptic("SSSSSS/SSSSSS/GPPG../GPPG..", pred_legend))
    _assert_group(results, "All", 2.75 / 4, 2.75 / 4, 0.75, 4)
    _assert_group(results, "Stuff", 0.875, 0.875, 1, 2)


def test_empty_prediction():
    # Nothing predicted: each of the four ground truth segments is a FN, every class has PQ = SQ = RQ = 0.
    gt = _panoptic(GT_ROWS, GT_LEGEND)
    results = _results(gt, (np.zeros_like(gt[0]), []))
    for name, n in (("All", 4), ("Things", 2), ("Stuff", 2)):
        _assert_group(results, name, 0, 0, 0, n)


@pytest.mark.parametrize("pred_rows, person_pq, sky_iou", [
    # person predicted on its first 4 of 8 px: IoU = 4 / 8 = 0.5 exactly, not > 0.5 -> FN 1 and FP 1, PQ 0;
    # sky predicted on 16 px over its 12: IoU 12/16.
    ("PPPPSSSSSSSSSSSSSSSS", 0.0, 12 / 16),
    # one pixel more: IoU = 5 / 8 -> TP, PQ = 5/8; sky IoU 12/15.
    ("PPPPPSSSSSSSSSSSSSSS", 5 / 8, 12 / 15),
])
def test_iou_threshold_is_strictly_above_one_half(pred_rows, person_pq, sky_iou):
    legend = {"P": (1, PERSON), "S": (2, SKY)}
    results = _results(_panoptic("PPPPPPPPSSSSSSSSSSSS", legend), _panoptic(pred_rows, legend))
    assert results["per_class"][PERSON]["pq"] == pytest.approx(person_pq)
    assert results["per_class"][PERSON]["rq"] == (1.0 if person_pq else 0.0)
    _assert_group(results, "All", (person_pq + sky_iou) / 2, (person_pq + sky_iou) / 2, 1.0 if person_pq else 0.5, 2)


def test_void_pixels_are_left_out_of_the_union():
    # gt: 6 void px, a person on 4 px, sky on 10. The predicted person covers the void and the gt person (10 px):
    # union = 10 + 4 - 4 (intersection) - 6 (prediction on void) = 4 -> IoU 1 (counting the void it would be 0.4).
    legend = {"P": (1, PERSON), "S": (2, SKY)}
    results = _results(_panoptic("......PPPPSSSSSSSSSS", legend), _panoptic("PPPPPPPPPPSSSSSSSSSS", legend))
    _assert_group(results, "All", 1, 1, 1, 2)


def test_prediction_mostly_on_void_is_not_a_false_positive():
    # gt: 6 void px then sky on 14. Person A (3 px) lies wholly on void: ignored. Person B (6 px) has 3 px on void:
    # 3/6 is not > 1/2, so B is a FP. Sky predicted on 11 px of its 14: IoU 11/14.
    # Person: TP 0, FP 1 -> PQ 0 and counted; car: no TP/FP/FN -> not averaged. All = (0 + 11/14) / 2.
    gt = _panoptic("......SSSSSSSSSSSSSS", {"S": (2, SKY)})
    pred = _panoptic("AAABBBBBBSSSSSSSSSSS", {"A": (7, PERSON), "B": (8, PERSON), "S": (9, SKY)})
    stat = pq_stat_single(*gt, *pred, CATEGORIES)
    assert (stat[PERSON].tp, stat[PERSON].fp, stat[PERSON].fn) == (0, 1, 0)
    results = stat.results(CATEGORIES)
    _assert_group(results, "All", 11 / 28, 11 / 28, 0.5, 2)
    _assert_group(results, "Things", 0, 0, 0, 1)
    _assert_group(results, "Stuff", 11 / 14, 11 / 14, 1, 1)
    assert results["per_class"][CAR] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_crowd_region():
    # gt: a person crowd on 10 px, sky on 10. The predicted person (8 px on the crowd) is neither matched (crowds
    # never are, though its IoU would be 0.8) nor a FP (8/8 of it on a crowd of its own class); the crowd is no FN.
    # The car (2 px on the person crowd) is a FP: the crowd is of another class. Person: not averaged; car PQ 0;
    # sky PQ 1. All = (0 + 1) / 2, Things = car only = 0, Stuff = 1.
    gt = _panoptic("CCCCCCCCCCSSSSSSSSSS", {"C": (7, PERSON, 1), "S": (8, SKY)})
    pred = _panoptic("PPPPPPPPKKSSSSSSSSSS", {"P": (1, PERSON), "K": (2, CAR), "S": (3, SKY)})
    results = _results(gt, pred)
    _assert_group(results, "All", 0.5, 0.5, 0.5, 2)
    _assert_group(results, "Things", 0, 0, 0, 1)
    _assert_group(results, "Stuff", 1, 1, 1, 1)
    assert results["per_class"][PERSON] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


@pytest.mark.parametrize("category, all_pq, n", [(PERSON, 13 / 15, 1), (CAR, 13 / 30, 2)])
def test_void_and_crowd_of_the_same_class_add_up(category, all_pq, n):
    # gt: 2 void px, a person crowd on 3, sky on 15. A predicted segment X on 7 px: 2 on void, 3 on the crowd, 2 on
    # sky. A person: (2 + 3) / 7 > 1/2 (neither part alone is) -> ignored. A car: only the void counts, 2/7 -> FP.
    # Sky predicted on 13 px of its 15: IoU 13/15.
    gt = _panoptic("..CCCSSSSSSSSSSSSSSS", {"C": (7, PERSON, 1), "S": (8, SKY)})
    pred = _panoptic("XXXXXXXSSSSSSSSSSSSS", {"X": (1, category), "S": (3, SKY)})
    assert _results(gt, pred)["All"]["pq"] == pytest.approx(all_pq)
    assert _results(gt, pred)["All"]["n"] == n


def test_ground_truth_area_comes_from_segments_info_when_given():
    # As panopticapi, which reads the ground truth areas from the JSON: a stated area of 6 for a 4 px person gives
    # IoU = 4 / (4 + 6 - 4) = 2/3 for an exact prediction.
    legend = {"P": (1, PERSON), "S": (2, SKY)}
    gt_ids, gt_segments = _panoptic("PPPPSSSS", legend)
    gt_segments[0]["area"] = 6
    pred = _panoptic("PPPPSSSS", legend)
    results = pq_stat_single(gt_ids, gt_segments, *pred, CATEGORIES).results(CATEGORIES)
    assert results["per_class"][PERSON]["pq"] == pytest.approx(2 / 3)


def test_statistics_accumulate_over_images():
    # image 1 perfect, image 2 with the car missed: car TP 1, FN 1 -> PQ = 1 / (1 + 1/2) = 2/3.
    gt = _panoptic(GT_ROWS, GT_LEGEND)
    stat = PQStat()
    stat += pq_stat_single(*gt, *_panoptic(GT_ROWS, PRED_LEGEND), CATEGORIES)
    stat += pq_stat_single(*gt, *_panoptic("SSSSSS/SSSSSS/GPPG../GPPG..", PRED_LEGEND), CATEGORIES)
    assert (stat[CAR].tp, stat[CAR].fp, stat[CAR].fn) == (1, 0, 1) and stat[CAR].iou == pytest.approx(1.0)
    assert stat.results(CATEGORIES)["per_class"][CAR]["pq"] == pytest.approx(2 / 3)


def test_png_id_missing_from_segments_info_is_an_error():
    gt = _panoptic(GT_ROWS, GT_LEGEND)
    pred_ids, pred_segments = _panoptic(GT_ROWS, PRED_LEGEND)
    pred_segments = [s for s in pred_segments if s["category_id"] != CAR]  # the car, id 3, stays in the PNG
    with pytest.raises(ValueError, match=r"image 7 \(p.png\): segment ids \[3\] are in the prediction PNG but not in"):
        pq_stat_single(*gt, pred_ids, pred_segments, CATEGORIES, image="image 7 (p.png)")


def test_unknown_predicted_category_is_an_error():
    gt = _panoptic(GT_ROWS, GT_LEGEND)
    pred = _panoptic(GT_ROWS, {**PRED_LEGEND, "C": (3, 99)})
    with pytest.raises(ValueError, match=r"image 7 .*segment 3 has category_id 99, which is not among the categories"):
        pq_stat_single(*gt, *pred, CATEGORIES, image="image 7 (p.png)")


def test_listed_segment_absent_from_the_png_is_an_error():
    gt = _panoptic(GT_ROWS, GT_LEGEND)
    pred_ids, pred_segments = _panoptic(GT_ROWS, PRED_LEGEND)
    pred_segments.append({"id": 42, "category_id": CAR})
    with pytest.raises(ValueError, match=r"image 7 .*segment ids \[42\] are in the prediction's segments_info but not"):
        pq_stat_single(*gt, pred_ids, pred_segments, CATEGORIES, image="image 7 (p.png)")


def test_format_pq_table():
    results = _results(_panoptic(GT_ROWS, GT_LEGEND), _panoptic("SSSSSS/SSSSSS/GPPG../GPPG..", PRED_LEGEND))
    lines = format_pq_table(results).splitlines()
    assert lines[0].split() == ["|", "PQ", "SQ", "RQ", "N"]
    assert lines[2] == "All       |  75.0   75.0   75.0     4"
    assert lines[3] == "Things    |  50.0   50.0   50.0     2"
    assert lines[4] == "Stuff     | 100.0  100.0  100.0     2"


# ---- torchmetrics as an independent oracle ----------------------------------------------------------------------
#
# torchmetrics.detection.PanopticQuality takes [B, H, W, 2] maps of (category, instance) per pixel instead of segment
# ids plus segments_info. Conventions, as read in torchmetrics 1.9 (functional/detection/_panoptic_quality_common.py):
# - Void: any category that is neither a thing nor a stuff (here category 0) becomes a "void colour". In the target it
#   plays the role of COCO's VOID exactly: prediction pixels on it leave the union and count towards the "more than
#   half on void" exemption from FP.
# - Unlabelled prediction pixels: only representable as an unknown category with allow_unknown_preds_category=True,
#   which makes them void too. There torchmetrics goes beyond COCO: it also removes the gt pixels predicted void from
#   the union, and does not count a gt segment as a FN when more than half of it is predicted void. panopticapi does
#   neither (see test_unlabelled_prediction_pixels_differ_from_torchmetrics). So the random predictions below leave
#   pixels unlabelled only where the ground truth is void, where both agree.
# - Stuff: torchmetrics zeroes the instance of stuff categories, so all pixels of a stuff class form one segment; the
#   scenes below have at most one segment per stuff class (as COCO panoptic has), where both agree.
# - Crowds: torchmetrics has none; the scenes have none.
# - IoU is computed in float32 by torchmetrics (int tensors divided), hence the 1e-6 tolerance.
THINGS, STUFFS = (1, 2, 3), (4, 5, 6)
RANDOM_CATEGORIES = [{"id": c, "isthing": int(c in THINGS)} for c in THINGS + STUFFS]


def _render(bands, things, height, width):
    """Stuff ``bands`` ``[(category, first row)]`` and ``things`` ``[(category, y0, x0, y1, x1)]`` (later ones on top)
    -> ``[H, W]`` category and instance maps; a thing's instance is its index + 1, stuff's is 0."""
    category = np.zeros((height, width), np.int64)
    instance = np.zeros((height, width), np.int64)
    for c, row in bands:
        category[row:] = c
    for i, (c, y0, x0, y1, x1) in enumerate(things):
        category[y0:y1, x0:x1], instance[y0:y1, x0:x1] = c, i + 1
    return category, instance


def _to_ids(rng, category, instance):
    """(category, instance) maps -> segment-id map with random distinct ids and its segments_info (category 0: id 0)."""
    pairs = np.unique(np.stack([category, instance], -1).reshape(-1, 2), axis=0)
    pairs = pairs[pairs[:, 0] != 0]
    new_ids = rng.choice(np.arange(1, 256 ** 3 // 64), size=len(pairs), replace=False)
    ids = np.zeros(category.shape, np.int64)
    segments = []
    for (c, inst), segment_id in zip(pairs.tolist(), new_ids.tolist()):
        ids[(category == c) & (instance == inst)] = segment_id
        segments.append({"id": segment_id, "category_id": c, "iscrowd": 0})
    return ids, segments


def _random_image(rng, height=24, width=32):
    """A random ground truth and a perturbed prediction, as ``(gt_ids, gt_segments, pred_ids, pred_segments)`` plus
    the torchmetrics ``[H, W, 2]`` maps of both."""
    stuff = rng.choice(STUFFS, size=rng.integers(1, 4), replace=False).tolist()
    rows = sorted(rng.choice(np.arange(1, height), size=len(stuff) - 1, replace=False).tolist())
    bands = list(zip(stuff, [0, *rows]))
    things = []
    for _ in range(rng.integers(0, 7)):
        y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
        things.append((int(rng.choice(THINGS)), y0, x0, y0 + rng.integers(2, 12), x0 + rng.integers(2, 12)))
    # The prediction: stuff borders moved, a stuff class sometimes swapped for an unused one, things jittered by a
    # few pixels, sometimes dropped or relabelled to another thing class, plus spurious things.
    unused = [c for c in STUFFS if c not in stuff]
    pred_bands = [(int(rng.choice(unused)) if unused and rng.random() < 0.15 else c,
                   0 if row == 0 else int(np.clip(row + rng.integers(-3, 4), 1, height - 1))) for c, row in bands]
    if len({c for c, _ in pred_bands}) < len(pred_bands):
        pred_bands = bands
    pred_things = []
    for c, y0, x0, y1, x1 in things:
        if rng.random() < 0.15:
            continue
        if rng.random() < 0.15:
            c = int(rng.choice([t for t in THINGS if t != c]))
        dy0, dx0, dy1, dx1 = rng.integers(-2, 3, size=4)
        y0, x0, y1, x1 = max(0, y0 + dy0), max(0, x0 + dx0), y1 + dy1, x1 + dx1
        pred_things.append((c, y0, x0, max(y0 + 1, y1), max(x0 + 1, x1)))
    # Void in the ground truth (category 0); spurious predicted things, some on a void rectangle.
    voids = []
    for _ in range(rng.integers(0, 3)):
        y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
        voids.append((y0, x0, y0 + rng.integers(2, 10), x0 + rng.integers(2, 10)))
    for _ in range(rng.integers(0, 4)):
        if voids and rng.random() < 0.5:
            y0, x0, y1, x1 = (v + d for v, d in zip(voids[rng.integers(len(voids))], rng.integers(-1, 2, size=4)))
            y0, x0 = max(0, y0), max(0, x0)
            y1, x1 = max(y0 + 1, y1), max(x0 + 1, x1)
        else:
            y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
            y1, x1 = y0 + rng.integers(2, 8), x0 + rng.integers(2, 8)
        pred_things.append((int(rng.choice(THINGS)), y0, x0, y1, x1))
    gt_category, gt_instance = _render(bands, things, height, width)
    pred_category, pred_instance = _render(pred_bands, pred_things, height, width)
    void = np.zeros((height, width), bool)
    for y0, x0, y1, x1 in voids:
        void[y0:y1, x0:x1] = True
    gt_category[void], gt_instance[void] = 0, 0
    # Unlabelled prediction pixels (id 0, not listed) on part of the void only: see the conventions above.
    unlabelled = void & (rng.random((height, width)) < 0.5)
    pred_category[unlabelled], pred_instance[unlabelled] = 0, 0
    gt_ids, gt_segments = _to_ids(rng, gt_category, gt_instance)
    pred_ids, pred_segments = _to_ids(rng, pred_category, pred_instance)
    return ((gt_ids, gt_segments, pred_ids, pred_segments),
            np.stack([gt_category, gt_instance], -1), np.stack([pred_category, pred_instance], -1))


@pytest.mark.parametrize("seed", range(8))
def test_matches_torchmetrics_panoptic_quality(seed):
    tm = pytest.importorskip("torchmetrics.detection")
    rng = np.random.default_rng(seed)
    images = [_random_image(rng) for _ in range(4)]
    stat = PQStat()
    for arrays, _, _ in images:
        stat += pq_stat_single(*arrays, RANDOM_CATEGORIES)
    ours = stat.results(RANDOM_CATEGORIES)
    targets = torch.as_tensor(np.stack([t for _, t, _ in images]))
    preds = torch.as_tensor(np.stack([p for _, _, p in images]))

    options = {"things": THINGS, "stuffs": STUFFS, "allow_unknown_preds_category": True, "return_sq_and_rq": True}
    averaged = tm.PanopticQuality(**options)
    per_class = tm.PanopticQuality(**options, return_per_class=True)
    averaged.update(preds, targets)
    per_class.update(preds, targets)
    # torchmetrics' per-class order: things sorted, then stuffs sorted -- here 1..6, as RANDOM_CATEGORIES.
    for index, c in enumerate(THINGS + STUFFS):
        assert (stat[c].tp, stat[c].fp, stat[c].fn) == (averaged.true_positives[index].item(),
                                                        averaged.false_positives[index].item(),
                                                        averaged.false_negatives[index].item()), f"category {c}"
        assert stat[c].iou == pytest.approx(averaged.iou_sum[index].item(), abs=1e-6)
    expected_per_class = per_class.compute()  # [C, 3]: pq, sq, rq
    for index, c in enumerate(THINGS + STUFFS):
        got = ours["per_class"][c]
        assert [got["pq"], got["sq"], got["rq"]] == pytest.approx(expected_per_class[index].tolist(), abs=1e-6)
    assert [ours["All"]["pq"], ours["All"]["sq"], ours["All"]["rq"]] == pytest.approx(averaged.compute().tolist(),
                                                                                        abs=1e-6)
    # Things / Stuff: torchmetrics' per-class values averaged over the classes it has TP, FP or FN for.
    counted = (averaged.true_positives + averaged.false_positives + averaged.false_negatives) > 0
    for name, group in (("Things", slice(0, 3)), ("Stuff", slice(3, 6))):
        rows = expected_per_class[group][counted[group]]
        assert ours[name]["n"] == len(rows)
        if len(rows):
            assert [ours[name][k] for k in ("pq", "sq", "rq")] == pytest.approx(rows.mean(0).tolist(), abs=1e-6)


def test_random_scenes_exercise_every_outcome():
    # The oracle comparison above means something only if the scenes produce TPs, FPs and FNs of things and stuff,
    # predictions on void, and predictions exempted from FP for lying mostly on void.
    stat = PQStat()
    on_void = mostly_on_void = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        for _ in range(4):
            gt_ids, gt_segments, pred_ids, pred_segments = _random_image(rng)[0]
            stat += pq_stat_single(gt_ids, gt_segments, pred_ids, pred_segments, RANDOM_CATEGORIES)
            for segment in pred_segments:
                void_fraction = (gt_ids[pred_ids == segment["id"]] == 0).mean()
                on_void += bool(void_fraction > 0)
                mostly_on_void += bool(void_fraction > 0.5)
    for group in (THINGS, STUFFS):
        assert all(sum(getattr(stat[c], k) for c in group) > 0 for k in ("tp", "fp", "fn"))
    assert on_void >= 10 and mostly_on_void >= 3, (on_void, mostly_on_void)


def test_unlabelled_prediction_pixels_differ_from_torchmetrics():
    # gt: a person on 6 px, sky on 4. The prediction labels 3 person px and leaves the other 3 unlabelled.
    # COCO (panopticapi): IoU = 3 / (3 + 6 - 3) = 0.5, not a match -> person FN + FP, PQ 0; sky IoU 1 -> All = 1/2.
    # torchmetrics: the 3 gt px predicted void leave the union: IoU = 3 / (3 + 6 - 3 - 3) = 1 -> All = 1.
    tm = pytest.importorskip("torchmetrics.detection")
    legend = {"P": (1, PERSON), "S": (2, SKY)}
    results = _results(_panoptic("PPPPPPSSSS", legend), _panoptic("PPP...SSSS", legend))
    assert results["All"]["pq"] == pytest.approx(0.5)
    target = torch.tensor([[[PERSON, 1]] * 6 + [[SKY, 0]] * 4])[None]
    pred = torch.tensor([[[PERSON, 1]] * 3 + [[0, 0]] * 3 + [[SKY, 0]] * 4])[None]
    metric = tm.PanopticQuality(things={PERSON, CAR}, stuffs={SKY, GRASS}, allow_unknown_preds_category=True)
    assert metric(pred, target).item() == pytest.approx(1.0)


# ---- COCO panoptic files and PanopticEvaluator ----------------------------------------------------------------
IMAGE_IDS = [3, 5, 9]


def _file_scenes():
    """Three random images, the first with a crowd segment; ``{image_id: (gt_ids, gt_segs, pred_ids, pred_segs)}``."""
    rng = np.random.default_rng(123)
    scenes = {image_id: _random_image(rng)[0] for image_id in IMAGE_IDS}
    gt_ids, gt_segments, _, _ = scenes[IMAGE_IDS[0]]
    crowd_id = max(s["id"] for s in gt_segments) + 1
    gt_ids[:6, :8] = crowd_id
    gt_segments[:] = [s for s in gt_segments if (gt_ids == s["id"]).any()]
    gt_segments.append({"id": crowd_id, "category_id": THINGS[0], "iscrowd": 1})
    for segment in gt_segments:
        segment["area"] = int((gt_ids == segment["id"]).sum())
    return scenes


def _write_ground_truth(tmp_path, scenes) -> str:
    folder = tmp_path / "panoptic_val"
    folder.mkdir()
    annotations = []
    for image_id, (gt_ids, gt_segments, _, _) in scenes.items():
        file_name = f"{image_id:012d}.png"
        (folder / file_name).write_bytes(encode_panoptic_png(gt_ids))
        annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": gt_segments})
    gt_json = tmp_path / "panoptic_val.json"
    gt_json.write_text(json.dumps({"annotations": annotations, "categories": RANDOM_CATEGORIES,
                                   "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in scenes]}))
    return str(gt_json)


def _write_predictions(tmp_path, scenes, image_ids=IMAGE_IDS) -> str:
    folder = tmp_path / "pred"
    folder.mkdir(exist_ok=True)
    annotations = []
    for image_id in image_ids:
        _, _, pred_ids, pred_segments = scenes[image_id]
        (folder / f"{image_id}.png").write_bytes(encode_panoptic_png(pred_ids))
        annotations.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": pred_segments})
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps({"annotations": annotations}))
    return str(pred_json)


def _in_memory(scenes) -> dict:
    stat = PQStat()
    for arrays in scenes.values():
        stat += pq_stat_single(*arrays, RANDOM_CATEGORIES)
    return stat.results(RANDOM_CATEGORIES)


def test_pq_compute_round_trip_equals_in_memory(tmp_path):
    scenes = _file_scenes()
    gt_json, pred_json = _write_ground_truth(tmp_path, scenes), _write_predictions(tmp_path, scenes)
    results = pq_compute(gt_json, pred_json)  # PNG folders default to the JSON paths without ".json"
    assert results == _in_memory(scenes)
    assert 0 < results["All"]["pq"] < 1 and results["All"]["n"] == 6


def test_pq_compute_errors_name_the_image(tmp_path):
    scenes = _file_scenes()
    gt_json = _write_ground_truth(tmp_path, scenes)
    with pytest.raises(ValueError, match="no prediction for the image with id 9"):
        pq_compute(gt_json, _write_predictions(tmp_path, scenes, image_ids=IMAGE_IDS[:2]))
    scenes[11] = scenes[3]
    with pytest.raises(ValueError, match=r"predictions for images not in the ground truth .*ids \[11\]"):
        pq_compute(gt_json, _write_predictions(tmp_path, scenes, image_ids=IMAGE_IDS + [11]))
    pred_json = _write_predictions(tmp_path, scenes)
    pred_ids = read_panoptic_png(tmp_path / "pred" / "5.png")
    pred_ids[0, 0] = 4242
    (tmp_path / "pred" / "5.png").write_bytes(encode_panoptic_png(pred_ids))
    with pytest.raises(ValueError, match=r"image 5 \(.*5\.png\): segment ids \[4242\] are in the prediction PNG"):
        pq_compute(gt_json, pred_json)


def _detr_predictions(scenes, image_ids) -> list[dict]:
    """What the official DETR engine hands to the evaluator: PNG bytes and segments_info holding tensors."""
    predictions = []
    for image_id in image_ids:
        _, _, pred_ids, pred_segments = scenes[image_id]
        segments_info = [{"id": torch.tensor(s["id"]), "isthing": s["category_id"] in THINGS,
                          "category_id": np.int64(s["category_id"]), "area": torch.tensor(7)} for s in pred_segments]
        predictions.append({"png_string": encode_panoptic_png(pred_ids), "segments_info": segments_info,
                            "image_id": torch.tensor(image_id), "file_name": f"{image_id:012d}.png"})
    return predictions


def test_panoptic_evaluator_equals_in_memory(tmp_path):
    scenes = _file_scenes()
    gt_json = _write_ground_truth(tmp_path, scenes)
    evaluator = PanopticEvaluator(gt_json, str(tmp_path / "panoptic_val"), output_dir=str(tmp_path / "out"))
    first = _detr_predictions(scenes, IMAGE_IDS[:2])
    evaluator.update(first)
    assert all("png_string" not in p for p in first)
    # Image 5 again, with another image's prediction: ignored, the first prediction of an image is kept.
    evaluator.update(_detr_predictions(scenes, IMAGE_IDS[2:]) + _detr_predictions({5: scenes[9]}, [5]))
    evaluator.synchronize_between_processes()  # a single process: no process group needed
    results = evaluator.summarize()
    assert results == _in_memory(scenes)
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [a["image_id"] for a in saved["annotations"]] == IMAGE_IDS
    segment = saved["annotations"][0]["segments_info"][0]
    assert all(type(segment[k]) is int for k in ("id", "category_id", "area")) and type(segment["isthing"]) is bool
    assert (read_panoptic_png(tmp_path / "out" / "000000000005.png") == scenes[5][2]).all()


def test_panoptic_evaluator_merges_processes(tmp_path, monkeypatch):
    scenes = _file_scenes()
    gt_json, gt_folder, out = _write_ground_truth(tmp_path, scenes), str(tmp_path / "panoptic_val"), tmp_path / "out"
    rank0, rank1 = PanopticEvaluator(gt_json, gt_folder, str(out)), PanopticEvaluator(gt_json, gt_folder, str(out))
    rank0.update(_detr_predictions(scenes, [3, 5]))
    # Rank 1 also got image 3 (a DistributedSampler pads with repeats) and predicted it differently; its PNG was
    # written last, so its annotation is the one that matches the file on disk and must be kept.
    other = {3: (*scenes[3][:2], *scenes[9][2:]), 9: scenes[9]}
    rank1.update(_detr_predictions(other, [9, 3]))
    payload = (rank1.predictions, rank1._digests)
    monkeypatch.setattr(panoptic_eval_module, "all_gather", lambda obj: [obj, payload])
    rank0.synchronize_between_processes()
    assert [a["image_id"] for a in rank0.predictions] == [3, 5, 9]
    expected = dict(scenes)
    expected[3] = other[3]
    assert rank0.summarize() == _in_memory(expected)
    monkeypatch.setattr(panoptic_eval_module, "is_main_process", lambda: False)
    (out / "predictions.json").unlink()
    assert rank0.summarize() is None and not (out / "predictions.json").exists()
