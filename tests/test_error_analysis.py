"""TIDE's error breakdown (evaluation/tide.py, tools/analysis/errors.py) on hand-made detections whose errors are
known: each type found where it was put, its dAP as computed by hand and as pycocotools' AP50 of the detections
fixed by hand; the base AP is COCOeval's AP50."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from evaluation.coco_eval import CocoEvaluator
from evaluation.report import EvaluationReport
from evaluation.saved_detections import SavedDetections
from evaluation.tide import ERROR_TYPES, tide_errors
from tools.analysis import errors as errors_tool
from tools.command_line import run_tool
from util.checkpoint import save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

A, B = 1, 2  # category ids


def ground_truth(boxes: list[tuple], images: int, categories=((A, "a"), (B, "b"))) -> dict:
    """A COCO dataset of ``images`` 200 x 200 images (ids 1..images) with ``boxes``: (image id, category id,
    [x, y, w, h]) or (image id, category id, [x, y, w, h], iscrowd)."""
    annotations = [{"id": i + 1, "image_id": b[0], "category_id": b[1], "bbox": list(b[2]),
                    "area": b[2][2] * b[2][3], "iscrowd": b[3] if len(b) > 3 else 0} for i, b in enumerate(boxes)]
    return {"images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in range(1, images + 1)],
            "annotations": annotations,
            "categories": [{"id": c, "name": name, "supercategory": "s"} for c, name in categories]}


def coco(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(dataset))
        gt.createIndex()
    return gt


def evaluated(dataset: dict, detections: list[tuple], backend: str = "pycocotools") -> CocoEvaluator:
    """A CocoEvaluator after ``accumulate`` and ``summarize`` on ``detections``: (image id, category id, score,
    [x, y, w, h]); every image of ``dataset`` is evaluated."""
    gt = coco(dataset)
    predictions = {image["id"]: {"scores": [], "labels": [], "boxes": []} for image in dataset["images"]}
    for image_id, category_id, score, (x, y, w, h) in detections:
        predictions[image_id]["scores"].append(score)
        predictions[image_id]["labels"].append(category_id)
        predictions[image_id]["boxes"].append([x, y, x + w, y + h])
    evaluator = CocoEvaluator(gt, ["bbox"], backend=backend)
    evaluator.update({i: {"scores": torch.tensor(p["scores"], dtype=torch.float32),
                          "labels": torch.tensor(p["labels"], dtype=torch.int64),
                          "boxes": torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4)}
                      for i, p in predictions.items()})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def coco_ap50(dataset: dict, detections: list[tuple]) -> float:
    """pycocotools' AP50 of ``detections``."""
    return float(evaluated(dataset, detections).coco_eval["bbox"].stats[1])


def tide(dataset: dict, detections: list[tuple]):
    return tide_errors(SavedDetections.from_evaluator(evaluated(dataset, detections)))


# Four images; classes a and b, three and four boxes. Every detection is named by what TIDE must call it.
BOXES = [(1, A, [10, 10, 50, 50]), (1, B, [110, 110, 50, 50]),   # A1, B1
         (2, A, [10, 10, 50, 50]), (2, A, [110, 10, 50, 50]),    # A2, A3 (missed)
         (3, B, [10, 10, 50, 50]), (3, B, [110, 110, 50, 50]),   # B2 (a Cls error aims at it), B3 (a Loc error)
         (4, B, [10, 10, 50, 50])]                               # B4
TP_A1, DUPE, BKG, TP_A2 = (1, A, 0.9, [10, 10, 50, 50]), (1, A, 0.85, [12, 10, 50, 50]), \
    (1, A, 0.8, [60, 150, 30, 30]), (2, A, 0.7, [10, 10, 50, 50])
