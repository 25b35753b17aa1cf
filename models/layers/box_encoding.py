"""Boxes as the decoders consume them: in logit space (``inverse_sigmoid``) and as sine/cosine features.

Boxes are normalised (cx, cy, w, h) in [0, 1]; Deformable DETR and DINO refine them in logit space and embed them
with the sine features of the transformer's positional encoding.
"""
import math

import torch
from torch import Tensor


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of ``x`` clamped to [0, 1], with ``x`` and ``1 - x`` kept at least ``eps`` (Deformable DETR 1e-5,
    DINO 1e-3); any shape."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_embedding(coords: Tensor, num_feats: int = 128, temperature: int = 10000) -> Tensor:
    """Sine/cosine features of each coordinate of ``coords`` ``[..., n]`` (values in [0, 1]) -> ``[..., n *
    num_feats]``, the coordinates' features one after the other in the order given.

    A coordinate is scaled by 2 pi and divided by ``temperature ** (2 * (i // 2) / num_feats)`` for feature i; even
    features take the sine, odd ones the cosine (the interleaving of DETR's sine positional encoding).
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = (coords * (2 * math.pi))[..., None] / dim_t  # [..., n, num_feats]
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-3)


def anchor_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: int = 10000) -> Tensor:
    """DINO's embedding of anchor boxes ``[..., 4]`` (cx, cy, w, h) or points ``[..., 2]`` -> ``[..., 4 *
    num_feats]`` (or ``2 * num_feats``): :func:`sine_embedding` of the coordinates in the order y, x, w, h."""
    if boxes.shape[-1] not in (2, 4):
        raise ValueError(f"anchor_sine_embedding: expected boxes [..., 4] or points [..., 2], got {tuple(boxes.shape)}")
    order = [1, 0, 2, 3][: boxes.shape[-1]]
    return sine_embedding(boxes[..., order], num_feats, temperature)
