"""The official import path ``datasets.panoptic_eval``, re-exported from evaluation/panoptic_eval.py, which owns it."""
from evaluation.panoptic_eval import PanopticEvaluator

__all__ = ["PanopticEvaluator"]
