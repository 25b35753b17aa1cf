"""LayerNorm over the channels of each pixel of a ``[B, C, H, W]`` map (no statistics across pixels or images)."""
import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """``nn.LayerNorm(num_channels)`` applied per pixel to ``[B, C, H, W]``; weight and bias are ``[C]``.

    On a ``[B, C, 1, 1]`` tensor it equals ``nn.LayerNorm([C, 1, 1])`` (GCNet's norm) with the same 2C parameters,
    kept one-dimensional so that the "ndim <= 1: no weight decay" rule applies to them.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
