"""Deformable DETR's post-processing: the best (query, class) pairs by sigmoid score, boxes in pixels."""
import torch
from torch import nn

from models.postprocess import check_target_sizes, scale_boxes


class PostProcess(nn.Module):
    """Model outputs -> per image the ``num_select`` best (query, class) pairs over all queries and classes:
    ``scores`` ``[n]`` (sigmoid probabilities, descending), ``labels`` ``[n]`` (class ids) and ``boxes`` ``[n, 4]``
    (absolute xyxy of the query's box); a query may appear once per class. n = ``num_select`` (100, as the
    official), or Q * K when that is smaller."""

    def __init__(self, num_select: int = 100):
        super().__init__()
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: torch.Tensor) -> list[dict]:
        """outputs: ``pred_logits`` ``[B, Q, K]``, ``pred_boxes`` ``[B, Q, 4]`` (normalised cxcywh);
        target_sizes: ``[B, 2]`` (height, width) of each original image, in pixels."""
        out_logits, out_bbox = outputs["pred_logits"], outputs["pred_boxes"]
        check_target_sizes("PostProcess", len(out_logits), target_sizes)
        batch, num_queries, num_classes = out_logits.shape
        prob = out_logits.sigmoid().view(batch, -1)
        scores, topk_indexes = torch.topk(prob, min(self.num_select, num_queries * num_classes), dim=1)
        topk_boxes = torch.div(topk_indexes, num_classes, rounding_mode="floor")
        labels = topk_indexes % num_classes
        boxes = torch.gather(out_bbox, 1, topk_boxes.unsqueeze(-1).repeat(1, 1, 4))
        boxes = scale_boxes(boxes, target_sizes)
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, boxes)]
