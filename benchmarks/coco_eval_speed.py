"""Time of the COCO box evaluation with each ``--eval_backend`` on a large synthetic validation set.

    python -m benchmarks.coco_eval_speed [--images 5000] [--detections 100] [--rounds 1]

Ground truth: ``--images`` 640 x 480 images with 0-15 boxes each (about 7 on average, as COCO val2017's 36,781
boxes over 5,000 images) of 80 categories and all sizes, 1% crowd. Detections: ``--detections`` per image, as DETR
returns one per query (100: 500,000 detections for 5,000 images): a noisy copy of each ground-truth box (sometimes
with the wrong category) and random boxes for the rest, random scores. Each round runs CocoEvaluator (update,
accumulate = loadRes + evaluate + accumulate, summarize) once per backend, alternating; prints the seconds of each
and checks that the 12 numbers agree.
"""
import argparse
import contextlib
import io
import json
import statistics
import time

import numpy as np
import torch
from pycocotools.coco import COCO

from evaluation.coco_eval import CocoEvaluator


def synthetic_set(images: int, detections: int, seed: int = 0) -> tuple[COCO, dict]:
    """(ground truth COCO, predictions {image_id: {scores, labels, boxes xyxy}}) as the docstring describes."""
    rng = np.random.default_rng(seed)
    image_entries, annotations, predictions = [], [], {}
    for image_id in range(1, images + 1):
        image_entries.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id:012d}.jpg"})
        count = int(rng.integers(0, 16))
        wh = np.exp(rng.uniform(np.log(6), np.log(400), (count, 2)))
        xy = rng.uniform(0, 1, (count, 2)) * np.maximum(np.array([640, 480]) - wh, 1)
        categories = rng.integers(1, 81, count)
        for (x, y), (w, h), category in zip(xy, wh, categories):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(category),
                                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                                "iscrowd": int(rng.random() < 0.01)})
        found = min(count, detections)
        noisy = np.concatenate([xy[:found], xy[:found] + wh[:found]], 1) + rng.normal(0, 0.08, (found, 4)) * \
            np.tile(wh[:found], 2)
        labels = np.where(rng.random(found) < 0.2, rng.integers(1, 81, found), categories[:found])
        rest = detections - found
        corner = rng.uniform(0, 1, (rest, 2)) * [600, 440]
        random_boxes = np.concatenate([corner, corner + rng.uniform(5, 300, (rest, 2))], 1)
        predictions[image_id] = {
            "boxes": torch.tensor(np.concatenate([noisy, random_boxes]), dtype=torch.float32),
            "scores": torch.tensor(np.concatenate([rng.uniform(0.3, 1, found), rng.uniform(0, 0.6, rest)]),
                                   dtype=torch.float32),
            "labels": torch.tensor(np.concatenate([labels, rng.integers(1, 81, rest)]), dtype=torch.int64)}
    coco = COCO()
    coco.dataset = {"images": image_entries, "annotations": annotations,
                    "categories": [{"id": i, "name": str(i), "supercategory": "thing"} for i in range(1, 81)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, predictions


def evaluate_once(coco: COCO, predictions: dict, backend: str) -> tuple[float, list[float]]:
    start = time.perf_counter()
    evaluator = CocoEvaluator(coco, ["bbox"], backend=backend)
    evaluator.update(predictions)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return time.perf_counter() - start, evaluator.coco_eval["bbox"].stats.tolist()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    coco, predictions = synthetic_set(args.images, args.detections)
    times = {"pycocotools": [], "faster_coco_eval": []}
    stats = {}
    for _ in range(args.rounds):
        for backend in times:
            seconds, stats[backend] = evaluate_once(coco, predictions, backend)
            times[backend].append(seconds)
    median = {b: statistics.median(t) for b, t in times.items()}
    result = {"images": args.images, "ground_truth_boxes": len(coco.dataset["annotations"]),
              "detections": args.images * args.detections, "rounds": args.rounds,
              **{f"{b}_s": round(t, 2) for b, t in median.items()},
              "speedup": round(median["pycocotools"] / median["faster_coco_eval"], 2),
              "max_abs_difference_of_the_12_numbers": max(abs(a - b) for a, b in zip(*stats.values())),
              "AP": round(stats["pycocotools"][0], 4)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
