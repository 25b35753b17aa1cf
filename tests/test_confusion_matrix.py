"""The confusion matrix (evaluation/confusion.py) on hand-made detections where every cell is known: rows ground
truth then background, columns prediction then background; greedy by score, highest IoU of any class, crowds
ignored."""
import numpy as np
import pytest
from PIL import Image

import cli
from evaluation.confusion import (
    confusion_matrix,
    labels,
    read_confusion_csv,
    write_confusion_csv,
    write_confusion_png,
)
from evaluation.saved_detections import SavedDetections
from tests.test_error_analysis import A, B, evaluated, ground_truth

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

BOXES = [(1, A, [0, 0, 50, 50]), (1, B, [100, 100, 50, 50]), (1, A, [0, 140, 60, 60], 1),  # A1, B1, a crowd of a
         (2, A, [10, 10, 40, 40]), (2, B, [60, 60, 40, 40]),                                 # A2 (missed), B2
         (3, A, [0, 0, 100, 100]), (3, B, [20, 0, 100, 100])]                                # A3, B3 overlapping
# image 4 has no ground truth
DETECTIONS = [
    (1, A, 0.9, [0, 0, 50, 50]),        # takes A1: [a, a]
    (1, B, 0.8, [5, 0, 50, 50]),        # IoU 0.82 with A1, taken already; nothing else: [background, b]
    (1, A, 0.7, [100, 100, 50, 50]),    # takes B1 (any class): [b, a]
    (1, B, 0.6, [10, 150, 30, 30]),     # inside the crowd region: left out
    (1, B, 0.3, [150, 0, 40, 40]),      # on nothing, below 0.5: [background, b] only at threshold 0.2
    (2, B, 0.95, [60, 60, 40, 40]),     # takes B2: [b, b]
    (2, A, 0.4, [10, 10, 40, 40]),      # on A2, below 0.5: A2 is [a, background], at threshold 0.2 [a, a]
    (3, A, 0.9, [15, 0, 100, 100]),     # IoU 0.74 with A3 but 0.90 with B3: takes B3, [b, a]
    (3, A, 0.85, [0, 0, 100, 100]),     # takes A3: [a, a]
    (4, A, 0.99, [0, 0, 30, 30]),       # an image without objects: [background, a]
    (4, 5, 0.9, [50, 50, 30, 30]),      # category 5 is not in the dataset: left out, as COCOeval does
]
#                        predicted: a  b  background
AT_HALF = np.array([[2, 0, 1],    # ground truth a
                    [2, 1, 0],    # ground truth b
                    [1, 1, 0]])   # background
AT_ONE_FIFTH = np.array([[3, 0, 0],
                         [2, 1, 0],
                         [1, 2, 0]])


@pytest.fixture(scope="module")
def saved() -> SavedDetections:
    return SavedDetections.from_evaluator(evaluated(ground_truth(BOXES, 4), DETECTIONS))


def test_every_cell_is_known(saved):
    assert labels(saved) == ["a", "b", "background"]
    assert confusion_matrix(saved, 0.5).tolist() == AT_HALF.tolist()
    assert confusion_matrix(saved, 0.2).tolist() == AT_ONE_FIFTH.tolist()
    # every non-crowd ground-truth box lands in its row once, whatever the threshold
    for threshold in (0.0, 0.5, 0.96, 1.0):
        assert confusion_matrix(saved, threshold)[:2].sum(axis=1).tolist() == [3, 3]
    assert confusion_matrix(saved, 1.0).tolist() == [[0, 0, 3], [0, 0, 3], [0, 0, 0]]


def test_a_detection_takes_a_box_once_and_the_best_scored_first():
    # two detections of a on one box of a: the 0.9 one takes it, the 0.8 one is background, whatever their order
    boxes = [(1, A, [10, 10, 50, 50])]
    for detections in ([(1, A, 0.8, [12, 10, 50, 50]), (1, A, 0.9, [10, 10, 50, 50])],
                       [(1, A, 0.9, [10, 10, 50, 50]), (1, A, 0.8, [12, 10, 50, 50])]):
        saved = SavedDetections.from_evaluator(evaluated(ground_truth(boxes, 1), detections))
        assert confusion_matrix(saved).tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]


def test_files_hold_the_matrix_with_named_rows_and_columns(saved, tmp_path):
    names = labels(saved)
    path = write_confusion_csv(AT_HALF, names, tmp_path / "confusion_matrix.csv")
    assert path.read_text().splitlines() == ["ground_truth\\predicted,a,b,background", "a,2,0,1", "b,2,1,0",
                                             "background,1,1,0"]
    assert read_confusion_csv(path) == (names, pytest.approx(AT_HALF))
    png = write_confusion_png(AT_HALF, names, 0.5, tmp_path / "confusion_matrix.png")
    with Image.open(png) as picture:
        assert picture.width >= 400 and picture.height >= 300


def test_the_threshold_flag_is_checked():
    parser = cli.get_args_parser()
    assert parser.parse_args([]).confusion_threshold == 0.5
    for value in ("1.5", "-0.1", "nan"):
        with pytest.raises(ValueError, match=r"--confusion_threshold must be in \[0, 1\]"):
            cli.check_args(parser.parse_args(["--confusion_threshold", value]))
