"""Evaluation of detections and segmentations: COCO AP (pycocotools) and panoptic quality (PQ)."""
