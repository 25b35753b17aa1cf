"""The official import path ``datasets.coco_eval``, re-exported from evaluation/coco_eval.py, which owns it."""
from evaluation.coco_eval import CocoEvaluator, convert_to_xywh

__all__ = ["CocoEvaluator", "convert_to_xywh"]