CLS = (3, A, 0.6, [10, 10, 50, 50])      # class a exactly on B2: IoU 1 with a box of another class
TP_B1 = (1, B, 0.95, [110, 110, 50, 50])
BOTH = (2, B, 0.75, [35, 10, 50, 50])    # IoU 1/3 with A2 (another class), 0 with any b box
LOC = (3, B, 0.65, [135, 110, 50, 50])   # IoU 1/3 with B3 (its own class)
TP_B4 = (4, B, 0.5, [10, 10, 50, 50])
DETECTIONS = [TP_A1, DUPE, BKG, TP_A2, CLS, TP_B1, BOTH, LOC, TP_B4]

# By hand (COCO's 101 recall points r = 0, 0.01, ..., 1; AP = mean of both classes' 101 interpolated precisions).
# a (3 boxes), by score: TP FP FP TP FP -> precision 1 up to recall 1/3 (34 points), then 1/2 up to 2/3 (33 points):
#   AP_a = (34 + 33/2) / 101 = 50.5 / 101. b (4 boxes): TP FP FP TP -> 1 up to 1/4 (26 points), 1/2 up to 1/2 (25):
#   AP_b = (26 + 25/2) / 101 = 38.5 / 101. Base AP = 89 / 202.
BASE_AP = 89 / 202
# Fixing one type: Cls -> b: TP FP FP TP TP (3/5 up to 3/4): AP_b = (26 + 50 * 3/5) / 101 = 56 / 101.
# Loc -> b: TP FP TP TP (3/4 up to 3/4): AP_b = (26 + 50 * 3/4) / 101 = 63.5 / 101.
# Both removed -> b: TP FP TP (2/3 up to 1/2): AP_b = (26 + 25 * 2/3) / 101. Dupe or Bkg removed -> a: TP FP TP FP
# (2/3 up to 2/3): AP_a = (34 + 33 * 2/3) / 101 = 56 / 101. Miss: a has 2 boxes -> 1 up to 1/2 (51 points), 1/2 up to 1
# (50): AP_a = 76 / 101.
DELTA_AP = {"Cls": 17.5 / 202, "Loc": 25 / 202, "Both": (25 * 2 / 3 - 12.5) / 202, "Dupe": 5.5 / 202,
            "Bkg": 5.5 / 202, "Miss": 25.5 / 202}
# FalsePos (no false positives): a (34 + 33) / 101, b (26 + 25) / 101; FalseNeg (2 boxes each): a and b 76 / 101.
SPECIAL = {"FalsePos": (67 + 51) / 202 - BASE_AP, "FalseNeg": 152 / 202 - BASE_AP}


def fixed_by_hand(error: str) -> tuple[dict, list[tuple]]:
    """(ground truth, detections) with the one error of type ``error`` fixed as TIDE defines it."""
    dataset, detections = ground_truth(BOXES, 4), list(DETECTIONS)
    if error == "Cls":
        detections[detections.index(CLS)] = (3, B, 0.6, [10, 10, 50, 50])  # the class of the box it lies on
    elif error == "Loc":
        detections[detections.index(LOC)] = (3, B, 0.65, [110, 110, 50, 50])  # the box of B3
    elif error == "Miss":
        dataset = ground_truth([b for b in BOXES if b != (2, A, [110, 10, 50, 50])], 4)
    else:
        detections.remove({"Both": BOTH, "Dupe": DUPE, "Bkg": BKG}[error])
    return dataset, detections


def test_each_error_type_is_found_once_and_costs_what_fixing_it_by_hand_gains():
    dataset = ground_truth(BOXES, 4)
    result = tide(dataset, DETECTIONS)
    assert result.counts == dict.fromkeys(ERROR_TYPES, 1)
    assert result.ap == pytest.approx(BASE_AP, abs=1e-12)
    assert result.ap == coco_ap50(dataset, DETECTIONS)  # COCOeval's AP50, to the bit
    for error in ERROR_TYPES:
        assert result.delta_ap[error] == pytest.approx(DELTA_AP[error], abs=1e-12), error
        assert result.delta_ap[error] == pytest.approx(coco_ap50(*fixed_by_hand(error)) - result.ap, abs=1e-15), error
    assert result.special == pytest.approx(SPECIAL, abs=1e-12)
    assert (result.images, result.detections, result.ground_truth_boxes) == (4, 9, 7)


