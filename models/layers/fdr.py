"""Fine-grained distribution refinement (FDR; D-FINE, Peng et al., ICLR 2025, arXiv:2410.13842; also DEIM's D-FINE
decoder): a box edge is predicted as a distribution over the ``reg_max + 1`` values of a non-uniform weighting
function W(n), in units of the reference box's size / ``reg_scale`` beyond its half size.

The decoder integrates the distributions into distances (:func:`distribution_integral`) and the distances into boxes
(:func:`distance_to_box`); the fine-grained localisation loss (models/losses.py,
:func:`~models.losses.unimodal_distribution_focal_loss`) takes its targets from the other direction, box edges to
distances to the two neighbouring bins (:func:`box_edge_distances`, :func:`distance_bins`). ``up`` ``[1]`` and
``reg_scale`` ``[1]`` are the decoder's frozen parameters that shape W.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from util.box_ops import box_xyxy_to_cxcywh


def fdr_weighting_function(reg_max: int, up: Tensor, reg_scale: Tensor) -> Tensor:
    """D-FINE's W(n), ``[reg_max + 1]``, in the dtype of ``up`` ``[1]`` and ``reg_scale`` ``[1]`` (a = |up|,
    c = |reg_scale|, h = reg_max / 2): -2 a c, then ``1 - s^k`` for k = h - 1 .. 1, 0, ``s^k - 1`` for
    k = 1 .. h - 1, then 2 a c, with ``s = (a c + 1) ** (2 / (reg_max - 2))`` (so that the values next to the ends
    are -a c and a c). The official operations in the official order: the same bits."""
    outer = abs(up[0]) * abs(reg_scale) * 2
    left, right = _inner_values(reg_max, abs(up[0]) * abs(reg_scale))
    return torch.cat([-outer, *left, torch.zeros_like(up[0][None]), *right, outer], 0)


def _inner_values(reg_max: int, upper: Tensor | float) -> tuple[list, list]:
    """W's values left and right of 0, without the ends: ``1 - s^k`` for k = h - 1 .. 1 and ``s^k - 1`` for
    k = 1 .. h - 1, ``s = (upper + 1) ** (2 / (reg_max - 2))``, in the type of ``upper`` (``[1]`` tensor or float)."""
    step = (upper + 1) ** (2 / (reg_max - 2))
    left = [-(step ** k) + 1 for k in range(reg_max // 2 - 1, 0, -1)]
    right = [step ** k - 1 for k in range(1, reg_max // 2)]
    return left, right


def deployed_weighting_function(reg_max: int, up: Tensor, reg_scale: Tensor) -> Tensor:
    """W(n) as the official deployed decoder stores it: :func:`fdr_weighting_function` computed in Python floats
    (double precision) from ``up`` and ``reg_scale``, then cast to their dtype; in float32 it differs from the
    training form's values (float32 powers) by a few ulps, so the deployed model's boxes move by as much."""
    if up.is_meta:  # a model without values (names and shapes only)
        return torch.empty(reg_max + 1, dtype=up.dtype, device=up.device)
    outer = (abs(up[0]) * abs(reg_scale) * 2).item()
    left, right = _inner_values(reg_max, (abs(up[0]) * abs(reg_scale)).item())
    return torch.tensor([-outer, *left, 0.0, *right, outer], dtype=up.dtype, device=up.device)


def distribution_integral(corners: Tensor, project: Tensor, reg_max: int) -> Tensor:
    """The expected value of each edge's distribution: ``corners`` ``[..., 4 (reg_max + 1)]`` logits -> ``[..., 4]``
    = ``sum_n softmax(logits)_n W(n)`` with ``project`` = W ``[reg_max + 1]`` (official ``Integral``), taken to the
    corners' device and dtype (a deployed decoder's W is a plain attribute, which ``.to()`` of the model leaves)."""
    probabilities = F.softmax(corners.reshape(-1, reg_max + 1), dim=1)
    distances = F.linear(probabilities, project.to(device=probabilities.device, dtype=probabilities.dtype))
    distances = distances.reshape(-1, 4)
    return distances.reshape(*corners.shape[:-1], -1)


def distance_to_box(points: Tensor, distances: Tensor, reg_scale: Tensor) -> Tensor:
    """Boxes ``[..., 4]`` (cx, cy, w, h) whose left, top, right and bottom edges lie ``(|reg_scale| / 2 + d) *
    size / |reg_scale|`` from the centres of reference boxes ``points`` ``[..., 4]`` (cx, cy, w, h), for distances
    ``d`` ``[..., 4]`` (official ``distance2bbox``; a negative size is possible and kept)."""
    reg_scale = abs(reg_scale)
    x0 = points[..., 0] - (0.5 * reg_scale + distances[..., 0]) * (points[..., 2] / reg_scale)
    y0 = points[..., 1] - (0.5 * reg_scale + distances[..., 1]) * (points[..., 3] / reg_scale)
    x1 = points[..., 0] + (0.5 * reg_scale + distances[..., 2]) * (points[..., 2] / reg_scale)
    y1 = points[..., 1] + (0.5 * reg_scale + distances[..., 3]) * (points[..., 3] / reg_scale)
    return box_xyxy_to_cxcywh(torch.stack([x0, y0, x1, y1], -1))


def distance_bins(distances: Tensor, reg_max: int, reg_scale: Tensor, up: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Each distance (any shape, flattened to ``[N]``) between two neighbouring values of W (official
    ``translate_gt``): the left bin's index ``[N]`` and the interpolation weights of the right and left bins
    ``[N]`` (linear in the distance between the two values).

    Below W(0): bin 0 with weight 1 on the left; at or beyond W(reg_max): index ``reg_max - 0.1`` with weight 1 on
    the right. The index and the weights are in the distances' dtype (the official makes them float32, which fails
    for float64 distances; the same numbers for float32 ones).
    """
    distances = distances.reshape(-1)
    values = fdr_weighting_function(reg_max, up, reg_scale)
    index = (((values.unsqueeze(0) - distances.unsqueeze(1)) <= 0).sum(dim=1) - 1).to(distances.dtype)
    weight_right = torch.zeros_like(index)
    weight_left = torch.zeros_like(index)
    inside = (index >= 0) & (index < reg_max)
    left_bin = index[inside].long()
    to_left = torch.abs(distances[inside] - values[left_bin])
    to_right = torch.abs(values[left_bin + 1] - distances[inside])
    weight_right[inside] = to_left / (to_left + to_right)
    weight_left[inside] = 1.0 - weight_right[inside]
    below = index < 0
    weight_right[below], weight_left[below], index[below] = 0.0, 1.0, 0.0
    beyond = index >= reg_max
    weight_right[beyond], weight_left[beyond], index[beyond] = 1.0, 0.0, reg_max - 0.1
    return index, weight_right, weight_left


