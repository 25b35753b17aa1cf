"""Box format conversions and generalised IoU.

Boxes are ``[N, 4]`` tensors, either centre format (cx, cy, w, h) or corner format (x0, y0, x1, y1).
The conversions keep DETR's names. The generalised IoU takes an epsilon added to the union and the enclosing area
(DETR 0; DINO 1e-6, so that zero-area boxes give finite values); with 0 it equals ``torchvision.ops``' bit for bit.
"""
import torch
from torchvision.ops import masks_to_boxes as _masks_to_boxes


def box_cxcywh_to_xyxy(x: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1), any leading shape."""
    x_c, y_c, w, h = x.unbind(-1)
    return torch.stack([x_c - 0.5 * w, y_c - 0.5 * h, x_c + 0.5 * w, y_c + 0.5 * h], dim=-1)


def sized_box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) ``[..., 4]`` -> (x0, y0, x1, y1) with negative sizes taken as 0 (D-FINE's conversion: its
    refined boxes can turn inside out, and such a box becomes the point at its centre)."""
    return box_cxcywh_to_xyxy(torch.cat([boxes[..., :2], boxes[..., 2:].clamp(min=0.0)], dim=-1))


def box_xyxy_to_cxcywh(x: torch.Tensor) -> torch.Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h), any leading shape."""
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``[N, 4]`` xyxy boxes, ``[N]``."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU ``[N, M]`` of xyxy boxes, and the union areas ``[N, M]`` (DETR's signature)."""
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter / union, union


def _check_boxes(boxes: torch.Tensor, name: str) -> None:
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name} has non-finite coordinates")
    if not (boxes[:, 2:] >= boxes[:, :2]).all():
        raise ValueError(f"{name} has x1 < x0 or y1 < y0")


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision coordinates in float32 (as torchvision), others as they are: areas overflow in float16."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Pairwise generalised IoU ``[N, M]`` of xyxy boxes (Rezatofighi et al. 2019), in [-1, 1]; ``eps`` is added
    to the union and to the enclosing box's area.

    Degenerate boxes (x1 < x0 or y1 < y0) would give wrong answers silently, so they are rejected.
    """
    _check_boxes(boxes1, "generalized_box_iou: boxes1")
    _check_boxes(boxes2, "generalized_box_iou: boxes2")
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    iou = inter / (union + eps)
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / (area + eps)


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """GIoU of ``boxes1[i]`` with ``boxes2[i]``, ``[N]``: the diagonal of :func:`generalized_box_iou` in O(N),
    with the same arithmetic, for the set loss."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area1 + area2 - inter
    wh_c = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    area_c = wh_c[:, 0] * wh_c[:, 1]
    return inter / (union + eps) - (area_c - union) / (area_c + eps)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes ``[N, 4]`` around binary masks ``[N, H, W]``; empty input gives ``[0, 4]``."""
    if masks.numel() == 0:
        return torch.zeros((0, 4), device=masks.device)
    return _masks_to_boxes(masks)
