"""--eval_backend faster_coco_eval gives pycocotools' 12 numbers; predictions reach the host once per batch."""
import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

import cli
from datasets import build_dataset, get_coco_api_from_dataset
from datasets.loaders import build_loaders
from engine import evaluate
from evaluation.coco_eval import CocoEvaluator, results_to_cpu
from models import build_model
from tests.test_coco_eval import _gt_dataset, _predictions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def _stats(coco_gt: COCO, predictions: dict, backend: str, iou_types=("bbox",)) -> dict:
    evaluator = CocoEvaluator(coco_gt, iou_types, backend=backend)
    evaluator.update(copy.deepcopy(predictions))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return {t: evaluator.coco_eval[t].stats.tolist() for t in iou_types}


def _coco(dataset: dict, tmp_path) -> COCO:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.3, 0.6])
def test_the_same_numbers_on_hand_made_ground_truth(tmp_path, shift):
    coco_gt = _coco(_gt_dataset(), tmp_path)
    predictions = _predictions(coco_gt, shift=shift, with_masks=True)
    reference = _stats(coco_gt, predictions, "pycocotools", ("bbox", "segm"))
    assert _stats(coco_gt, predictions, "faster_coco_eval", ("bbox", "segm")) == reference
    assert reference["bbox"][1] == (1.0 if shift < 0.3 else reference["bbox"][1])


def test_the_same_numbers_on_random_detections_of_all_sizes_with_crowds(tmp_path):
    rng = np.random.default_rng(0)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, 41)]
    annotations = []
    for image in images:
        for _ in range(rng.integers(0, 7)):
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(4, 140), rng.uniform(4, 100)
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"],
                                "category_id": int(rng.integers(1, 4)), "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": int(rng.random() < 0.05)})
    categories = [{"id": i, "name": str(i), "supercategory": "s"} for i in (1, 2, 3)]
    coco_gt = _coco({"images": images, "annotations": annotations, "categories": categories}, tmp_path)
    predictions = {}
    for image in images:
        boxes = []
        for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image["id"])):
            x, y, w, h = (np.array(a["bbox"]) + rng.normal(0, 4, 4)).tolist()
            boxes.append([x, y, x + max(w, 1), y + max(h, 1)])
        boxes += [[x, y, x + 30, y + 20] for x, y in rng.uniform(0, 400, (3, 2)).tolist()]  # false positives
        n = len(boxes)
        predictions[image["id"]] = {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.rand(n),
                                    "labels": torch.from_numpy(rng.integers(1, 4, n))}
    reference = _stats(coco_gt, predictions, "pycocotools")
    assert 0 < reference["bbox"][0] < 1
    # equal up to the last bit of a mean (the C++ sums in another order: 1 ulp seen in one of the 12 numbers)
    assert _stats(coco_gt, predictions, "faster_coco_eval")["bbox"] == pytest.approx(reference["bbox"], rel=1e-12)


def test_a_models_evaluation_is_the_same_with_either_backend(tiny_coco, tiny_args):
    torch.manual_seed(0)
    args = tiny_args(tiny_coco, "--num_classes", "12")
    model, criterion, postprocessors = build_model(args)
    dataset = build_dataset("val", args)
    loader = build_loaders(None, dataset, 4, 0, distributed=False).val
    numbers = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        with contextlib.redirect_stdout(io.StringIO()):
            stats, _ = evaluate(model, criterion, postprocessors, loader, get_coco_api_from_dataset(dataset),
                                torch.device("cpu"), 1000, eval_backend=backend)
        numbers[backend] = stats["coco_eval_bbox"]
    assert len(numbers["pycocotools"]) == 12
    assert numbers["faster_coco_eval"] == numbers["pycocotools"]


def test_empty_detections_and_unknown_backend(tmp_path):
    coco_gt = _coco(_gt_dataset(), tmp_path)
    empty = {i: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)} for i in (3, 5)}
    assert _stats(coco_gt, empty, "faster_coco_eval") == _stats(coco_gt, empty, "pycocotools")
    with pytest.raises(ValueError, match="--eval_backend"):
        CocoEvaluator(coco_gt, ["bbox"], backend="lvis")
    with pytest.raises(SystemExit):  # argparse rejects it on the command line
        with contextlib.redirect_stderr(io.StringIO()):
            cli.get_args_parser().parse_args(["--eval_backend", "lvis"])


def test_results_reach_the_host_in_one_piece_per_key():
    results = [{"scores": torch.rand(5), "labels": torch.arange(5), "boxes": torch.rand(5, 4),
                "masks": torch.rand(k, 3)} for k in (1, 2)]
    assert results_to_cpu(results) is results  # already there: nothing to do
    moved = results_to_cpu(results, "meta")  # (a CPU-only machine's stand-in for another device)
    for before, after in zip(results, moved):
        assert after.keys() == before.keys()
        for key, value in after.items():
            assert value.device.type == "meta" and value.shape == before[key].shape, key
    assert moved[0]["scores"]._base is moved[1]["scores"]._base is not None  # one stacked transfer for the batch
    assert moved[1]["masks"]._base is None  # masks of different sizes: one each


def test_saved_states_of_both_backends_load_in_plot_logs_with_the_same_curves(tmp_path):
    from util.checkpoint import save_checkpoint
    from util.plot_utils import load_evaluation

    coco_gt = _coco(_gt_dataset(), tmp_path)
    loaded = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = CocoEvaluator(coco_gt, ["bbox"], backend=backend)
        evaluator.update(_predictions(coco_gt, shift=0.3))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.accumulate()
        save_checkpoint(evaluator.saved_state("bbox"), tmp_path / f"{backend}.pth")
        loaded[backend] = load_evaluation(tmp_path / f"{backend}.pth")
    np.testing.assert_array_equal(loaded["faster_coco_eval"]["precision"], loaded["pycocotools"]["precision"])
    assert loaded["faster_coco_eval"]["params"].catIds == loaded["pycocotools"]["params"].catIds
