"""Post-processing: model outputs -> per image scores, labels and absolute xyxy boxes.

:class:`PostProcess` is DETR's (softmax, one detection per query); :class:`SigmoidTopKPostProcess` that of the
sigmoid classifiers (Deformable DETR, DINO: the best query-class pairs, optionally NMS).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from util.box_ops import box_cxcywh_to_xyxy


def check_target_sizes(name: str, num_outputs: int, target_sizes: torch.Tensor) -> None:
    """``target_sizes`` must be ``[B, 2]`` with one row per image of the outputs."""
    if num_outputs != len(target_sizes):
        raise ValueError(f"{name}: {num_outputs} outputs but {len(target_sizes)} target sizes")
    if target_sizes.ndim != 2 or target_sizes.shape[1] != 2:
        raise ValueError(f"{name}: target_sizes must be [B, 2], got {tuple(target_sizes.shape)}")


def scale_boxes(boxes_cxcywh: torch.Tensor, target_sizes: torch.Tensor) -> torch.Tensor:
    """Relative cxcywh boxes ``[B, N, 4]`` -> absolute xyxy pixels of images ``target_sizes`` ``[B, 2]`` (h, w)."""
    boxes = box_cxcywh_to_xyxy(boxes_cxcywh)
    img_h, img_w = target_sizes.unbind(1)
    scale_fct = torch.stack([img_w, img_h, img_w, img_h], dim=1)
    return boxes * scale_fct[:, None, :]


class PostProcess(nn.Module):
    """Model outputs -> per image ``scores`` ``[Q]``, ``labels`` ``[Q]``, ``boxes`` ``[Q, 4]`` absolute xyxy."""

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """target_sizes: ``[B, 2]`` (height, width) of each original image, in pixels."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes("PostProcess", len(out_logits), target_sizes)
        prob = F.softmax(out_logits, -1)
        scores, labels = prob[..., :-1].max(-1)
        boxes = scale_boxes(out_bbox, target_sizes)
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]


class SigmoidTopKPostProcess(nn.Module):
    """Model outputs -> per image ``scores`` ``[n]`` (sigmoid probabilities, descending), ``labels`` ``[n]`` (class
    ids) and ``boxes`` ``[n, 4]`` (absolute xyxy) of the ``num_select`` highest scores over all query-class pairs
    (a query may appear once per class); n = min(num_select, Q * K). ``nms_iou_threshold`` > 0 then removes pairs
    that overlap a better one by more than that IoU (class-agnostic), as DINO's option."""

    def __init__(self, num_select: int = 100, nms_iou_threshold: float = -1):
        super().__init__()
        if num_select < 1:
            raise ValueError(f"SigmoidTopKPostProcess: num_select must be at least 1, got {num_select}")
        self.num_select = num_select
        self.nms_iou_threshold = nms_iou_threshold

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """outputs: ``pred_logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]`` (normalised cxcywh);
        target_sizes: ``[B, 2]`` (height, width) of each original image, in pixels."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes(type(self).__name__, len(out_logits), target_sizes)
        num_classes = out_logits.shape[2]
        prob = out_logits.sigmoid().view(out_logits.shape[0], -1)
        scores, index = torch.topk(prob, min(self.num_select, prob.shape[1]), dim=1)
        query = torch.div(index, num_classes, rounding_mode="floor")
        labels = index % num_classes
        boxes = torch.gather(scale_boxes(out_bbox, target_sizes), 1, query.unsqueeze(-1).repeat(1, 1, 4))
        if self.nms_iou_threshold > 0:
            keep = [nms(b, s, iou_threshold=self.nms_iou_threshold) for b, s in zip(boxes, scores)]
            return [{"scores": s[k], "labels": lab[k], "boxes": b[k]}
                    for s, lab, b, k in zip(scores, labels, boxes, keep)]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]
