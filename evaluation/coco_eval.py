"""COCO-style evaluation (pycocotools) of DETR predictions, usable across distributed processes.

Usage, as in the official DETR's engine::

    evaluator = CocoEvaluator(coco_gt, ["bbox"])
    for ...: evaluator.update({image_id: {"scores": [K], "labels": [K], "boxes": [K, 4] abs xyxy px}, ...})
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    evaluator.coco_eval["bbox"].stats  # the 12 standard numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, ...)

Unlike the official file, which re-implements pycocotools' per-image evaluation to gather its intermediate arrays,
this gathers the COCO-format results themselves and runs pycocotools' ``evaluate`` once in ``accumulate``.

``backend="faster_coco_eval"`` (``--eval_backend``) runs the same evaluation in the C++ of the faster-coco-eval
package instead: the same 12 numbers (tests/test_eval_backend.py), in a fraction of the time on large validation sets
(benchmarks/coco_eval_speed.py).
"""
import contextlib
import copy
import io
from typing import Iterable

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from util.distributed import all_gather

SUPPORTED_IOU_TYPES = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster_coco_eval")


def _backend(name: str) -> tuple[type, type]:
    """(COCO class, COCOeval class) of the evaluation backend ``name``."""
    if name == "pycocotools":
        return COCO, COCOeval
    if name == "faster_coco_eval":
        try:
            import faster_coco_eval
        except ImportError as exc:
            raise ValueError("--eval_backend faster_coco_eval needs the faster-coco-eval package (pip install "
                             "faster-coco-eval, pinned in requirements.txt)") from exc
        return faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
    raise ValueError(f"--eval_backend must be one of {BACKENDS}, got {name!r}")


def results_to_cpu(results: list[dict], device: torch.device | str = "cpu") -> list[dict]:
    """A batch's post-processed predictions (per image dicts of tensors) on the CPU (or ``device``), with one
    transfer per key for the whole batch where the images' tensors have the same shape (each image's otherwise)."""
    device = torch.device(device)
    if all(v.device == device for r in results for v in r.values() if torch.is_tensor(v)):
        return results
    moved = [dict(r) for r in results]
    for key, first in results[0].items():
        values = [r.get(key) for r in results]
        if torch.is_tensor(first) and all(torch.is_tensor(v) and v.shape == first.shape for v in values):
            for r, v in zip(moved, torch.stack(values).to(device).unbind(0)):
                r[key] = v
        else:
            for r in moved:
                if torch.is_tensor(r.get(key)):
                    r[key] = r[key].to(device)
    return moved


def convert_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) -> COCO's (x, y, w, h), ``[N, 4]``."""
    x0, y0, x1, y1 = boxes.unbind(1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=1)


def _quiet():
    """Swallow pycocotools' progress prints ("Loading and preparing results...", "DONE (t=0.01s)")."""
    return contextlib.redirect_stdout(io.StringIO())


