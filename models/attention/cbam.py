"""Convolutional Block Attention Module.

Woo, Park, Lee, Kweon: "CBAM: Convolutional Block Attention Module", ECCV 2018. https://arxiv.org/abs/1807.06521

Channel attention ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` with a shared bias-free MLP C -> C/r -> C (ReLU,
r = 16), both pools over valid pixels only; then spatial attention ``sigmoid(conv7x7([mean_c(x'); max_c(x')]))``
on the channel-refined ``x'``, applied in sequence. The channel-wise mean/max are per pixel; the 7x7 convolution
reads its input map with padded pixels zeroed, which is what the unpadded image's zero border gives.

Differences from the authors' code: the MLP has no biases (as the paper's equations and ``timm.layers.CbamModule``;
the authors' ``nn.Linear`` layers have them), and the 7x7 convolution, followed by BatchNorm2d(1) there and in timm,
has no norm but a bias (BatchNorm's affine shift) instead: no batch statistics inside the block.
"""
from collections.abc import Callable

import torch
from torch import nn

from models.attention.base import reduced_channels
from models.attention.gating import ZeroInitGate
from models.attention.masked_ops import masked_max, masked_mean, zero_padding


class ChannelAttn(nn.Module):
    """CBAM's channel attention: ``x [B, C, H, W] -> x * sigmoid(fc2(act(fc1(avg))) + fc2(act(fc1(max))))``."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, gate_layer: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_channels)
        self.fc1 = nn.Conv2d(channels, rd, kernel_size=1, bias=False)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd, channels, kernel_size=1, bias=False)
        self.gate = gate_layer()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        avg = self.fc2(self.act(self.fc1(masked_mean(x, mask))))
        mx = self.fc2(self.act(self.fc1(masked_max(x, mask))))
        return x * self.gate(avg + mx)


class SpatialAttn(nn.Module):
    """CBAM's spatial attention: ``x [B, C, H, W] -> x * sigmoid(conv([mean_c(x); max_c(x)]))`` (``[B, 1, H, W]``)."""

    def __init__(self, kernel_size: int = 7, gate_layer: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2)
        self.gate = gate_layer()

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def gate_map(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The spatial gate ``[B, 1, H, W]`` in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.gate(self.conv(zero_padding(pooled, mask)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x * self.gate_map(x, mask)


class CbamAttn(nn.Module):
    """The paper's CBAM, padding-aware: channel then spatial attention; ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 spatial_kernel_size: int = 7, act_layer: Callable[[], nn.Module] = nn.ReLU,
                 gate_layer: Callable[[], nn.Module] = nn.Sigmoid):
        super().__init__()
        self.channel = ChannelAttn(channels, rd_ratio, rd_channels, act_layer, gate_layer)
        self.spatial = SpatialAttn(spatial_kernel_size, gate_layer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.channel.reset_parameters()
        self.spatial.reset_parameters()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.spatial(self.channel(x, mask), mask)

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0)) -> dict[str, torch.Tensor]:
        return {"spatial gate": self.spatial.gate_map(self.channel(x, mask), mask)[:, 0]}


class Cbam(ZeroInitGate):
    """CBAM behind a zero-initialised scale: ``x + gamma * (CBAM(x) - x)``; ``[B, C, H, W] -> [B, C, H, W]``.

    Defaults are the paper's: reduction ratio 16, ReLU, 7x7 spatial kernel, sigmoid gates.
    """

    paper_module = CbamAttn
