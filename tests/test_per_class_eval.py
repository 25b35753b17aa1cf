"""Per-class COCO numbers (evaluation/per_class.py): known values on hand-made detections, COCOeval's numbers as their
means, the table and eval/per_class.csv, TensorBoard, and the files every architecture's evaluation writes."""
import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator

import cli
from evaluation.confusion import read_confusion_csv
from evaluation.per_class import COLUMNS, evaluator_per_class, format_per_class_table, write_per_class_csv
from evaluation.report import FILES, EvaluationReport
from evaluation.saved_detections import SavedDetections
from evaluation.tide import tide_errors
from models import ARCHITECTURES
from run import run
from tests.conftest import TINY_FLAGS, tiny_architecture_flags
from tests.test_coco_eval import IMAGE_IDS, _gt_dataset
from tests.test_error_analysis import evaluated
from tools.analysis import errors as errors_tool
from util.tensorboard_log import TensorBoardLog

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),
              pytest.mark.usefixtures("one_thread")]

BACKENDS = ("pycocotools", "faster_coco_eval")
# per-class column -> index of COCOeval's 12 numbers that averages it over the categories
STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def hand_made() -> tuple[dict, list[tuple]]:
    """test_coco_eval's four images with one box of category a (id 1) and one of b (id 7) each, all medium, and a
    category c (id 9) without ground truth. Detections: every a box exactly (0.9), the b boxes of the first two
    images exactly (0.8), one c detection (0.5)."""
    dataset = _gt_dataset()
    dataset["categories"].append({"id": 9, "name": "c", "supercategory": "s"})
    detections = []
    for annotation in dataset["annotations"]:
        if annotation["category_id"] == 1 or annotation["image_id"] in IMAGE_IDS[:2]:
            detections.append((annotation["image_id"], annotation["category_id"],
                               0.9 if annotation["category_id"] == 1 else 0.8, annotation["bbox"]))
    detections.append((IMAGE_IDS[0], 9, 0.5, [150, 150, 20, 20]))
    return dataset, detections


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_categorys_numbers_are_known(backend):
    evaluator = evaluated(*hand_made(), backend=backend)
    rows = {row["name"]: row for row in evaluator_per_class(evaluator)}
    # a: every box found first -> 1; b: half its boxes found, at precision 1 -> precision 1 at 51 of the 101 recall
    # points, at every IoU threshold; all boxes are medium; c has no ground truth: -1 throughout
    assert rows["a"] == {"category_id": 1, "name": "a", "AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": -1.0, "APm": 1.0,
                         "APl": -1.0, "AR100": 1.0, "gt_boxes": 4}
    half = pytest.approx(51 / 101, abs=1e-12)
    assert rows["b"] == {"category_id": 7, "name": "b", "AP": half, "AP50": half, "AP75": half, "APs": -1.0,
                         "APm": half, "APl": -1.0, "AR100": 0.5, "gt_boxes": 4}
    assert rows["c"] == {"category_id": 9, "name": "c", **dict.fromkeys(COLUMNS[2:-1], -1.0), "gt_boxes": 0}
    assert evaluator.coco_eval["bbox"].stats[0] == pytest.approx((1 + 51 / 101) / 2, abs=1e-12)


