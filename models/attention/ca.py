"""Coordinate Attention.

Hou, Zhou, Feng: "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021.
https://arxiv.org/abs/2103.02907

``x`` is average-pooled along W (one descriptor per row, ``[B, C, H, 1]``) and along H (one per column,
``[B, C, W, 1]`` after transposing), the two are concatenated along the spatial axis and go through a shared 1x1
conv C -> mip, mip = max(8, C // 32), a norm and h-swish; the result is split back and two 1x1 convs mip -> C with
sigmoids give ``a_h`` ``[B, C, H, 1]`` and ``a_w`` ``[B, C, 1, W]``; the paper's output is ``x * a_h * a_w``.

Padding: the row/column means are over valid pixels only. A fully padded row or column gets a 0 descriptor, and
since everything after the pooling acts per row/column, it only reaches the padded pixels of that row/column.

Norm: the authors' code uses BatchNorm2d(mip), which mixes images and positions. It is replaced by a LayerNorm over
the mip channels of each row/column descriptor (:class:`~models.attention.norm.LayerNorm2d`): same 2*mip affine
parameters, no statistics across positions or images. With C=256 the module has 6,680 parameters.
"""
from collections.abc import Callable

import torch
from torch import nn

from models.attention.gating import ZeroInitGate
from models.attention.masked_ops import masked_mean
from models.attention.norm import LayerNorm2d


class CaAttn(nn.Module):
    """The paper's coordinate attention with masked pooling: ``x [B, C, H, W] -> x * a_h * a_w``."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 32, rd_channels: int | None = None,
                 min_rd_channels: int = 8, act_layer: Callable[[], nn.Module] = nn.Hardswish,
                 norm_layer: Callable[[int], nn.Module] = LayerNorm2d,
                 gate_layer: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        mip = rd_channels or max(min_rd_channels, int(channels * rd_ratio))
        self.conv1 = nn.Conv2d(channels, mip, kernel_size=1)
        self.norm = norm_layer(mip)
        self.act = act_layer()
        self.conv_h = nn.Conv2d(mip, channels, kernel_size=1)
        self.conv_w = nn.Conv2d(mip, channels, kernel_size=1)
        self.gate = gate_layer()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.conv1, self.norm, self.conv_h, self.conv_w):
            m.reset_parameters()

    def gates(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The height and width gates: ``[B, C, H, 1]`` and ``[B, C, 1, W]``, in (0, 1)."""
        h, w = x.shape[-2:]
        x_h = masked_mean(x, mask, dims=(3,))  # [B, C, H, 1]: mean over each row's valid pixels
        x_w = masked_mean(x, mask, dims=(2,)).transpose(2, 3)  # [B, C, W, 1]: over each column's
        y = self.act(self.norm(self.conv1(torch.cat([x_h, x_w], dim=2))))  # [B, mip, H + W, 1]
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.gate(self.conv_h(y_h))  # [B, C, H, 1]
        a_w = self.gate(self.conv_w(y_w.transpose(2, 3)))  # [B, C, 1, W]
        return a_h, a_w

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a_h, a_w = self.gates(x, mask)
        return x * a_h * a_w

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0)) -> dict[str, torch.Tensor]:
        """The gates averaged over channels, each spread along the other axis."""
        a_h, a_w = self.gates(x, mask)
        return {"height gate": a_h.mean(1).expand(-1, -1, x.shape[-1]),
                "width gate": a_w.mean(1).expand(-1, x.shape[-2], -1),
                "product": (a_h * a_w).mean(1)}


class CoordAttn(ZeroInitGate):
    """Coordinate attention behind a zero-initialised scale: ``x + gamma * (CA(x) - x)``; ``[B, C, H, W]`` in and
    out. Defaults are the paper's (reduction 32 with at least 8 channels, h-swish, sigmoid) except the norm, a
    per-position LayerNorm instead of BatchNorm (see the module docstring)."""

    paper_module = CaAttn
