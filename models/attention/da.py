"""Dual attention: position attention + channel attention.

Fu, Liu, Tian, Li, Bao, Fang, Lu: "Dual Attention Network for Scene Segmentation", CVPR 2019.
https://arxiv.org/abs/1809.02983

Position attention (PAM): query/key 1x1 convs C -> C/8, value 1x1 conv C -> C, softmax over all valid positions
(padded keys masked), ``PAM(x) = x + gamma_p * V softmax(Q^T K)^T``.
Channel attention (CAM): channel affinity ``E = X X^T`` ``[B, C, C]`` summed over valid positions only (padded pixels
zeroed), DANet's max-minus trick ``softmax(max_j E_ij - E_ij)`` over j, ``CAM(x) = x + gamma_c * A X``.
The block sums the two residual branches on one input:
``out = x + gamma_p * pam(x) + gamma_c * cam(x)``, which equals ``PAM(x) + CAM(x) - x``; both gammas start at 0.

Convolutions: DANet's head wraps each module in 3x3 conv-BN-ReLU layers that reduce to C/4 channels (``conv5a``,
``conv51``, ...) for segmentation; as a channel-preserving backbone block this keeps only the attention modules with
their 1x1 projections (with bias, no norm), so there is no BatchNorm and the block is the identity at
initialisation.
"""
import torch
from torch import nn

from models.attention.base import AttentionBlock, query_key_value, reduced_channels, zero_scalar
from models.attention.masked_ops import check_mask, masked_softmax, zero_padding


class DualAttention(AttentionBlock):
    """DANet's PAM + CAM on one input; x ``[B, C, H, W]``, mask ``[B, H, W]`` or None -> ``[B, C, H, W]``.

    PAM's attention is ``[B, HW, HW]`` and CAM's ``[B, C, C]``: place it once on a stage output.
    """

    positions = ("stage",)
    default_position = "stage"

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, rd_channels: int | None = None):
        super().__init__()
        self.query, self.key, self.value = query_key_value(channels, reduced_channels(channels, rd_ratio, rd_channels))
        self.gamma_p = zero_scalar()
        self.gamma_c = zero_scalar()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.query, self.key, self.value):
            conv.reset_parameters()
        nn.init.zeros_(self.gamma_p)
        nn.init.zeros_(self.gamma_c)

    def position_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """PAM's pixel-to-pixel weights ``[B, HW (queries), HW (keys)]``, padded keys excluded."""
        q = self.query(x).flatten(2).transpose(1, 2)  # [B, HW, C/8]
        k = self.key(x).flatten(2)  # [B, C/8, HW]
        key_mask = None if mask is None else mask.flatten(1)[:, None]  # [B, 1, HW]
        return masked_softmax(torch.bmm(q, k), key_mask)

    def position_attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """PAM's attended values (before gamma_p): ``[B, C, H, W] -> [B, C, H, W]``."""
        v = zero_padding(self.value(x), mask).flatten(2)  # [B, C, HW]
        return torch.bmm(v, self.position_weights(x, mask).transpose(1, 2)).view_as(x)

    @torch.no_grad()
    def attention_maps(self, x, mask=None, query=(0, 0)) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        row = self.position_weights(x, mask)[:, query[0] * w + query[1]]
        return {f"position attention of pixel {tuple(query)}": row.view(x.shape[0], h, w)}

    @staticmethod
    def channel_attention(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """CAM's attended values (before gamma_c): ``[B, C, H, W] -> [B, C, H, W]``."""
        flat = x.flatten(2)  # [B, C, HW]
        valid = zero_padding(x, mask).flatten(2)
        valid = valid.float()  # the sums over positions overflow in half precision
        energy = torch.bmm(valid, valid.transpose(1, 2))  # [B, C, C], sums over valid positions
        attn = (energy.amax(-1, keepdim=True) - energy).softmax(-1).to(x.dtype)
        return torch.bmm(attn, flat).view_as(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_mask(x, mask)
        return x + self.gamma_p * self.position_attention(x, mask) + self.gamma_c * self.channel_attention(x, mask)
