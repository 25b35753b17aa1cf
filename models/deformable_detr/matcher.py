"""Deformable DETR's matching cost: DETR's Hungarian matcher with a focal-loss classification cost."""
import torch

from models.matcher import HungarianMatcher


class FocalHungarianMatcher(HungarianMatcher):
    """``cost_class`` weighs the focal cost of the target class: the focal loss of calling it positive minus that
    of calling it negative, ``alpha (1 - p)^gamma (-log(p + 1e-8)) - (1 - alpha) p^gamma (-log(1 - p + 1e-8))``
    with p the sigmoid probability (alpha 0.25 and gamma 2 as the official, which ties them to no flag)."""

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, alpha: float = 0.25,
                 gamma: float = 2.0):
        super().__init__(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou)
        self.alpha = alpha
        self.gamma = gamma

    def class_cost(self, logits: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """logits ``[N, K]`` (sigmoid, no "no object" column), tgt_ids ``[T]`` -> cost ``[N, T]``."""
        prob = logits.sigmoid()
        neg_cost = (1 - self.alpha) * (prob ** self.gamma) * (-(1 - prob + 1e-8).log())
        pos_cost = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
        return pos_cost[:, tgt_ids] - neg_cost[:, tgt_ids]
