"""DINO's post-processing: the ``num_select`` best (query, class) pairs of each image by sigmoid score."""
import torch
from torch import nn
from torchvision.ops import nms

from models.postprocess import check_target_sizes, scale_boxes


class PostProcess(nn.Module):
    """Model outputs -> per image ``scores`` ``[n]``, ``labels`` ``[n]`` (class ids) and ``boxes`` ``[n, 4]``
    (absolute xyxy) of the ``num_select`` highest sigmoid scores over all query-class pairs (a query may appear with
    several classes), best first; n = min(num_select, Q * K). ``nms_iou_threshold`` > 0 then removes pairs that
    overlap a better one by more than that IoU (class-agnostic), as the official option."""

    def __init__(self, num_select: int = 100, nms_iou_threshold: float = -1):
        super().__init__()
        if num_select < 1:
            raise ValueError(f"--num_select must be at least 1, got {num_select}")
        self.num_select = num_select
        self.nms_iou_threshold = nms_iou_threshold

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """outputs: ``pred_logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]`` (normalised cxcywh);
        target_sizes: ``[B, 2]`` (height, width) of each original image, in pixels."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes("PostProcess", len(out_logits), target_sizes)
        num_classes = out_logits.shape[2]
        prob = out_logits.sigmoid().view(out_logits.shape[0], -1)
        scores, index = torch.topk(prob, min(self.num_select, prob.shape[1]), dim=1)
        query = index // num_classes
        labels = index % num_classes
        boxes = scale_boxes(out_bbox, target_sizes)
        boxes = torch.gather(boxes, 1, query.unsqueeze(-1).repeat(1, 1, 4))
        if self.nms_iou_threshold > 0:
            keep = [nms(b, s, iou_threshold=self.nms_iou_threshold) for b, s in zip(boxes, scores)]
            return [{"scores": s[k], "labels": lab[k], "boxes": b[k]}
                    for s, lab, b, k in zip(scores, labels, boxes, keep)]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]
