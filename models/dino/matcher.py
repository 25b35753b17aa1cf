"""DINO's Hungarian matcher: a focal-loss classification cost and DINO's GIoU (see models/dino/giou.py)."""
from torch import Tensor

from models.deformable_detr.matcher import FocalHungarianMatcher as DeformableFocalMatcher
from models.dino.giou import generalized_box_iou


class FocalHungarianMatcher(DeformableFocalMatcher):
    """cost = cost_bbox * L1 + cost_class * focal + cost_giou * (-GIoU), per image solved by the Hungarian algorithm.

    The classification cost is Deformable DETR's focal cost (``focal_alpha``, gamma 2): the focal loss of
    p = sigmoid(logit[i, c]) as a positive minus its focal loss as a negative. The GIoU is DINO's (with epsilons).
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, focal_alpha: float = 0.25):
        super().__init__(cost_class, cost_bbox, cost_giou, alpha=focal_alpha, gamma=2.0)

    def pairwise_giou(self, boxes1: Tensor, boxes2: Tensor) -> Tensor:
        """DINO's generalised IoU ``[N, M]`` of xyxy boxes (models/dino/giou.py)."""
        return generalized_box_iou(boxes1, boxes2)