def random_all_sizes(seed: int) -> tuple[dict, list[tuple]]:
    """Boxes of four categories from 4 to 140 px a side (small, medium and large; some crowds) on 40 images, one
    category without ground truth, and detections near them and elsewhere."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, 41)]
    annotations, detections = [], []
    for image in images:
        for _ in range(rng.integers(0, 7)):
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(4, 140), rng.uniform(4, 100)
            category = int(rng.integers(1, 4))
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.05)})
            for _ in range(rng.integers(0, 3)):
                label = int(rng.integers(1, 5)) if rng.random() < 0.2 else category
                detections.append((image["id"], label, float(rng.random()),
                                   [x + rng.normal(0, 0.15 * w), y + rng.normal(0, 0.15 * h), w, h]))
        for _ in range(rng.integers(0, 3)):
            detections.append((image["id"], int(rng.integers(1, 5)), float(rng.random()),
                               [rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(4, 140), rng.uniform(4, 100)]))
    categories = [{"id": i, "name": f"class {i}", "supercategory": "s"} for i in (1, 2, 3, 4)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_cocoevals_numbers_are_the_means_over_the_categories(backend, seed):
    evaluator = evaluated(*random_all_sizes(seed), backend=backend)
    rows = evaluator_per_class(evaluator)
    stats = evaluator.coco_eval["bbox"].stats
    assert rows[3]["gt_boxes"] == 0 and rows[3]["AP"] == -1  # class 4 is only ever predicted
    for column, index in STATS_INDEX.items():
        defined = [row[column] for row in rows if row[column] > -1]
        assert len(defined) == 3, column  # every size has ground truth of every class here
        # the same numbers summed in another order: equal to the last bits or so
        assert np.mean(defined) == pytest.approx(stats[index], rel=1e-12, abs=1e-15), column
    annotations = evaluator.coco_gt.dataset["annotations"]
    assert [row["gt_boxes"] for row in rows] == [sum(1 for a in annotations if a["category_id"] == c
                                                     and not a["iscrowd"]) for c in (1, 2, 3, 4)]


def test_the_table_and_the_csv(tmp_path):
    evaluator = evaluated(*hand_made())
    rows = evaluator_per_class(evaluator)
    table = format_per_class_table(rows).splitlines()
    assert table[1].split() == ["category", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "gt_boxes"]
    assert table[2].split() == ["a", "1.000", "1.000", "1.000", "-1.000", "1.000", "-1.000", "1.000", "4"]
    assert table[-1].split()[:2] == ["(mean)", f"{evaluator.coco_eval['bbox'].stats[0]:.3f}"]
    with write_per_class_csv(rows, tmp_path / "per_class.csv").open() as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(COLUMNS)
    assert [(r["name"], float(r["AP"]), int(r["gt_boxes"])) for r in read] == [(r["name"], r["AP"], r["gt_boxes"])
                                                                             for r in rows]


def test_tensorboard_gets_the_per_class_ap_and_the_confusion_matrix(tmp_path):
    dataset, detections = hand_made()
    dataset["categories"][0]["name"] = "traffic light/a"  # a name that is no legal tag as it is
    report = EvaluationReport.from_evaluator(evaluated(dataset, detections))
    log = TensorBoardLog(tmp_path / "tb")
    log.evaluation_report(3, report)
    log.close()
    reader = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
    reader.Reload()
    assert sorted(reader.Tags()["scalars"]) == ["val_per_class/AP/b", "val_per_class/AP/traffic_light_a"]  # not c
    assert [(e.step, e.value) for e in reader.Scalars("val_per_class/AP/b")] == [(3, pytest.approx(51 / 101))]
    assert reader.Tags()["images"] == ["val_confusion_matrix"]
    assert reader.Images("val_confusion_matrix")[0].width >= 400


def _check_evaluation_files(folder, stats: dict, gt_boxes: int) -> None:
    """The files of one evaluation in ``folder`` agree with its 12 numbers ``stats`` and with each other."""
    assert all((folder / name).is_file() for name in FILES)
    with (folder / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    for column, index in STATS_INDEX.items():
        defined = [float(r[column]) for r in rows if float(r[column]) > -1]
        assert (np.mean(defined) if defined else -1) == pytest.approx(stats[index], abs=1e-12), column
    names, matrix = read_confusion_csv(folder / "confusion_matrix.csv")
    assert names == [r["name"] for r in rows] + ["background"]
    assert matrix[:-1].sum(axis=1).tolist() == [int(r["gt_boxes"]) for r in rows]  # each box once, in its row
    assert sum(int(r["gt_boxes"]) for r in rows) == gt_boxes
    assert tide_errors(SavedDetections.load(folder / "detections.pth")).ap == stats[1]


@pytest.mark.parametrize("meta_arch", sorted(ARCHITECTURES))
def test_every_architectures_evaluation_writes_the_table_and_files(tiny_coco, tmp_path, meta_arch, capsys):
    backends = BACKENDS if meta_arch == "detr" else BACKENDS[:1]
    val = json.loads((tiny_coco / "annotations" / "instances_val2017.json").read_text())
    gt_boxes = sum(1 for a in val["annotations"] if not a.get("iscrowd", 0))
    for backend in backends:
        out = tmp_path / backend
        torch.manual_seed(0)
        args = cli.get_args_parser().parse_args([*tiny_architecture_flags(meta_arch, TINY_FLAGS), "--coco_path",
                                                 str(tiny_coco), "--eval", "--output_dir", str(out),
                                                 "--eval_backend", backend])
        stats = run(args)
        printed = capsys.readouterr().out
        assert "Per-class bbox" in printed and all(c["name"] in printed for c in val["categories"])
        _check_evaluation_files(out / "eval", stats["coco_eval_bbox"], gt_boxes)
        with contextlib.redirect_stdout(io.StringIO()):
            assert errors_tool.main([str(out / "eval.pth")]).ap == stats["coco_eval_bbox"][1]  # --eval's state file


def test_training_evaluations_write_them_beside_the_saved_state(tiny_coco, tmp_path, tiny_args):
    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        run(tiny_args(tiny_coco, "--epochs", "1", "--output_dir", str(out)))
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert set(log[0]) >= {"test_coco_eval_bbox", "train_loss"}
    assert not any("per_class" in key or "confusion" in key for key in log[0])  # log.txt keys as before
    val = json.loads((tiny_coco / "annotations" / "instances_val2017.json").read_text())
    _check_evaluation_files(out / "eval", log[0]["test_coco_eval_bbox"],
                            sum(1 for a in val["annotations"] if not a.get("iscrowd", 0)))
    assert (out / "eval" / "000.pth").is_file() and (out / "eval" / "000_detections.pth").is_file()  # epoch 0
    with contextlib.redirect_stdout(io.StringIO()):
        assert errors_tool.main([str(out / "eval" / "000.pth")]).ap == log[0]["test_coco_eval_bbox"][1]
