"""Backbone maps -> the transformer's feature levels: a projection per backbone map and extra strided levels.

State-dict names are the official ``input_proj.<level>.0`` (convolution) and ``input_proj.<level>.1`` (GroupNorm).
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.nested_tensor import NestedTensor

GROUP_NORM_GROUPS = 32


def level_projections(channels: list[int], hidden_dim: int, num_levels: int) -> nn.ModuleList:
    """Per backbone map (``channels``, input side first) a 1x1 convolution + GroupNorm(32) to ``hidden_dim``; then,
    up to ``num_levels``, 3x3 stride-2 convolutions + GroupNorm(32), the first on the last backbone map, each next
    one on the previous extra level."""
    if num_levels < len(channels):
        raise ValueError(f"level_projections: {num_levels} levels cannot hold the backbone's {len(channels)} maps")
    projections = [nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1), nn.GroupNorm(GROUP_NORM_GROUPS, hidden_dim))
                   for c in channels]
    in_channels = channels[-1]
    for _ in range(num_levels - len(channels)):
        projections.append(nn.Sequential(nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1),
                                         nn.GroupNorm(GROUP_NORM_GROUPS, hidden_dim)))
        in_channels = hidden_dim
    return nn.ModuleList(projections)


def init_projections(input_proj: nn.ModuleList) -> None:
    """The official initialisation: xavier-uniform convolution weights, zero biases."""
    for proj in input_proj:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.constant_(proj[0].bias, 0)


def project_levels(input_proj: nn.ModuleList, features: list[NestedTensor], image_mask: Tensor,
                   position_encoding: nn.Module, positions: list[Tensor]
                   ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The levels' features ``[B, hidden_dim, H_l, W_l]``, padding masks ``[B, H_l, W_l]`` and positional encodings.

    features: the backbone's maps (NestedTensors); image_mask: ``[B, H, W]`` True on padding, resized to each extra
    level; positions: the backbone maps' encodings, extended by ``position_encoding`` of each extra level.
    """
    srcs, masks, positions = [], [], list(positions)
    for level, feature in enumerate(features):
        src, mask = feature.decompose()
        srcs.append(input_proj[level](src))
        masks.append(mask)
    for level in range(len(features), len(input_proj)):  # extra levels, each halving the previous
        src = input_proj[level](features[-1].tensors if level == len(features) else srcs[-1])
        mask = F.interpolate(image_mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
        srcs.append(src)
        masks.append(mask)
        positions.append(position_encoding(NestedTensor(src, mask)).to(src.dtype))
    return srcs, masks, positions
