"""Annotations whose box cannot describe an object, left out of training and evaluation alike.

A box ``[x, y, w, h]`` is invalid when a coordinate is not finite, when its width or height is zero or negative, or
when it lies entirely outside its ``width`` x ``height`` image (nothing is left after clipping to the image). These
are exactly the boxes training has always dropped (``datasets.coco.ConvertCocoPolysToMask``); left in the
evaluation ground truth they are objects no detector can find (a perfect detector scored AP 0.95, not 1).
"""
import math
from pathlib import Path

REASONS = {
    "not_finite": "with a coordinate that is not a finite number",
    "empty": "with zero or negative width or height",
    "outside": "entirely outside the image",
}


def box_problem(bbox: list, width: int, height: int) -> str | None:
    """The key in REASONS of what is wrong with ``bbox`` (x, y, w, h pixels) in a ``width`` x ``height`` image."""
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox):
        return "not_finite"
    if w <= 0 or h <= 0:
        return "empty"
    if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
        return "outside"
    return None


def drop_invalid_boxes(data: dict, source: Path, strict: bool = False) -> str | None:
    """Remove the annotations with invalid boxes from ``data`` (a checked COCO instances file, changed in place).

    Returns one line for the user saying how many were dropped and why (None when none were), or with ``strict``
    raises ValueError with that count instead.
    """
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    dropped: dict[str, list[int]] = {}
    kept = []
    for ann in data["annotations"]:
        problem = box_problem(ann["bbox"], *sizes[ann["image_id"]])
        if problem is None:
            kept.append(ann)
        else:
            dropped.setdefault(problem, []).append(ann["id"])
    if not dropped:
        return None
    count = sum(len(ids) for ids in dropped.values())
    reasons = ", ".join(f"{len(dropped[r])} {text}" for r, text in REASONS.items() if r in dropped)
    ids = sorted(i for group in dropped.values() for i in group)
    examples = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
    if strict:
        raise ValueError(f"annotation file {source} has {count} annotations whose box is invalid ({reasons}; "
                         f"annotation ids {examples}) and --strict_annotations is set")
    data["annotations"] = kept
    return (f"annotation file {source}: left {count} of {count + len(kept)} annotations out of training and "
            f"evaluation, their box is invalid: {reasons} (annotation ids {examples}; --strict_annotations makes "
            f"this an error)")
