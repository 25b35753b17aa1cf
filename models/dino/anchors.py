"""Anchor boxes: their logit form, their sine embedding, and the encoder's one-anchor-per-token proposals.

Boxes are normalised (cx, cy, w, h) in [0, 1] of the padded image unless said otherwise; DINO refines them in logit
space (``inverse_sigmoid``) and conditions the decoder queries on their sine embedding.
"""
import math

import torch
from torch import Tensor

from models.deformable_detr.ms_deform_attn import SpatialShapes, level_sizes


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Logit of ``x`` clamped to [0, 1], with both ``x`` and ``1 - x`` kept at least ``eps``; any shape."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def anchor_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: int = 10000) -> Tensor:
    """Sine/cosine embedding of boxes ``[..., 4]`` (cx, cy, w, h) or points ``[..., 2]`` -> ``[..., 4 * num_feats]``
    (or ``2 * num_feats``), concatenated in the order y, x, w, h.

    Each coordinate is scaled by 2 pi and divided by ``temperature ** (2 * (i // 2) / num_feats)``; even features
    take the sine, odd ones the cosine. DINO uses ``num_feats = d_model / 2`` (128 for its 256 channels).
    """
    if boxes.shape[-1] not in (2, 4):
        raise ValueError(f"anchor_sine_embedding: expected boxes [..., 4] or points [..., 2], got {tuple(boxes.shape)}")
    scale = 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def embed(coord: Tensor) -> Tensor:
        pos = (coord * scale)[..., None] / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

    parts = [embed(boxes[..., 1]), embed(boxes[..., 0])]
    if boxes.shape[-1] == 4:
        parts += [embed(boxes[..., 2]), embed(boxes[..., 3])]
    return torch.cat(parts, dim=-1)


def valid_ratios(mask: Tensor) -> Tensor:
    """Fraction of each padded feature map ``mask`` ``[B, H, W]`` (True on padding) that the image covers:
    ``[B, 2]`` as (width ratio, height ratio)."""
    _, height, width = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)


def encoder_proposals(memory: Tensor, padding_mask: Tensor, spatial_shapes: SpatialShapes,
                      learned_wh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One anchor per encoder token: centred on its cell (of the unpadded image), 0.05 * 2**level wide and high
    (``sigmoid(learned_wh) * 2**level`` when given, ``[2]`` logits).

    memory: ``[B, S, D]`` encoder output over all levels (S = sum of H_l * W_l); padding_mask: ``[B, S]`` True on
    padding; spatial_shapes: ``[L, 2]`` (H_l, W_l), or a list of pairs.
    Returns (memory ``[B, S, D]`` with padded and invalid tokens zeroed, proposals ``[B, S, 4]`` in logit space,
    +inf for padded tokens and for anchors not strictly inside (0.01, 0.99) in every coordinate).
    """
    batch = memory.shape[0]
    proposals = []
    start = 0
    for lvl, (height, width) in enumerate(level_sizes(spatial_shapes)):
        mask_l = padding_mask[:, start:start + height * width].view(batch, height, width, 1)
        valid_h = torch.sum(~mask_l[:, :, 0, 0], 1)
        valid_w = torch.sum(~mask_l[:, 0, :, 0], 1)
        grid_y, grid_x = torch.meshgrid(  # arange(H) = linspace(0, H - 1, H), exactly
            torch.arange(height, dtype=torch.float32, device=memory.device),
            torch.arange(width, dtype=torch.float32, device=memory.device), indexing="ij")
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # [H, W, 2] as (x, y)
        scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(batch, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
        if learned_wh is not None:
            wh = torch.ones_like(grid) * learned_wh.sigmoid() * (2.0 ** lvl)
        else:
            wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
        proposals.append(torch.cat((grid, wh), -1).view(batch, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask.unsqueeze(-1), float("inf"))
    proposals = proposals.masked_fill(~valid, float("inf"))
    memory = memory.masked_fill(padding_mask.unsqueeze(-1), float(0))
    memory = memory.masked_fill(~valid, float(0))
    return memory, proposals
