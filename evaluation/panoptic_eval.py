"""Panoptic quality (PQ, SQ, RQ) of COCO-panoptic-format predictions, without the COCO panoptic API.

Panoptic quality is defined by Kirillov et al., "Panoptic Segmentation", CVPR 2019 (https://arxiv.org/abs/1801.00868);
the rules below are those of the COCO panoptic evaluation, ``panopticapi/evaluation.py``
(https://github.com/cocodataset/panopticapi), which is not installable from a package registry. Per image:

- Ground truth and prediction are ``[H, W]`` maps of segment ids (a PNG stores ``id = R + 256·G + 256²·B``) plus a
  ``segments_info`` list of ``{"id", "category_id", "iscrowd" (gt), "area" (gt)}``. Ground truth id 0 is VOID.
  A prediction pixel whose id is 0 and not listed is unlabelled; a listed id 0 is an ordinary segment (the official
  DETR post-processor numbers segments from 0).
- Prediction checks (errors): a non-zero id in the PNG that is not listed; a listed segment whose category is not
  among the categories; a listed segment absent from the PNG.
- A prediction's area is its pixel count in the PNG; a ground truth segment's area is its ``"area"`` entry when given
  (as panopticapi, which reads it from the JSON), else its pixel count.
- Matching: a non-crowd gt segment and a predicted segment of the same category match (true positive, TP) when
  ``IoU > 0.5``, with ``IoU = intersection / (union - prediction pixels on VOID)``. Segments of one map do not overlap,
  so a segment matches at most once. Crowd gt segments (``iscrowd=1``) are never matched.
- An unmatched non-crowd gt segment is a false negative (FN). An unmatched prediction is a false positive (FP) unless
  more than half of its area lies on VOID or on the crowd region of its own category (as panopticapi: the last listed
  crowd segment of that category; COCO has at most one per category and image).

Per category, over all images: ``PQ = ΣIoU(TP) / (TP + FP/2 + FN/2) = SQ·RQ``, ``SQ = ΣIoU(TP) / TP`` (0 without TP),
``RQ = TP / (TP + FP/2 + FN/2)``. "All", "Things" and "Stuff" (by the category's ``isthing``) average the categories
with ``TP + FP + FN > 0``; ``n`` is how many. Values are fractions in [0, 1] (panopticapi's printout shows ×100).
Deviations from panopticapi, none of which changes a number on valid input: clear ``ValueError`` messages instead of
``KeyError``; a missing ``iscrowd`` means 0; predictions for images absent from the ground truth (panopticapi ignores
them) and duplicate image ids are errors; an average over no category is 0 with ``n = 0`` instead of a
ZeroDivisionError; images are evaluated in one process.

Usage in an evaluation loop, as in the official DETR's engine::

    evaluator = PanopticEvaluator(ann_file, ann_folder, output_dir="panoptic_eval")
    for ...: evaluator.update([{"png_string": bytes, "segments_info": [...], "image_id": 42, "file_name": "..."}])
    evaluator.synchronize_between_processes()
    results = evaluator.summarize()  # {"All": {"pq", "sq", "rq", "n"}, "Things": ..., "Stuff": ..., "per_class": ...}
"""
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from util.distributed import all_gather, is_main_process
from util.panoptic_png import read_panoptic_png

PathLike = str | os.PathLike
OFFSET = 256 * 256 * 256  # segment ids are < 256³, so gt_id * OFFSET + pred_id identifies a (gt, pred) pair
VOID = 0
GROUPS = (("All", None), ("Things", True), ("Stuff", False))


