"""Squeeze-and-Excitation block.

Hu, Shen, Albanie, Sun, Wu: "Squeeze-and-Excitation Networks", CVPR 2018. https://arxiv.org/abs/1709.01507

Squeeze: masked global average pool; excitation: FC C -> C/r, ReLU, FC C/r -> C, sigmoid; the channels of ``x``
are rescaled. The two FCs are 1x1 convolutions named ``fc1``/``fc2`` with biases, the parameter layout of
``timm.layers.SEModule``.
"""
from collections.abc import Callable

import torch
from torch import nn

from models.attention.base import reduced_channels
from models.attention.gating import ZeroInitGate
from models.attention.masked_ops import masked_mean


class SEAttn(nn.Module):
    """The paper's SE module, pooling over valid pixels: ``x [B, C, H, W] -> x * s``, ``s`` ``[B, C, 1, 1]``."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, gate_layer: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_channels)
        self.fc1 = nn.Conv2d(channels, rd, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd, channels, kernel_size=1)
        self.gate = gate_layer()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(masked_mean(x, mask))))
        return x * self.gate(s)


class SqueezeExcite(ZeroInitGate):
    """SE behind a zero-initialised scale: ``x + gamma * (SE(x) - x)``; ``[B, C, H, W] -> [B, C, H, W]``.

    Defaults are the paper's: reduction ratio 16, ReLU, sigmoid.
    """

    paper_module = SEAttn
