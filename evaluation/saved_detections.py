"""The boxes of one evaluation, detections and ground truth, as COCOeval saw them: the input of the confusion matrix
(evaluation/confusion.py) and of the TIDE error breakdown (evaluation/tide.py, ``tools/analysis/errors.py``).

Every evaluation with an output folder saves them as ``eval/detections.pth`` beside ``eval/latest.pth`` (COCOeval's
accumulated state, which holds no single box); ``eval/NNN_detections.pth`` goes with each ``eval/NNN.pth``. The file
is a ``torch.save`` of plain tensors, lists and strings (it loads with ``weights_only=True``)::

    image_ids      [I] int64             the evaluated images, sorted (COCOeval's imgIds)
    detections     image_id [N] int64, category_id [N] int64, score [N] float32,
                   bbox [N, 4] float32   x, y, w, h in pixels of the original image: exactly the results COCOeval
                                         was given (the model's boxes and scores are float32), in that order
    ground_truth   image_id [G] int64, category_id [G] int64, bbox [G, 4] float64 (x, y, w, h px), iscrowd [G] bool:
                   the annotations of those images in the evaluated annotation file
    categories     id [K] int64 (sorted), name: K strings (the annotation file's ``categories``)

About 26 bytes a detection: 13 MB for COCO val2017 at 100 detections per image.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch

from util.user_error import UserError

FILE_NAME = "detections.pth"


@dataclass
class SavedDetections:
    """Detections and ground truth of one evaluation as numpy arrays (see the module docstring for the fields)."""

    image_ids: np.ndarray
    detections: dict[str, np.ndarray]
    ground_truth: dict[str, np.ndarray]
    category_ids: list[int]
    category_names: list[str]

    @classmethod
    def from_evaluator(cls, coco_evaluator, iou_type: str = "bbox") -> "SavedDetections":
        """The detections a CocoEvaluator (evaluation/coco_eval.py, after ``synchronize_between_processes``) holds
        for ``iou_type`` and the ground truth of its images."""
        results = [r for per_image in coco_evaluator.results[iou_type].values() for r in per_image]
        image_ids = np.array(sorted(coco_evaluator.img_ids), dtype=np.int64)
        detections = {
            "image_id": np.array([r["image_id"] for r in results], dtype=np.int64),
            "category_id": np.array([r["category_id"] for r in results], dtype=np.int64),
            "score": np.array([r["score"] for r in results], dtype=np.float32),
            "bbox": np.array([r["bbox"] for r in results], dtype=np.float32).reshape(-1, 4),
        }
        dataset = coco_evaluator.coco_gt.dataset
        evaluated = set(image_ids.tolist())
        annotations = [a for a in dataset.get("annotations", []) if a["image_id"] in evaluated]
        ground_truth = {
            "image_id": np.array([a["image_id"] for a in annotations], dtype=np.int64),
            "category_id": np.array([a["category_id"] for a in annotations], dtype=np.int64),
            "bbox": np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4),
            "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool),
        }
        categories = sorted(dataset.get("categories", []), key=lambda c: c["id"])
        return cls(image_ids, detections, ground_truth, [int(c["id"]) for c in categories],
                   [str(c.get("name", c["id"])) for c in categories])

    def state(self) -> dict:
        """What :meth:`save` writes: tensors, lists and strings only."""
        return {"image_ids": torch.from_numpy(self.image_ids),
                "detections": {k: torch.from_numpy(v) for k, v in self.detections.items()},
                "ground_truth": {k: torch.from_numpy(v) for k, v in self.ground_truth.items()},
                "categories": {"id": torch.tensor(self.category_ids, dtype=torch.int64),
                               "name": list(self.category_names)}}

    @classmethod
    def load(cls, path: str | Path) -> "SavedDetections":
        """Read a file :meth:`state` was saved to; a missing or foreign file is a one-line UserError naming it."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such file (an evaluation's eval/{FILE_NAME})")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for files it cannot read
            raise UserError(f"{path}: not a saved evaluation ({type(exc).__name__})") from exc
        if not isinstance(data, dict) or not {"detections", "ground_truth", "image_ids", "categories"} <= set(data):
            raise UserError(f"{path}: not an evaluation's {FILE_NAME} (no detections and ground truth in it)")
        return cls(data["image_ids"].numpy(), {k: v.numpy() for k, v in data["detections"].items()},
                   {k: v.numpy() for k, v in data["ground_truth"].items()}, data["categories"]["id"].tolist(),
                   list(data["categories"]["name"]))

    def by_image(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(image id, indices of its detections, indices of its ground truth) for each evaluated image, in
        ``image_ids`` order; indices keep the saved order."""
        det_order = np.argsort(self.detections["image_id"], kind="stable")
        gt_order = np.argsort(self.ground_truth["image_id"], kind="stable")
        det_ids, gt_ids = self.detections["image_id"][det_order], self.ground_truth["image_id"][gt_order]
        det_bounds = np.searchsorted(det_ids, self.image_ids, side="left"), np.searchsorted(det_ids, self.image_ids,
                                                                                              side="right")
        gt_bounds = np.searchsorted(gt_ids, self.image_ids, side="left"), np.searchsorted(gt_ids, self.image_ids,
                                                                                           side="right")
        return [(int(image_id), det_order[det_bounds[0][i]:det_bounds[1][i]], gt_order[gt_bounds[0][i]:gt_bounds[1][i]])
                for i, image_id in enumerate(self.image_ids)]


def box_iou(boxes: np.ndarray, ground_truth: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCO's box IoU ``[N, M]`` of boxes ``[N, 4]`` and ground truth ``[M, 4]`` (x, y, w, h px), pycocotools'
    own: for a crowd region (``crowd`` ``[M]`` True) the intersection over the box's area instead."""
    if len(boxes) == 0 or len(ground_truth) == 0:
        return np.zeros((len(boxes), len(ground_truth)))
    return np.asarray(mask_util.iou(np.asarray(boxes, dtype=np.float64), np.asarray(ground_truth, dtype=np.float64),
                                    np.asarray(crowd, dtype=np.uint8).tolist())).reshape(len(boxes), len(ground_truth))