@dataclass
class PQStatCat:
    """Sums for one category: IoU of the true positives, and TP / FP / FN counts."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: "PQStatCat") -> "PQStatCat":
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-category ``PQStatCat`` sums, accumulated over images with ``+=``; ``stat[category_id]`` reads one."""

    def __init__(self):
        self.pq_per_cat: defaultdict[int, PQStatCat] = defaultdict(PQStatCat)

    def __getitem__(self, category_id: int) -> PQStatCat:
        return self.pq_per_cat[category_id]

    def __iadd__(self, other: "PQStat") -> "PQStat":
        for category_id, stat in other.pq_per_cat.items():
            self.pq_per_cat[category_id] += stat
        return self

    def pq_average(self, categories: Mapping | Iterable[dict], isthing: bool | None) -> tuple[dict, dict]:
        """Average over the categories (``{id: {"isthing", ...}}`` or a COCO ``categories`` list) that have
        ``isthing`` (None: all of them) and ``TP + FP + FN > 0``.

        Returns ``({"pq", "sq", "rq", "n"}, {category_id: {"pq", "sq", "rq"}})``; a category without TP, FP or FN
        gets zeros in the second dict and does not count in the average.
        """
        pq, sq, rq, n = 0.0, 0.0, 0.0, 0
        per_class = {}
        for category_id, info in _category_map(categories).items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            stat = self.pq_per_cat.get(category_id, PQStatCat())
            if stat.tp + stat.fp + stat.fn == 0:
                per_class[category_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
            class_pq, class_rq = stat.iou / denominator, stat.tp / denominator
            class_sq = stat.iou / stat.tp if stat.tp else 0.0
            per_class[category_id] = {"pq": class_pq, "sq": class_sq, "rq": class_rq}
            pq, sq, rq = pq + class_pq, sq + class_sq, rq + class_rq
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def results(self, categories: Mapping | Iterable[dict]) -> dict:
        """``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id: {"pq", "sq", "rq"}}}``,
        the dict ``pq_compute`` returns."""
        results = {}
        for name, isthing in GROUPS:
            results[name], per_class = self.pq_average(categories, isthing)
            if name == "All":
                results["per_class"] = per_class
        return results


def _category_map(categories: Mapping | Iterable[dict]) -> dict[int, dict]:
    """A COCO ``categories`` list, or a dict keyed by id, -> ``{category_id: category dict}``."""
    if isinstance(categories, Mapping):
        return {int(k): v for k, v in categories.items()}
    return {int(c["id"]): c for c in categories}


def _id_map(ids, what: str, image: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{image}: the {what} must be an [H, W] integer id map, got {ids.dtype} of shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise ValueError(f"{image}: {what} ids must lie in [0, 256**3), got range [{ids.min()}, {ids.max()}]")
    return ids.astype(np.int64, copy=False)


def pq_stat_single(gt_ids: np.ndarray | torch.Tensor, gt_segments: Iterable[dict],
                   pred_ids: np.ndarray | torch.Tensor, pred_segments: Iterable[dict],
                   categories: Mapping | Iterable[dict], image: str = "the image") -> PQStat:
    """TP / FP / FN and IoU sums of one image, by the rules in the module docstring.

    ``gt_ids`` and ``pred_ids`` are ``[H, W]`` integer segment-id maps (numpy or CPU tensors) of the same shape;
    ``gt_segments`` / ``pred_segments`` their ``segments_info`` lists; ``categories`` a COCO ``categories`` list or a
    dict keyed by category id. ``image`` names the image in error messages (e.g. ``"image 42 (pred/42.png)"``).
    """
    gt_ids, pred_ids = _id_map(gt_ids, "ground truth", image), _id_map(pred_ids, "prediction", image)
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(f"{image}: the ground truth is {gt_ids.shape[0]}x{gt_ids.shape[1]} pixels but the prediction "
                         f"{pred_ids.shape[0]}x{pred_ids.shape[1]}")
    categories = _category_map(categories)
    gt_segms = {int(s["id"]): s for s in gt_segments}
    pred_segms = {int(s["id"]): s for s in pred_segments}
    pred_category = {}
    for segment_id, segment in pred_segms.items():
        pred_category[segment_id] = int(segment["category_id"])
        if pred_category[segment_id] not in categories:
            raise ValueError(f"{image}: predicted segment {segment_id} has category_id {pred_category[segment_id]}, "
                             f"which is not among the categories {sorted(categories)}")

    # Pixel counts of every (gt id, pred id) pair, in one pass over the pixels.
    pairs, counts = np.unique(gt_ids.ravel() * OFFSET + pred_ids.ravel(), return_counts=True)
    intersection: dict[tuple[int, int], int] = {}
    pred_area: defaultdict[int, int] = defaultdict(int)
    gt_pixels: defaultdict[int, int] = defaultdict(int)
    for (gt_label, pred_label), count in zip(zip((pairs // OFFSET).tolist(), (pairs % OFFSET).tolist()),
                                             counts.tolist()):
        intersection[gt_label, pred_label] = count
        pred_area[pred_label] += count
        gt_pixels[gt_label] += count

    unknown = sorted(label for label in pred_area if label not in pred_segms and label != VOID)
    if unknown:
        raise ValueError(f"{image}: segment ids {unknown} are in the prediction PNG but not in its segments_info")
    absent = sorted(set(pred_segms) - set(pred_area))
    if absent:
        raise ValueError(f"{image}: segment ids {absent} are in the prediction's segments_info but not in its PNG")

    stat = PQStat()
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), inter in intersection.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        gt_segment = gt_segms[gt_label]
        if gt_segment.get("iscrowd", 0) == 1 or int(gt_segment["category_id"]) != pred_category[pred_label]:
            continue
        gt_area = gt_segment.get("area", gt_pixels.get(gt_label, 0))
        union = pred_area[pred_label] + gt_area - inter - intersection.get((VOID, pred_label), 0)
        iou = inter / union
        if iou > 0.5:
            stat[pred_category[pred_label]].tp += 1
            stat[pred_category[pred_label]].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_label_of_category = {}
    for gt_label, gt_segment in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_segment.get("iscrowd", 0) == 1:
            crowd_label_of_category[int(gt_segment["category_id"])] = gt_label
            continue
        stat[int(gt_segment["category_id"])].fn += 1

    for pred_label, category_id in pred_category.items():
        if pred_label in pred_matched:
            continue
        ignored = intersection.get((VOID, pred_label), 0)
        if category_id in crowd_label_of_category:
            ignored += intersection.get((crowd_label_of_category[category_id], pred_label), 0)
        if ignored / pred_area[pred_label] > 0.5:
            continue
        stat[category_id].fp += 1
    return stat


def _default_folder(json_file: PathLike) -> str:
    json_file = os.fspath(json_file)
    if not json_file.endswith(".json"):
        raise ValueError(f"cannot derive the PNG folder from {json_file!r} (no .json suffix); pass the folder")
    return json_file[: -len(".json")]


def pq_compute(gt_json_file: PathLike, pred_json_file: PathLike, gt_folder: PathLike | None = None,
               pred_folder: PathLike | None = None) -> dict:
    """PQ / SQ / RQ of the predictions in ``pred_json_file`` (``{"annotations": [...]}``, PNGs in ``pred_folder``)
    against the COCO panoptic ground truth ``gt_json_file`` (with ``categories``, PNGs in ``gt_folder``).

    The folders default, as in panopticapi, to the JSON path without ``.json``. Every ground truth image needs a
    prediction and every prediction a ground truth image. Returns ``PQStat.results``: fractions in [0, 1].
    """
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    gt_folder = _default_folder(gt_json_file) if gt_folder is None else gt_folder
    pred_folder = _default_folder(pred_json_file) if pred_folder is None else pred_folder
    categories = _category_map(gt_json["categories"])

    pred_annotations = {}
    for annotation in pred_json["annotations"]:
        image_id = annotation["image_id"]
        if image_id in pred_annotations:
            raise ValueError(f"{pred_json_file}: more than one prediction for the image with id {image_id}")
        pred_annotations[image_id] = annotation
    gt_image_ids = {annotation["image_id"] for annotation in gt_json["annotations"]}
    extra = sorted(set(pred_annotations) - gt_image_ids)
    if extra:
        raise ValueError(f"{pred_json_file}: predictions for images not in the ground truth {gt_json_file}: "
                         f"ids {extra}")

    stat = PQStat()
    for gt_annotation in gt_json["annotations"]:
        image_id = gt_annotation["image_id"]
        if image_id not in pred_annotations:
            raise ValueError(f"{pred_json_file}: no prediction for the image with id {image_id}")
        pred_annotation = pred_annotations[image_id]
        pred_file = os.path.join(pred_folder, pred_annotation["file_name"])
        gt_ids = read_panoptic_png(os.path.join(gt_folder, gt_annotation["file_name"]))
        pred_ids = read_panoptic_png(pred_file)
        stat += pq_stat_single(gt_ids, gt_annotation["segments_info"], pred_ids, pred_annotation["segments_info"],
                               categories, image=f"image {image_id} ({pred_file})")
    return stat.results(categories)


def format_pq_table(results: dict) -> str:
    """The summary panopticapi prints: PQ, SQ, RQ (×100) and the number of categories for All / Things / Stuff."""
    lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"), "-" * 38]
    for name, _ in GROUPS:
        r = results[name]
        lines.append(f"{name:10s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']:5d}")
    return "\n".join(lines)


def _plain(value):
    """Tensors, numpy arrays and numpy scalars (also nested in dicts / lists) -> plain JSON types."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class PanopticEvaluator:
    """Writes the predicted PNGs to ``output_dir`` as they come, gathers the annotations across processes and runs
    ``pq_compute`` against the ground truth ``ann_file`` (PNGs in ``ann_folder``).

    Every process writes its PNGs into ``output_dir``, which the main process reads: with several nodes it must be on
    a shared file system (as in the official DETR). An image is evaluated once even if several processes (or several
    ``update`` calls) saw it: the first prediction is kept, and if two processes wrote different PNGs for it, the one
    whose PNG is on disk.
    """

    def __init__(self, ann_file: PathLike, ann_folder: PathLike, output_dir: PathLike = "panoptic_eval"):
        self.gt_json = ann_file
        self.gt_folder = ann_folder
        self.output_dir = output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.predictions: list[dict] = []
        self._digests: dict[int, str] = {}  # image id -> sha1 of the PNG this process wrote for it

    def update(self, predictions: Iterable[dict]) -> None:
        """Add ``[{"png_string": PNG bytes, "segments_info": [...], "image_id", "file_name"}, ...]``.

        ``png_string`` is popped from each dict and written to ``output_dir/file_name``; ``file_name`` defaults to
        the COCO ``{image_id:012d}.png``. Tensors and numpy values in the rest are converted to plain JSON types.
        """
        for prediction in predictions:
            png = prediction.pop("png_string")
            annotation = _plain(prediction)
            image_id = annotation["image_id"] = int(annotation["image_id"])
            annotation.setdefault("file_name", f"{image_id:012d}.png")
            if image_id in self._digests:
                continue
            path = os.path.join(self.output_dir, annotation["file_name"])
            with open(f"{path}.{os.getpid()}.tmp", "wb") as f:  # whole files only: processes may share an image
                f.write(png)
            os.replace(f"{path}.{os.getpid()}.tmp", path)
            self._digests[image_id] = hashlib.sha1(png).hexdigest()
            self.predictions.append(annotation)

    def synchronize_between_processes(self) -> None:
        """Merge the annotations of every process, once per image id (all processes must call this)."""
        merged: dict[int, dict] = {}
        digests: dict[int, str] = {}
        conflicts: defaultdict[int, dict[str, dict]] = defaultdict(dict)
        for rank_predictions, rank_digests in all_gather((self.predictions, self._digests)):
            for annotation in rank_predictions:
                image_id, digest = annotation["image_id"], rank_digests[annotation["image_id"]]
                if image_id not in merged:
                    merged[image_id], digests[image_id] = annotation, digest
                elif digest != digests[image_id]:
                    conflicts[image_id].setdefault(digests[image_id], merged[image_id])
                    conflicts[image_id].setdefault(digest, annotation)
        # Processes predicted different PNGs for one image and the last writer's file is on disk: keep its annotation.
        for image_id, candidates in conflicts.items():
            with open(os.path.join(self.output_dir, merged[image_id]["file_name"]), "rb") as f:
                on_disk = hashlib.sha1(f.read()).hexdigest()
            if on_disk not in candidates:
                raise RuntimeError(f"the PNG of image {image_id} in {self.output_dir} matches no process's prediction")
            merged[image_id], digests[image_id] = candidates[on_disk], on_disk
        self.predictions, self._digests = list(merged.values()), digests

    def summarize(self) -> dict | None:
        """On the main process: write ``output_dir/predictions.json`` and return ``pq_compute``'s results (fractions;
        ``format_pq_table`` prints them); None on the other processes."""
        if not is_main_process():
            return None
        predictions_json = os.path.join(self.output_dir, "predictions.json")
        with open(predictions_json, "w") as f:
            json.dump({"annotations": self.predictions}, f)
        return pq_compute(self.gt_json, predictions_json, gt_folder=self.gt_folder, pred_folder=self.output_dir)