class CocoEvaluator:
    """Collects predictions image by image and evaluates them against ``coco_gt`` for each of ``iou_types``.

    ``coco_eval[iou_type]`` is a pycocotools ``COCOeval`` (with ``backend="faster_coco_eval"``, faster-coco-eval's
    ``COCOeval_faster``); after ``accumulate`` it holds ``.eval`` and after ``summarize`` ``.stats`` (12 floats, -1
    where a number is undefined, e.g. no ground truth of that size).
    An image is evaluated once even if several processes (or several ``update`` calls) saw it; the first
    predictions received for it are kept.
    """

    def __init__(self, coco_gt: COCO, iou_types: Iterable[str], backend: str = "pycocotools"):
        iou_types = list(iou_types)
        unknown = [t for t in iou_types if t not in SUPPORTED_IOU_TYPES]
        if unknown:
            raise ValueError(f"unsupported iou types {unknown}; supported: {list(SUPPORTED_IOU_TYPES)}")
        coco_class, eval_class = _backend(backend)
        self.backend = backend
        self.iou_types = iou_types
        if backend == "pycocotools":
            self.coco_gt = copy.deepcopy(coco_gt)
            self.coco_eval = {t: COCOeval(self.coco_gt, iouType=t) for t in iou_types}
        else:
            with _quiet():
                self.coco_gt = coco_class(copy.deepcopy(coco_gt.dataset))
            self.coco_eval = {t: eval_class(self.coco_gt, iouType=t, print_function=print) for t in iou_types}
        self.img_ids: list[int] = []
        self._seen: set[int] = set()
        # iou_type -> {image_id: [COCO result dicts]}
        self.results: dict[str, dict[int, list]] = {t: {} for t in iou_types}

    def update(self, predictions: dict) -> None:
        """Add ``{image_id: {"scores": [K], "labels": [K], "boxes": [K, 4]}}`` for some images.

        Boxes are absolute (x0, y0, x1, y1) in pixels of the original image; labels are category ids. For "segm",
        each prediction also needs ``"masks"`` ``[K, 1, H, W]`` or ``[K, H, W]`` (probabilities or binary; > 0.5
        counts as foreground) at the original image size. An image with K = 0 still counts as evaluated.
        """
        for image_id, prediction in predictions.items():
            image_id = int(image_id)
            if image_id not in self._seen:
                self._seen.add(image_id)
                self.img_ids.append(image_id)
            for iou_type in self.iou_types:
                if image_id in self.results[iou_type]:
                    continue
                if iou_type == "bbox":
                    self.results[iou_type][image_id] = self._bbox_results(image_id, prediction)
                else:
                    self.results[iou_type][image_id] = self._segm_results(image_id, prediction)

    @staticmethod
    def _bbox_results(image_id: int, prediction: dict) -> list[dict]:
        boxes = convert_to_xywh(torch.as_tensor(prediction["boxes"]).reshape(-1, 4)).tolist()
        scores = torch.as_tensor(prediction["scores"]).tolist()
        labels = torch.as_tensor(prediction["labels"]).tolist()
        return [{"image_id": image_id, "category_id": int(lab), "bbox": box, "score": float(s)}
                for box, s, lab in zip(boxes, scores, labels)]

    @staticmethod
    def _segm_results(image_id: int, prediction: dict) -> list[dict]:
        if "masks" not in prediction:
            if len(prediction["scores"]) == 0:
                return []
            raise ValueError(f"'segm' evaluation needs 'masks' in the predictions (image {image_id} has keys "
                             f"{sorted(prediction)})")
        masks = torch.as_tensor(prediction["masks"])
        if masks.ndim == 4:
            masks = masks[:, 0]
        masks = (masks > 0.5).cpu().numpy().astype(np.uint8)
        scores = torch.as_tensor(prediction["scores"]).tolist()
        labels = torch.as_tensor(prediction["labels"]).tolist()
        results = []
        for mask, s, lab in zip(masks, scores, labels):
            rle = mask_util.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("utf-8")
            results.append({"image_id": image_id, "category_id": int(lab), "segmentation": rle, "score": float(s)})
        return results

    def synchronize_between_processes(self) -> None:
        """Merge image ids and results from every process (first occurrence of an image wins)."""
        gathered_ids = all_gather(self.img_ids)
        gathered_results = all_gather(self.results)
        img_ids: list[int] = []
        seen = set()
        for ids in gathered_ids:
            for i in ids:
                if i not in seen:
                    seen.add(i)
                    img_ids.append(i)
        merged = {t: {} for t in self.iou_types}
        for rank_results in gathered_results:
            for iou_type in self.iou_types:
                for image_id, res in rank_results[iou_type].items():
                    merged[iou_type].setdefault(image_id, res)
        self.img_ids, self._seen, self.results = img_ids, seen, merged

    def _results_coco(self, iou_type: str) -> COCO:
        results = [copy.copy(r) for per_image in self.results[iou_type].values() for r in per_image]
        with _quiet():
            if results:
                return self.coco_gt.loadRes(results)
            # loadRes cannot take an empty list: build an empty detection set with the ground truth's images.
            coco_dt = _backend(self.backend)[0]()
            coco_dt.dataset = {"images": list(self.coco_gt.dataset.get("images", [])),
                               "categories": copy.deepcopy(self.coco_gt.dataset.get("categories", [])),
                               "annotations": []}
            coco_dt.createIndex()
            return coco_dt

    def accumulate(self) -> None:
        """Run pycocotools' evaluation over the images seen so far and accumulate precision/recall."""
        for iou_type, coco_eval in self.coco_eval.items():
            coco_eval.cocoDt = self._results_coco(iou_type)
            coco_eval.params.imgIds = sorted(self.img_ids)
            with _quiet():
                coco_eval.evaluate()
                coco_eval.accumulate()

    def summarize(self) -> None:
        """Print the 12 standard COCO numbers for each iou type; they are also left in ``coco_eval[t].stats``."""
        for iou_type, coco_eval in self.coco_eval.items():
            print(f"IoU metric: {iou_type}")
            coco_eval.summarize()

    def saved_state(self, iou_type: str = "bbox") -> dict:
        """The accumulated ``eval`` dict of ``iou_type`` as the official code saves it (``eval/latest.pth``):
        pycocotools' own; with faster-coco-eval, the same keys, ``params`` rebuilt as pycocotools' ``Params`` and
        the extra keys (per-image matches, counts) left out, so that one reader (tools/plot_logs.py) loads both."""
        state = self.coco_eval[iou_type].eval
        if self.backend == "pycocotools":
            return state
        params = Params(iouType=state["params"].iouType)
        for field in ("areaRng", "areaRngLbl", "catIds", "imgIds", "iouThrs", "maxDets", "recThrs", "useCats"):
            setattr(params, field, getattr(state["params"], field))
        return {"params": params, **{k: state[k] for k in ("counts", "date", "precision", "recall", "scores")}}
