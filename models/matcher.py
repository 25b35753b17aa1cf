"""Bipartite matching between predictions and ground truth (the Hungarian algorithm, via scipy)."""
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, sized_box_corners


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to predictions minimising a weighted cost per image.

    cost = cost_class * (-p(target class)) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU), the GIoU with
    ``giou_eps`` added to its denominators (DINO's 1e-6) and taken of the boxes' corners as :meth:`box_corners`
    gives them. With ``nan_cost``, a NaN cost counts as that value (and an infinite one as the largest finite one,
    ``torch.nan_to_num``), so that a diverging prediction is matched, badly, rather than stopping scipy. There are
    more predictions than targets; unmatched predictions are "no object".
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, giou_eps: float = 0.0,
                 nan_cost: float | None = None):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.giou_eps = giou_eps
        self.nan_cost = nan_cost

    @staticmethod
    def box_corners(boxes: torch.Tensor) -> torch.Tensor:
        """(cx, cy, w, h) ``[..., 4]`` -> (x0, y0, x1, y1), for the GIoU cost. Architectures whose boxes can turn
        inside out override this."""
        return box_cxcywh_to_xyxy(boxes)

    def class_cost(self, logits: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """Classification cost ``[N, T]`` of logits ``[N, K+1]`` for target classes ``[T]``: minus the softmax
        probability of the target class. Architectures with other classifiers override this."""
        return -logits.softmax(-1)[:, tgt_ids]

    def pairwise_giou(self, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
        """Generalised IoU ``[N, M]`` of xyxy boxes ``[N, 4]`` and ``[M, 4]``."""
        return generalized_box_iou(boxes1, boxes2, eps=self.giou_eps)

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[torch.Tensor]:
        """Per-image cost matrices ``[Q, T_i]`` on the CPU, in the outputs' dtype (half precision as float32)."""
        bs, num_queries = outputs["pred_logits"].shape[:2]
        out_bbox = outputs["pred_boxes"].flatten(0, 1)  # [B*Q, 4]
        tgt_ids = torch.cat([v["labels"] for v in targets])
        tgt_bbox = torch.cat([v["boxes"] for v in targets]).to(out_bbox.dtype)

        cost_class = self.class_cost(outputs["pred_logits"].flatten(0, 1), tgt_ids)
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -self.pairwise_giou(self.box_corners(out_bbox), self.box_corners(tgt_bbox))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        cost = cost.view(bs, num_queries, -1).cpu()
        if self.nan_cost is not None:
            cost = torch.nan_to_num(cost, nan=self.nan_cost)
        if cost.dtype in (torch.float16, torch.bfloat16):  # scipy takes neither; float64 stays float64
            cost = cost.float()
        sizes = [len(v["boxes"]) for v in targets]
        return [c[i] for i, c in enumerate(cost.split(sizes, -1))]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict], groups: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: ``pred_logits`` ``[B, Q, K+1]``, ``pred_boxes`` ``[B, Q, 4]`` (normalised cxcywh).
        targets: per image ``labels`` ``[T_i]`` and ``boxes`` ``[T_i, 4]`` (normalised cxcywh).
        groups: the Q queries form this many equal consecutive groups, each matched one-to-one on its own
        (Group DETR); every target is then matched once per group.

        Returns per image (index_i, index_j), int64 tensors: prediction index_i[k] is matched to target index_j[k].
        """
        num_queries = outputs["pred_logits"].shape[1]
        if num_queries % groups:
            raise ValueError(f"HungarianMatcher: {num_queries} queries do not split into {groups} groups")
        size = num_queries // groups
        result = []
        for cost in self.cost_matrices(outputs, targets):
            rows, cols = [], []
            for g in range(groups):
                i, j = linear_sum_assignment(cost[g * size:(g + 1) * size].numpy())
                rows.append(torch.as_tensor(i, dtype=torch.int64) + g * size)
                cols.append(torch.as_tensor(j, dtype=torch.int64))
            result.append((torch.cat(rows), torch.cat(cols)))
        return result


class FocalHungarianMatcher(HungarianMatcher):
    """The matcher of the sigmoid classifiers (Deformable DETR, DINO): ``cost_class`` weighs the focal cost of the
    target class, the focal loss of calling it positive minus that of calling it negative,
    ``alpha (1 - p)^gamma (-log(p + 1e-8)) - (1 - alpha) p^gamma (-log(1 - p + 1e-8))`` with p the sigmoid
    probability of logits ``[N, K]`` (no "no object" column)."""

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, alpha: float = 0.25,
                 gamma: float = 2.0, giou_eps: float = 0.0, nan_cost: float | None = None):
        super().__init__(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou, giou_eps=giou_eps,
                         nan_cost=nan_cost)
        self.alpha = alpha
        self.gamma = gamma

    def class_cost(self, logits: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """logits ``[N, K]``, tgt_ids ``[T]`` -> cost ``[N, T]``."""
        prob = logits.sigmoid()
        neg_cost = (1 - self.alpha) * (prob ** self.gamma) * (-(1 - prob + 1e-8).log())
        pos_cost = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
        return pos_cost[:, tgt_ids] - neg_cost[:, tgt_ids]


class DFINEHungarianMatcher(FocalHungarianMatcher):
    """D-FINE's matcher (Peterande/D-FINE ``src/zoo/dfine/matcher.py``; DEIM's too): the focal-cost matcher
    (the official ``HungarianMatcher`` with ``use_focal_loss``), adapted to the refined boxes of the fine-grained
    distribution refinement, which can turn inside out: the GIoU cost sees a box with negative width or height as
    the point at its centre (sizes taken as 0, :func:`~util.box_ops.sized_box_corners`), and a NaN cost counts as
    ``nan_cost`` (the official 1.0). Returns per image (query indices, target indices), int64 (the official: a
    dict)."""

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, alpha: float = 0.25,
                 gamma: float = 2.0, giou_eps: float = 0.0, nan_cost: float | None = 1.0):
        super().__init__(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou, alpha=alpha, gamma=gamma,
                         giou_eps=giou_eps, nan_cost=nan_cost)

    box_corners = staticmethod(sized_box_corners)


def build_matcher(args) -> HungarianMatcher:
    return HungarianMatcher(cost_class=args.set_cost_class, cost_bbox=args.set_cost_bbox, cost_giou=args.set_cost_giou)
