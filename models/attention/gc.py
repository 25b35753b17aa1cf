"""Global Context block.

Cao, Xu, Lin, Wei, Hu: "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond", ICCVW 2019.
https://arxiv.org/abs/1904.11492

Context modelling by attention pooling (1x1 conv C -> 1, softmax over the valid positions), a bottleneck transform
1x1 conv C -> C/r, LayerNorm, ReLU, 1x1 conv C/r -> C (r = 16), and fusion by addition, broadcast to every pixel.
The last conv is zero-initialised (weight and bias), so the block starts as the identity. With C=256 it has 8,753
parameters: (C + 1) + (C*C/r + C/r) + 2*C/r + (C/r*C + C).

The norm is the paper's LayerNorm over ``[C/r, 1, 1]``, written as a per-pixel LayerNorm over the C/r channels of
the 1x1 context (:class:`~models.attention.norm.LayerNorm2d`): the same function and parameter count, with 1-D
parameters. Names follow ``timm.layers.GlobalContext(fuse_add=True, fuse_scale=False)``: ``conv_attn``,
``mlp_add.fc1``, ``mlp_add.norm``, ``mlp_add.fc2``.
"""
from collections.abc import Callable

import torch
from torch import nn

from models.attention.base import AttentionBlock, reduced_channels
from models.attention.masked_ops import check_mask, masked_softmax, zero_padding
from models.attention.norm import LayerNorm2d


class ContextTransform(nn.Module):
    """GCNet's bottleneck transform on a context ``[B, C, 1, 1]``: fc1 -> norm -> act -> fc2."""

    def __init__(self, channels: int, rd_channels: int, act_layer: Callable[[], nn.Module],
                 norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1)
        self.norm = norm_layer(rd_channels)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(x))))


class GlobalContext(AttentionBlock):
    """GC block: ``x + transform(context(x))``; x ``[B, C, H, W]``, mask ``[B, H, W]`` or None -> ``[B, C, H, W]``."""

    positions = ("block", "stage")
    default_position = "block"

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.ReLU, norm_layer: Callable[[int], nn.Module] = LayerNorm2d):
        super().__init__()
        self.conv_attn = nn.Conv2d(channels, 1, kernel_size=1)
        self.mlp_add = ContextTransform(channels, reduced_channels(channels, rd_ratio, rd_channels), act_layer,
                                        norm_layer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the authors' code: Kaiming-normal (fan_in) attention conv with zero bias, default fc1, unit norm,
        zero last conv."""
        nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_attn.bias)
        self.mlp_add.fc1.reset_parameters()
        self.mlp_add.norm.reset_parameters()
        nn.init.zeros_(self.mlp_add.fc2.weight)
        nn.init.zeros_(self.mlp_add.fc2.bias)

    def pooling_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax weights of the attention pooling over valid pixels: ``[B, C, H, W] -> [B, 1, HW]``."""
        logits = self.conv_attn(x).flatten(2)  # [B, 1, HW]
        return masked_softmax(logits, None if mask is None else mask.flatten(1)[:, None])

    def context(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention pooling over valid pixels: ``[B, C, H, W] -> [B, C, 1, 1]``."""
        b, c = x.shape[:2]
        values = zero_padding(x, mask).flatten(2)  # [B, C, HW]
        return torch.bmm(values, self.pooling_weights(x, mask).transpose(1, 2)).view(b, c, 1, 1)

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0)) -> dict[str, torch.Tensor]:
        return {"pooling weights": self.pooling_weights(x, mask).view(x.shape[0], *x.shape[-2:])}

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_mask(x, mask)
        return x + self.mlp_add(self.context(x, mask))
