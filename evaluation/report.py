"""What an evaluation adds to COCO's 12 numbers, on the main process: the per-class table, the confusion matrix and
the boxes behind them, and the files they go to (``OUTPUT_DIR/eval/``)::

    per_class.csv          evaluation/per_class.py
    confusion_matrix.csv   evaluation/confusion.py (rows: ground truth, columns: prediction)
    confusion_matrix.png
    detections.pth         evaluation/saved_detections.py: the detections and ground truth, for
                           tools/analysis/errors.py (TIDE) and later analyses
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.confusion import (
    confusion_figure,
    confusion_matrix,
    figure_pixels,
    labels,
    write_confusion_csv,
    write_confusion_png,
)
from evaluation.per_class import evaluator_per_class, write_per_class_csv
from evaluation.saved_detections import FILE_NAME, SavedDetections
from util.checkpoint import save_checkpoint

FILES = ("per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", FILE_NAME)


@dataclass
class EvaluationReport:
    """``per_class``: rows of evaluation/per_class.py (box AP per category); ``confusion``: counts ``[K + 1, K + 1]``
    (rows ground-truth class then background, columns predicted class then background) at ``confusion_threshold``;
    ``labels``: its K category names and ``background``; ``saved``: the detections and ground truth."""

    per_class: list[dict]
    confusion: np.ndarray
    labels: list[str]
    confusion_threshold: float
    saved: SavedDetections

    @classmethod
    def from_evaluator(cls, coco_evaluator, confusion_threshold: float = 0.5) -> "EvaluationReport":
        """The report of a CocoEvaluator after ``accumulate`` (its box evaluation)."""
        saved = SavedDetections.from_evaluator(coco_evaluator, "bbox")
        return cls(evaluator_per_class(coco_evaluator, "bbox"), confusion_matrix(saved, confusion_threshold),
                   labels(saved), confusion_threshold, saved)

    def confusion_pixels(self) -> np.ndarray:
        """The confusion matrix's picture as RGB pixels ``[H, W, 3]`` uint8 (as ``confusion_matrix.png``)."""
        return figure_pixels(confusion_figure(self.confusion, self.labels, self.confusion_threshold))

    def write(self, folder: Path) -> list[Path]:
        """Write FILES into ``folder``; returns their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.saved.state(), folder / FILE_NAME)
        return [write_per_class_csv(self.per_class, folder / "per_class.csv"),
                write_confusion_csv(self.confusion, self.labels, folder / "confusion_matrix.csv"),
                write_confusion_png(self.confusion, self.labels, self.confusion_threshold,
                                    folder / "confusion_matrix.png"),
                folder / FILE_NAME]
