"""Efficient Channel Attention.

Wang, Wu, Zhu, Li, Zuo, Hu: "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
CVPR 2020. https://arxiv.org/abs/1910.03151

Masked global average pool, a 1-D convolution across channels (no bias) with the paper's adaptive kernel size
``k = |(log2(C) + beta) / gamma|`` rounded down, made odd by +1 (C=256 -> 5), sigmoid, channel rescaling.
Unlike ``timm.layers.EcaModule`` the kernel is not raised to at least 3 (same kernel for C >= 16).
"""
import math
from collections.abc import Callable

import torch
from torch import nn

from models.attention.gating import ZeroInitGate
from models.attention.masked_ops import masked_mean


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The paper's adaptive kernel size: ``t = int(abs((log2(C) + beta) / gamma))``, ``t + 1`` if ``t`` is even."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class EcaAttn(nn.Module):
    """The paper's ECA module, pooling over valid pixels: ``x [B, C, H, W] -> x * s``, ``s`` ``[B, C, 1, 1]``.

    ``kernel_size`` overrides the adaptive size; ``gamma``/``beta`` are the paper's mapping constants (unrelated to
    the gate scale of :class:`EfficientChannelAttn`).
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2, beta: float = 1,
                 gate_layer: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        k = kernel_size or eca_kernel_size(channels, gamma, beta)
        if k % 2 == 0:
            raise ValueError(f"ECA kernel_size must be odd, got {k}")
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.gate = gate_layer()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c = x.shape[:2]
        s = self.conv(masked_mean(x, mask).view(b, 1, c))
        return x * self.gate(s).view(b, c, 1, 1)


class EfficientChannelAttn(ZeroInitGate):
    """ECA behind a zero-initialised scale: ``x + gamma * (ECA(x) - x)``; ``[B, C, H, W] -> [B, C, H, W]``."""

    paper_module = EcaAttn
