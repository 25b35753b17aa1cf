"""Box format conversions and generalised IoU.

Boxes are ``[N, 4]`` tensors, either centre format (cx, cy, w, h) or corner format (x0, y0, x1, y1).
IoU and GIoU come from torchvision.ops; the conversions keep DETR's names.
"""
import torch
from torchvision.ops import box_iou as _box_iou
from torchvision.ops import generalized_box_iou as _generalized_box_iou
from torchvision.ops import masks_to_boxes as _masks_to_boxes


def box_cxcywh_to_xyxy(x: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1), any leading shape."""
    x_c, y_c, w, h = x.unbind(-1)
    return torch.stack([x_c - 0.5 * w, y_c - 0.5 * h, x_c + 0.5 * w, y_c + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(x: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h), any leading shape."""
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``[N, 4]`` xyxy boxes, ``[N]``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU ``[N, M]`` of xyxy boxes, and the union areas ``[N, M]`` (DETR's signature)."""
    iou = _box_iou(boxes1, boxes2)
    inter_plus_union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :]
    union = inter_plus_union / (1 + iou)
    return iou, union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU ``[N, M]`` of xyxy boxes (Rezatofighi et al. 2019), in [-1, 1].

    Degenerate boxes (x1 < x0 or y1 < y0) would give wrong answers silently, so they are rejected.
    """
    if not (boxes1[:, 2:] >= boxes1[:, :2]).all():
        raise ValueError("generalized_box_iou: boxes1 has x1 < x0 or y1 < y0")
    if not (boxes2[:, 2:] >= boxes2[:, :2]).all():
        raise ValueError("generalized_box_iou: boxes2 has x1 < x0 or y1 < y0")
    return _generalized_box_iou(boxes1, boxes2)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes ``[N, 4]`` around binary masks ``[N, H, W]``; empty input gives ``[0, 4]``."""
    if masks.numel() == 0:
        return torch.zeros((0, 4), device=masks.device)
    return _masks_to_boxes(masks)
