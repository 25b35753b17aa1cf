"""Generalised IoU as DINO computes it: 1e-6 added to the union and to the enclosing area (DETR adds nothing), so
that zero-area boxes (denoising boxes clamped to the image border) give finite values."""
import torch
from torch import Tensor

EPS = 1e-6


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _check(boxes: Tensor, name: str) -> None:
    if not (boxes[:, 2:] >= boxes[:, :2]).all():
        raise ValueError(f"{name} has x1 < x0 or y1 < y0")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU ``[N, M]`` of xyxy boxes ``[N, 4]`` and ``[M, 4]``."""
    _check(boxes1, "generalized_box_iou: boxes1")
    _check(boxes2, "generalized_box_iou: boxes2")
    area1, area2 = _area(boxes1), _area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    iou = inter / (union + EPS)
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / (area + EPS)


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU ``[N]`` of ``boxes1[i]`` with ``boxes2[i]`` (xyxy ``[N, 4]`` each): the diagonal of
    :func:`generalized_box_iou`, with the same arithmetic, in O(N)."""
    _check(boxes1, "paired_generalized_box_iou: boxes1")
    _check(boxes2, "paired_generalized_box_iou: boxes2")
    area1, area2 = _area(boxes1), _area(boxes2)
    wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    iou = inter / (union + EPS)
    wh = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    area = wh[:, 0] * wh[:, 1]
    return iou - (area - union) / (area + EPS)
