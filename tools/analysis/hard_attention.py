"""Hard-attention heat maps of a backbone stage, as AG-CNN's attention-guided mask inference.

Guan, Huang, Zhong, Zheng, Zheng, Yang: "Diagnose like a Radiologist: Attention Guided Convolutional Neural Network
for Thorax Disease Classification", 2018. https://arxiv.org/abs/1801.09927

For a stage's features ``f`` ``[K, H, W]``: the heat map ``H(x, y) = max_k |f^k(x, y)|``; the binary mask
``M(x, y) = 1`` where ``H(x, y) > τ``, with ``H`` taken relative to its maximum (``H / max H > τ``, so τ in [0, 1]
sets the size of the attended region, a larger τ a smaller one; τ = 0.7 as the paper); the largest connected region
of ``M`` (8-connected) and its bounding box ``[x_min, y_min, x_max, y_max]`` (inclusive cell indices), the region
AG-CNN crops for its local branch. Only valid (unpadded) cells take part. This draws what a network looks at; it is not
a block and changes nothing in the network.
"""
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage


@dataclass
class HardAttention:
    """One image's heat map ``heat`` ``[H, W]`` (0 on padding), binary mask ``binary``, largest connected region
    ``region`` (bool ``[H, W]``) and its ``box`` (x_min, y_min, x_max, y_max in cells, inclusive; None when empty)."""

    heat: torch.Tensor
    binary: torch.Tensor
    region: torch.Tensor
    box: tuple[int, int, int, int] | None


def heat_map(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``max_k |f^k(x, y)|``: features ``[B, K, H, W]`` (mask ``[B, H, W]``, True on padding) -> ``[B, H, W]``, 0 on
    padding."""
    heat = features.abs().amax(dim=1)
    return heat if mask is None else heat.masked_fill(mask, 0.0)


def binary_mask(heat: torch.Tensor, tau: float = 0.7) -> torch.Tensor:
    """``M = heat > tau * max(heat)`` for one map ``[H, W]`` (bool); all False when the map is 0 everywhere."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"--tau must be in [0, 1] (relative to the heat map's maximum), got {tau}")
    peak = heat.max()
    if peak <= 0:
        return torch.zeros_like(heat, dtype=torch.bool)
    return heat > tau * peak


def largest_region(binary: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected region of a bool map ``[H, W]`` (the first in raster order among equals)."""
    labels, count = ndimage.label(binary.cpu().numpy(), structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return torch.zeros_like(binary)
    sizes = np.bincount(labels.ravel())[1:]
    return torch.from_numpy(labels == 1 + int(np.argmax(sizes))).to(binary.device)


def bounding_box(region: torch.Tensor) -> tuple[int, int, int, int] | None:
    """``(x_min, y_min, x_max, y_max)`` of the True cells of ``region`` ``[H, W]`` (inclusive), None if none."""
    ys, xs = torch.nonzero(region, as_tuple=True)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def hard_attention(features: torch.Tensor, mask: torch.Tensor | None = None, tau: float = 0.7) -> list[HardAttention]:
    """AG-CNN's mask inference for each image of ``features`` ``[B, K, H, W]``."""
    found = []
    for heat in heat_map(features, mask):
        binary = binary_mask(heat, tau)
        region = largest_region(binary)
        found.append(HardAttention(heat, binary, region, bounding_box(region)))
    return found
