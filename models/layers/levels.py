"""Multi-level feature maps as one token sequence, as the deformable encoders read them.

Levels are concatenated in order, each flattened row by row; ``sizes`` keeps their (H_l, W_l) as Python integers
(symbolic in exported graphs), ``spatial_shapes`` / ``level_start_index`` as the tensors the attention takes.
"""
from typing import NamedTuple

import torch
from torch import Tensor

from models.layers.ms_deform_attn import sizes_tensor


class FlatLevels(NamedTuple):
    """``src`` ``[B, S, C]`` and ``pos`` ``[B, S, C]`` (positions plus each level's embedding) of the S = sum of H_l
    * W_l tokens; ``mask`` ``[B, S]`` True on padding; ``sizes`` the levels' (H_l, W_l); ``spatial_shapes`` ``[L,
    2]`` int64 of the same; ``level_start_index`` ``[L]`` where each level starts in S; ``valid_ratios`` ``[B, L,
    2]`` the (width, height) fractions of each level that the image covers."""

    src: Tensor
    pos: Tensor
    mask: Tensor
    sizes: list[tuple[int, int]]
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor


def valid_ratios(mask: Tensor) -> Tensor:
    """Fraction of each padded feature map ``mask`` ``[B, H, W]`` (True on padding) that the image covers, read
    from the first row and column: ``[B, 2]`` as (width ratio, height ratio)."""
    _, height, width = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)


def flatten_levels(srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor],
                   level_embed: Tensor | None) -> FlatLevels:
    """srcs, pos_embeds: per level ``[B, C, H_l, W_l]``; masks: per level ``[B, H_l, W_l]`` True on padding;
    level_embed: ``[L, C]`` added to every position of its level (None: nothing added)."""
    src_flatten, mask_flatten, pos_flatten, sizes = [], [], [], []
    for level, (src, mask, pos_embed) in enumerate(zip(srcs, masks, pos_embeds)):
        sizes.append((src.shape[-2], src.shape[-1]))
        src_flatten.append(src.flatten(2).transpose(1, 2))
        mask_flatten.append(mask.flatten(1))
        pos_embed = pos_embed.flatten(2).transpose(1, 2)
        if level_embed is not None:
            pos_embed = pos_embed + level_embed[level].view(1, 1, -1)
        pos_flatten.append(pos_embed)
    src_flatten = torch.cat(src_flatten, 1)
    spatial_shapes = sizes_tensor(sizes, src_flatten.device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    return FlatLevels(src_flatten, torch.cat(pos_flatten, 1), torch.cat(mask_flatten, 1), sizes, spatial_shapes,
                      level_start_index, torch.stack([valid_ratios(m) for m in masks], 1))
