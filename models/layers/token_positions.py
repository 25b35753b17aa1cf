"""Where the encoder's tokens sit: the cell centres of every feature level, as reference points for the encoder's
deformable attention and as the anchors of two-stage proposals (Deformable DETR's and DINO's encoders, with padding;
:func:`rtdetr_anchors`: RT-DETR's, of unpadded maps, for RT-DETRv2, D-FINE and DEIM).

A level's valid (unpadded) part is read from the padding mask; coordinates are relative to it, so they pass 1 on
padding. ``spatial_shapes``: the levels' (H_l, W_l), as ``[L, 2]`` or a list of pairs.
"""
from collections.abc import Sequence

import torch
from torch import Tensor

from models.layers.ms_deform_attn import SpatialShapes, level_sizes


def encoder_reference_points(spatial_shapes: SpatialShapes, valid_ratios: Tensor) -> Tensor:
    """Every token's cell centre, normalised by the valid part of its level and seen from every level: ``[B, S, L,
    2]`` (x, y), for valid_ratios ``[B, L, 2]`` (width, height fractions of each level that the image covers)."""
    points = []
    for level, (height, width) in enumerate(level_sizes(spatial_shapes)):
        ref_y, ref_x = torch.meshgrid(  # arange(H) + 0.5 = linspace(0.5, H - 0.5, H), exactly
            torch.arange(height, dtype=torch.float32, device=valid_ratios.device) + 0.5,
            torch.arange(width, dtype=torch.float32, device=valid_ratios.device) + 0.5, indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


def encoder_proposals(memory: Tensor, padding_mask: Tensor, spatial_shapes: SpatialShapes,
                      learned_wh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One box per encoder token: centred on its cell, 0.05 * 2**level wide and high (DINO's learned size:
    ``sigmoid(learned_wh) * 2**level`` for ``[2]`` logits).

    memory: ``[B, S, D]`` over all levels (S = sum of H_l * W_l); padding_mask: ``[B, S]``, True on padding.
    Returns (memory with padded and invalid tokens zeroed ``[B, S, D]``, boxes as logits ``[B, S, 4]`` (cx, cy, w,
    h), +inf on padding and for boxes not strictly inside (0.01, 0.99) in every coordinate).
    """
    batch = memory.shape[0]
    proposals = []
    start = 0
    for level, (height, width) in enumerate(level_sizes(spatial_shapes)):
        level_mask = padding_mask[:, start:start + height * width].view(batch, height, width, 1)
        valid_h = torch.sum(~level_mask[:, :, 0, 0], 1)
        valid_w = torch.sum(~level_mask[:, 0, :, 0], 1)
        grid_y, grid_x = torch.meshgrid(  # arange(H) = linspace(0, H - 1, H), exactly
            torch.arange(height, dtype=torch.float32, device=memory.device),
            torch.arange(width, dtype=torch.float32, device=memory.device), indexing="ij")
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # [H, W, 2] (x, y)
        valid_size = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(batch, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / valid_size
        size = learned_wh.sigmoid() if learned_wh is not None else 0.05
        wh = torch.ones_like(grid) * size * (2.0 ** level)
        proposals.append(torch.cat((grid, wh), -1).view(batch, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask.unsqueeze(-1), float("inf"))
    proposals = proposals.masked_fill(~valid, float("inf"))
    memory = memory.masked_fill(padding_mask.unsqueeze(-1), 0.0)
    memory = memory.masked_fill(~valid, 0.0)
    return memory, proposals


def rtdetr_anchors(spatial_shapes: Sequence[Sequence[int]], eps: float = 1e-2, grid_size: float = 0.05,
                   device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """RT-DETR's anchors (official ``_generate_anchors``): one box per token of levels (H_l, W_l), the cell's centre
    ``((x + 0.5) / W_l, (y + 0.5) / H_l)`` and size ``grid_size * 2**l`` both ways, tokens row-major, levels one
    after the other.

    Returns ``anchors`` ``[1, S, 4]`` in logit space (``log(a / (1 - a))``; +inf where not valid) and
    ``valid_mask`` ``[1, S, 1]``: all four coordinates in (eps, 1 - eps). Float32, as official; computed on the
    default device (the CPU, as official, unless a device context says otherwise), then moved to ``device``.
    """
    levels = []
    for level, (height, width) in enumerate(spatial_shapes):
        rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        centres = (torch.stack([columns, rows], dim=-1) + 0.5) / torch.tensor([width, height], dtype=torch.float32)
        sizes = torch.ones_like(centres) * grid_size * (2.0 ** level)
        levels.append(torch.cat([centres, sizes], dim=-1).reshape(1, height * width, 4))
    anchors = torch.cat(levels, dim=1)
    anchors = anchors if device is None else anchors.to(device)
    valid_mask = ((anchors > eps) * (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid_mask, anchors, torch.inf), valid_mask
