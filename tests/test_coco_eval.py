"""CocoEvaluator against hand-made ground truth whose AP is known in advance."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

import evaluation.coco_eval as coco_eval_module
from evaluation.coco_eval import CocoEvaluator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

# Four 200 x 200 images; image k holds two squares inside its own quadrant, so no box of one image overlaps a box
# of another. Sides 40 and 50 px: every object is "medium" (32² < area < 96²).
QUADRANTS = [(0, 0), (100, 0), (0, 100), (100, 100)]
IMAGE_IDS = [3, 5, 9, 10]  # not 1..N, to catch index/id mix-ups


def _gt_dataset() -> dict:
    images, annotations = [], []
    for image_id, (ox, oy) in zip(IMAGE_IDS, QUADRANTS):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 200, "height": 200})
        for category_id, (x, y, side) in ((1, (ox + 5, oy + 5, 40)), (7, (ox + 48, oy + 45, 50))):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0,
                "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]],
            })
    categories = [{"id": 1, "name": "a", "supercategory": "s"}, {"id": 7, "name": "b", "supercategory": "s"}]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture
def coco_gt(tmp_path) -> COCO:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt_dataset()))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _predictions(coco_gt: COCO, image_ids=IMAGE_IDS, shift=0.0, with_masks=False) -> dict:
    """Ground truth boxes as predictions (abs xyxy, score 0.9), each moved right by ``shift`` x its side."""
    predictions = {}
    for image_id in image_ids:
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_id))
        boxes = torch.tensor([[x + shift * w, y, x + w + shift * w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        predictions[image_id] = {
            "scores": torch.full((len(anns),), 0.9),
            "labels": torch.tensor([a["category_id"] for a in anns]),
            "boxes": boxes.reshape(-1, 4),
        }
        if with_masks:
            masks = np.stack([coco_gt.annToMask(a) for a in anns]) if anns else np.zeros((0, 200, 200), np.uint8)
            predictions[image_id]["masks"] = torch.as_tensor(masks, dtype=torch.float32)[:, None]
    return predictions


def _evaluate(coco_gt: COCO, predictions: dict, iou_types=("bbox",)) -> CocoEvaluator:
    evaluator = CocoEvaluator(coco_gt, list(iou_types))
    evaluator.update(predictions)
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def test_perfect_predictions_give_ap_one(coco_gt, capsys):
    stats = _evaluate(coco_gt, _predictions(coco_gt)).coco_eval["bbox"].stats
    # AP, AP50, AP75, AP_medium are 1; no small or large objects: -1; AR@100 and AR_medium are 1
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0) and stats[2] == pytest.approx(1.0)
    assert stats[3] == -1 and stats[4] == pytest.approx(1.0) and stats[5] == -1
    assert stats[8] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "IoU metric: bbox" in out and out.count("Average Precision") == 6 and out.count("Average Recall") == 6
    assert "DONE" not in out, "pycocotools' progress chatter should be hidden"


def test_perfect_masks_give_segm_ap_one(coco_gt):
    evaluator = _evaluate(coco_gt, _predictions(coco_gt, with_masks=True), iou_types=("bbox", "segm"))
    assert evaluator.coco_eval["bbox"].stats[0] == pytest.approx(1.0)
    assert evaluator.coco_eval["segm"].stats[0] == pytest.approx(1.0)


def test_segm_without_masks_is_a_clear_error(coco_gt):
    evaluator = CocoEvaluator(coco_gt, ["segm"])
    with pytest.raises(ValueError, match="masks"):
        evaluator.update(_predictions(coco_gt))


def test_boxes_shuffled_between_images_give_ap_zero(coco_gt):
    perfect = _predictions(coco_gt)
    # image k gets image k+1's boxes: all in another quadrant, so nothing overlaps a ground truth box
    shuffled = {image_id: perfect[IMAGE_IDS[(i + 1) % len(IMAGE_IDS)]] for i, image_id in enumerate(IMAGE_IDS)}
    stats = _evaluate(coco_gt, shuffled).coco_eval["bbox"].stats
    assert stats[0] == 0.0 and stats[1] == 0.0


def test_jittered_boxes_pass_loose_thresholds_only(coco_gt):
    # a square moved by 1/5 of its side has IoU (1 - 0.2) / (1 + 0.2) = 2/3: a hit at IoU thresholds
    # 0.50, 0.55, 0.60, 0.65 and a miss at 0.70 ... 0.95, so AP = 4/10, AP50 = 1, AP75 = 0
    stats = _evaluate(coco_gt, _predictions(coco_gt, shift=0.2)).coco_eval["bbox"].stats
    assert stats[0] == pytest.approx(0.4)
    assert stats[1] == pytest.approx(1.0)
    assert stats[2] == pytest.approx(0.0)


def test_half_the_images_predicted(coco_gt):
    # images 3 and 5 perfect, images 9 and 10 seen with no detections: recall 1/2, precision 1 up to it
    predictions = _predictions(coco_gt, image_ids=IMAGE_IDS[:2])
    predictions.update({i: {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                            "boxes": torch.zeros(0, 4)} for i in IMAGE_IDS[2:]})
    evaluator = _evaluate(coco_gt, predictions)
    assert evaluator.img_ids == IMAGE_IDS
    stats = evaluator.coco_eval["bbox"].stats
    assert stats[8] == pytest.approx(0.5)  # AR@100
    assert stats[0] == pytest.approx(51 / 101)  # 101-point interpolation: precision 1 at recalls 0, 0.01 .. 0.5


def test_no_detections_give_ap_zero(coco_gt, capsys):
    empty = {i: {"scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
             for i in IMAGE_IDS}
    stats = _evaluate(coco_gt, empty, iou_types=("bbox", "segm")).coco_eval["bbox"].stats
    assert stats[0] == 0.0 and stats[8] == 0.0
    assert "IoU metric: segm" in capsys.readouterr().out


def test_no_images_evaluated_gives_minus_one(coco_gt):
    evaluator = CocoEvaluator(coco_gt, ["bbox"])
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    assert (evaluator.coco_eval["bbox"].stats == -1).all()


def test_synchronize_merges_processes_and_dedupes_images(coco_gt, monkeypatch):
    full = _predictions(coco_gt)
    rank0, rank1 = CocoEvaluator(coco_gt, ["bbox"]), CocoEvaluator(coco_gt, ["bbox"])
    rank0.update({i: full[i] for i in IMAGE_IDS[:3]})
    # rank 1 also saw image 9 (a DistributedSampler pads with repeats); its copy must not count twice
    rank1.update({i: full[i] for i in IMAGE_IDS[2:]})
    payloads = iter([rank1.img_ids, rank1.results])
    monkeypatch.setattr(coco_eval_module, "all_gather", lambda obj: [obj, next(payloads)])
    rank0.synchronize_between_processes()
    assert rank0.img_ids == IMAGE_IDS
    assert sum(len(r) for r in rank0.results["bbox"].values()) == 8
    rank0.accumulate()
    rank0.summarize()
    assert rank0.coco_eval["bbox"].stats[0] == pytest.approx(1.0)


def test_duplicate_update_keeps_first_predictions(coco_gt):
    evaluator = CocoEvaluator(coco_gt, ["bbox"])
    evaluator.update(_predictions(coco_gt))
    evaluator.update(_predictions(coco_gt, shift=0.2))  # ignored: these images were already evaluated
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.coco_eval["bbox"].stats[0] == pytest.approx(1.0)


def test_ground_truth_is_not_modified(coco_gt):
    before = json.dumps(coco_gt.dataset, sort_keys=True)
    _evaluate(coco_gt, _predictions(coco_gt, shift=0.2))
    assert json.dumps(coco_gt.dataset, sort_keys=True) == before