def box_edge_distances(points: Tensor, boxes_xyxy: Tensor, reg_max: int, reg_scale: Tensor,
                       up: Tensor, eps: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """FGL targets (official ``bbox2distance``, no gradient): the distances of ``boxes_xyxy`` ``[N, 4]``'s left,
    top, right and bottom edges from reference boxes ``points`` ``[N, 4]`` (cx, cy, w, h), in units of the
    reference's size / |reg_scale| beyond its half size, as :func:`distance_bins`: the bin index clamped to
    ``[0, reg_max - eps]`` and the right and left weights, each ``[4 N]`` (edges of a box together)."""
    reg_scale = abs(reg_scale)
    width_unit = points[:, 2] / reg_scale + 1e-16
    height_unit = points[:, 3] / reg_scale + 1e-16
    left = (points[:, 0] - boxes_xyxy[:, 0]) / width_unit - 0.5 * reg_scale
    top = (points[:, 1] - boxes_xyxy[:, 1]) / height_unit - 0.5 * reg_scale
    right = (boxes_xyxy[:, 2] - points[:, 0]) / width_unit - 0.5 * reg_scale
    bottom = (boxes_xyxy[:, 3] - points[:, 1]) / height_unit - 0.5 * reg_scale
    index, weight_right, weight_left = distance_bins(torch.stack([left, top, right, bottom], -1), reg_max,
                                                     reg_scale, up)
    index = index.clamp(min=0, max=reg_max - eps)
    return index.reshape(-1).detach(), weight_right.detach(), weight_left.detach()
