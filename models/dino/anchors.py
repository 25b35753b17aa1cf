"""Anchor boxes: their logit form, their sine embedding, and the encoder's one-anchor-per-token proposals.

Boxes are normalised (cx, cy, w, h) in [0, 1] of the padded image unless said otherwise; DINO refines them in logit
space (``inverse_sigmoid``) and conditions the decoder queries on their sine embedding.
"""
import math

import torch
from torch import Tensor


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """Logit of ``x`` clamped to [0, 1], with both ``x`` and ``1 - x`` kept at least ``eps``; any shape."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def anchor_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: int = 10000) -> Tensor:
    """Sine/cosine embedding of boxes ``[..., 4]`` (cx, cy, w, h) or points ``[..., 2]`` -> ``[..., 4 * num_feats]``
    (or ``2 * num_feats``), concatenated in the order y, x, w, h.

    Each coordinate is scaled by 2 pi and divided by ``temperature ** (2 * (i // 2) / num_feats)``; even features
    take the sine, odd ones the cosine. DINO uses ``num_feats = d_model / 2`` (128 for its 256 channels).
    """
    if boxes.shape[-1] not in (2, 4):
        raise ValueError(f"anchor_sine_embedding: expected boxes [..., 4] or points [..., 2], got {tuple(boxes.shape)}")
    scale = 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)

    def embed(coord: Tensor) -> Tensor:
        pos = (coord * scale)[..., None] / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

    parts = [embed(boxes[..., 1]), embed(boxes[..., 0])]
    if boxes.shape[-1] == 4:
        parts += [embed(boxes[..., 2]), embed(boxes[..., 3])]
    return torch.cat(parts, dim=-1)


def valid_ratios(mask: Tensor) -> Tensor:
    """Fraction of each padded feature map ``mask`` ``[B, H, W]`` (True on padding) that the image covers:
    ``[B, 2]`` as (width ratio, height ratio)."""
    _, height, width = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)


