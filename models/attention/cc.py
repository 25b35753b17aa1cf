"""Criss-cross attention, recurrent.

Huang, Wang, Huang, Huang, Wei, Liu: "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019.
https://arxiv.org/abs/1811.11721

Each pixel attends to the pixels of its row and its column: query/key 1x1 convs C -> C/8, value 1x1 conv C -> C,
one softmax over the H + W candidates, where the pixel itself appears in both the column and the row part and its
column copy is masked with -inf (as the authors' ``INF`` diagonal), so it is counted once. Padded keys are masked
too. ``out = gamma * (attended over column + attended over row) + x`` with ``gamma`` starting at 0. Recurrence 2:
the same module (shared weights) is applied twice, so every valid pixel sees every valid pixel.

Plain PyTorch (einsum), no custom CUDA kernel: memory ``B*H*W*(H+W)`` per pass. Only the attention module is taken
from CCNet; its segmentation head's 3x3 conv-BN-ReLU layers around it (``conva``/``convb``) are not part of this block.
"""
import torch
from torch import nn

from models.attention.base import AttentionBlock, query_key_value, reduced_channels, zero_scalar
from models.attention.masked_ops import check_mask, masked_softmax, zero_padding


class CrissCrossAttention(nn.Module):
    """One criss-cross pass: ``x [B, C, H, W] -> gamma * (out_H + out_W) + x``."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, rd_channels: int | None = None):
        super().__init__()
        self.query, self.key, self.value = query_key_value(channels, reduced_channels(channels, rd_ratio, rd_channels))
        self.gamma = zero_scalar()

    def reset_parameters(self) -> None:
        for conv in (self.query, self.key, self.value):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Weights of each pixel over its column then its row: ``[B, H, W, H + W]`` (itself counted once)."""
        h, w = x.shape[-2:]
        q, k = self.query(x), self.key(x)
        energy_h = torch.einsum("bcij,bckj->bijk", q, k)  # [B, H, W, H]: pixel (i, j) vs (k, j) of its column
        energy_w = torch.einsum("bcij,bcik->bijk", q, k)  # [B, H, W, W]: pixel (i, j) vs (i, k) of its row
        b = x.shape[0]
        column_mask = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :].expand(b, h, w, h)  # itself: k == i
        if mask is None:
            row_mask = torch.zeros(b, h, w, w, dtype=torch.bool, device=x.device)
        else:
            column_mask = column_mask | mask.transpose(1, 2)[:, None]  # key (k, j) padded
            row_mask = mask[:, :, None, :].expand(b, h, w, w)  # key (i, k) padded
        key_mask = torch.cat([column_mask, row_mask], dim=3)  # [B, H, W, H + W]
        return masked_softmax(torch.cat([energy_h, energy_w], dim=3), key_mask)  # [B, H, W, H + W]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x.shape[-2]
        v = zero_padding(self.value(x), mask)
        attn = self.attention(x, mask)
        out_h = torch.einsum("bijk,bckj->bcij", attn[..., :h], v)
        out_w = torch.einsum("bijk,bcik->bcij", attn[..., h:], v)
        return x + self.gamma * (out_h + out_w)  # x first: the output keeps x's memory layout


class RecurrentCrissCross(AttentionBlock):
    """CCNet's recurrent criss-cross attention (RCCA): the same :class:`CrissCrossAttention` applied
    ``recurrence`` times; x ``[B, C, H, W]``, mask ``[B, H, W]`` or None -> ``[B, C, H, W]``."""

    positions = ("stage",)
    default_position = "stage"

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, rd_channels: int | None = None, recurrence: int = 2):
        super().__init__()
        self.cca = CrissCrossAttention(channels, rd_ratio, rd_channels)
        self.recurrence = recurrence
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.cca.reset_parameters()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_mask(x, mask)
        for _ in range(self.recurrence):
            x = self.cca(x, mask)
        return x

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0)) -> dict[str, torch.Tensor]:
        """The first pass's weights of the query pixel, drawn on its column and row."""
        i, j = query
        h = x.shape[-2]
        weights = self.cca.attention(x, mask)[:, i, j]  # [B, H + W]
        picture = torch.zeros(x.shape[0], *x.shape[-2:], dtype=weights.dtype, device=x.device)
        picture[:, :, j] = weights[:, :h]
        picture[:, i, :] += weights[:, h:]
        return {f"criss-cross attention of pixel {tuple(query)}": picture}