def test_errors_aiming_at_one_box_fix_once_and_errors_aiming_at_a_taken_box_are_removed():
    # Image 1: a box of class a found (0.9) and claimed again by a b detection (0.8: a Cls error on a taken box).
    # Image 2: a b box two b detections miss by IoU 1/3 (0.7, 0.6: two Loc errors aiming at it), and another b box
    # found at 0.5. Fixing Loc makes the 0.7 detection a true positive and removes the 0.6 one (a duplicate then).
    boxes = [(1, A, [10, 10, 50, 50]), (2, B, [10, 10, 50, 50]), (2, B, [110, 110, 50, 50])]
    dataset = ground_truth(boxes, 2)
    found_a, cls_on_taken = (1, A, 0.9, [10, 10, 50, 50]), (1, B, 0.8, [10, 10, 50, 50])
    loc_high, loc_low = (2, B, 0.7, [35, 10, 50, 50]), (2, B, 0.6, [10, 35, 50, 50])
    found_b = (2, B, 0.5, [110, 110, 50, 50])
    detections = [found_a, cls_on_taken, loc_high, loc_low, found_b]
    result = tide(dataset, detections)
    assert result.counts == {"Cls": 1, "Loc": 2, "Both": 0, "Dupe": 0, "Bkg": 0, "Miss": 0}
    base = coco_ap50(dataset, detections)
    assert result.ap == base
    cls_fixed = [found_a, loc_high, loc_low, found_b]
    loc_fixed = [found_a, cls_on_taken, (2, B, 0.7, [10, 10, 50, 50]), found_b]
    assert result.delta_ap["Cls"] == pytest.approx(coco_ap50(dataset, cls_fixed) - base, abs=1e-15)
    assert result.delta_ap["Loc"] == pytest.approx(coco_ap50(dataset, loc_fixed) - base, abs=1e-15)
    # by hand (a's AP is 1 throughout): b (2 boxes) is FP FP FP TP -> precision 1/4 up to recall 1/2 (51 points);
    # with Loc fixed FP TP TP -> 2/3 up to recall 1 (101 points)
    assert result.delta_ap["Loc"] == pytest.approx((2 / 3 - 51 / 101 / 4) / 2, abs=1e-12)


def random_case(seed: int) -> tuple[dict, list[tuple]]:
    """Random boxes of three classes (some crowds) on 30 images and detections near them (wrong classes, shifted,
    duplicated, on crowds, on nothing), scores on a coarse grid so that many tie; one image with 130 detections of
    one class (COCOeval keeps its best 100)."""
    rng = np.random.default_rng(seed)
    boxes, detections = [], []
    for image_id in range(1, 31):
        for _ in range(rng.integers(0, 6)):
            x, y, w, h = rng.uniform(0, 150, 2).tolist() + rng.uniform(8, 50, 2).tolist()
            crowd = int(rng.random() < 0.1)
            boxes.append((image_id, int(rng.integers(1, 4)), [x, y, w, h], crowd))
            for _ in range(rng.integers(0, 3)):
                shift = rng.normal(0, 0.3 * w, 2)
                label = int(rng.integers(1, 4)) if rng.random() < 0.3 else boxes[-1][1]
                detections.append((image_id, label, round(float(rng.integers(1, 20)) / 20, 2),
                                   [x + shift[0], y + shift[1], w * rng.uniform(0.7, 1.3), h]))
        for _ in range(rng.integers(0, 3)):
            detections.append((image_id, int(rng.integers(1, 4)), round(float(rng.integers(1, 20)) / 20, 2),
                               rng.uniform(0, 150, 2).tolist() + rng.uniform(8, 50, 2).tolist()))
    for _ in range(130):
        detections.append((7, 2, round(float(rng.random()), 2), rng.uniform(0, 150, 2).tolist() + [20.0, 20.0]))
    return ground_truth(boxes, 30, categories=((1, "x"), (2, "y"), (3, "z"))), detections


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_base_ap_is_cocoevals_ap50_on_random_detections_with_crowds_and_ties(seed):
    dataset, detections = random_case(seed)
    evaluator = evaluated(dataset, detections)
    result = tide_errors(SavedDetections.from_evaluator(evaluator))
    assert result.ap == evaluator.coco_eval["bbox"].stats[1]
    assert all(value >= 0 for value in result.delta_ap.values())
    # every false positive has one type; every box not taken is a miss or the target of a Cls / Loc error
    assert sum(result.counts[t] for t in ERROR_TYPES if t != "Miss") == result.detections - _true_positives(evaluator)


