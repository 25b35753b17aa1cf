"""DINO's Hungarian matcher: a focal-loss classification cost and DINO's GIoU (see models/dino/giou.py)."""
import torch
from torch import Tensor

from models.deformable_detr.matcher import FocalHungarianMatcher as DeformableFocalMatcher
from models.dino.giou import generalized_box_iou
from util.box_ops import box_cxcywh_to_xyxy


class FocalHungarianMatcher(DeformableFocalMatcher):
    """cost = cost_bbox * L1 + cost_class * focal + cost_giou * (-GIoU), per image solved by the Hungarian algorithm.

    The classification cost is Deformable DETR's focal cost (``focal_alpha``, gamma 2): the focal loss of
    p = sigmoid(logit[i, c]) as a positive minus its focal loss as a negative. The GIoU is DINO's (with epsilons).
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, focal_alpha: float = 0.25):
        super().__init__(cost_class, cost_bbox, cost_giou, alpha=focal_alpha, gamma=2.0)

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[Tensor]:
        """Per-image cost matrices ``[Q, T_i]`` (on CPU) for outputs ``pred_logits`` ``[B, Q, K]`` and
        ``pred_boxes`` ``[B, Q, 4]``."""
        bs, num_queries = outputs["pred_logits"].shape[:2]
        out_bbox = outputs["pred_boxes"].flatten(0, 1)
        tgt_ids = torch.cat([v["labels"] for v in targets])
        tgt_bbox = torch.cat([v["boxes"] for v in targets]).to(out_bbox.dtype)
        cost_class = self.class_cost(outputs["pred_logits"].flatten(0, 1), tgt_ids)
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        cost = cost.view(bs, num_queries, -1).float().cpu()
        sizes = [len(v["boxes"]) for v in targets]
        return [c[i] for i, c in enumerate(cost.split(sizes, -1))]