def _true_positives(evaluator: CocoEvaluator) -> int:
    """Matched, not ignored detections at IoU 0.5 in pycocotools' per-image results (area 'all', 100 detections)."""
    coco_eval = evaluator.coco_eval["bbox"]
    all_area = [list(r) for r in coco_eval.params.areaRng].index([0 ** 2, 1e5 ** 2])
    return int(sum(((e["dtMatches"][0] > 0) & ~e["dtIgnore"][0]).sum() for e in coco_eval.evalImgs
                   if e is not None and e["aRng"] == coco_eval.params.areaRng[all_area]))


def test_no_detections_leave_only_misses():
    dataset = ground_truth(BOXES, 4)
    result = tide(dataset, [])
    assert result.ap == 0 and result.counts == {**dict.fromkeys(ERROR_TYPES, 0), "Miss": 7}
    assert result.delta_ap == dict.fromkeys(ERROR_TYPES, 0.0)  # a class left without ground truth scores AP 0


def test_the_tool_reads_a_saved_evaluation_and_writes_its_numbers(tmp_path, capsys):
    dataset = ground_truth(BOXES, 4)
    evaluator = evaluated(dataset, DETECTIONS)
    EvaluationReport.from_evaluator(evaluator).write(tmp_path / "run" / "eval")
    save_checkpoint(evaluator.saved_state("bbox"), tmp_path / "run" / "eval" / "latest.pth")
    result = errors_tool.main([str(tmp_path / "run" / "eval" / "latest.pth"), "--out", str(tmp_path / "tide")])
    assert result.delta_ap == pytest.approx(DELTA_AP, abs=1e-12)
    out = capsys.readouterr().out
    assert "bbox AP50 = 44.06" in out and "note:" not in out  # 89 / 202 = 0.4406
    saved = json.loads((tmp_path / "tide" / "errors.json").read_text())
    assert saved["delta_ap"] == pytest.approx(DELTA_AP, abs=1e-12) and saved["counts"] == result.counts
    assert (tmp_path / "tide" / "errors.png").stat().st_size > 0
    # the eval folder and the detections file name the same evaluation
    for path in (tmp_path / "run" / "eval", tmp_path / "run" / "eval" / "detections.pth", tmp_path / "run"):
        assert errors_tool.main([str(path)]).ap == result.ap


def test_the_tools_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "eval").mkdir()
    save_checkpoint({"precision": np.zeros(1)}, tmp_path / "eval" / "050.pth")
    (tmp_path / "eval" / "foreign_detections.pth").write_bytes(b"not a checkpoint")
    for argv, message in (([str(tmp_path / "missing.pth")], "missing.pth: no such file"),
                          ([str(tmp_path / "eval" / "050.pth")], "050_detections.pth"),
                          ([str(tmp_path / "eval" / "foreign_detections.pth")], "not a saved evaluation")):
        assert run_tool(errors_tool.main, argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
