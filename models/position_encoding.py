"""Positional encodings of a feature map, computed from its padding mask.

Both return ``[B, hidden_dim, H, W]`` for a NestedTensor of features ``[B, C, H, W]`` with mask ``[B, H, W]``.
"""
import math

import torch
from torch import nn

from util.nested_tensor import NestedTensor


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of (y, x) as in "Attention Is All You Need", generalised to images.

    Positions are cumulative counts of valid (non-padded) pixels, so padding does not shift them; with
    ``normalize`` they are ``(count + offset) / valid length * scale`` (DETR: offset 0, so (0, ``scale``];
    Deformable DETR: offset -0.5, the pixel centres). Half the channels encode y, half x. The wavelengths grow
    geometrically up to ``temperature`` (DINO sets the y and x ones apart: ``temperature_y``, ``temperature_x``).
    """

    def __init__(self, num_pos_feats: int = 64, temperature: int = 10000, normalize: bool = False,
                 scale: float | None = None, offset: float = 0.0, temperature_y: float | None = None,
                 temperature_x: float | None = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: normalize must be True when scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.temperature_y = temperature if temperature_y is None else temperature_y
        self.temperature_x = temperature if temperature_x is None else temperature_x
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset

    def forward(self, tensor_list: NestedTensor) -> torch.Tensor:
        x, mask = tensor_list.tensors, tensor_list.mask
        if mask is None:
            mask = torch.zeros((x.shape[0], x.shape[2], x.shape[3]), dtype=torch.bool, device=x.device)
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        exponent = 2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        pos_x = x_embed[:, :, :, None] / self.temperature_x ** exponent
        pos_y = y_embed[:, :, :, None] / self.temperature_y ** exponent
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute embeddings of row and column index (up to 50 each), concatenated."""

    def __init__(self, num_pos_feats: int = 256):
        super().__init__()
        self.row_embed = nn.Embedding(50, num_pos_feats)
        self.col_embed = nn.Embedding(50, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, tensor_list: NestedTensor) -> torch.Tensor:
        x = tensor_list.tensors
        h, w = x.shape[-2:]
        if h > self.row_embed.num_embeddings or w > self.col_embed.num_embeddings:
            raise ValueError(f"PositionEmbeddingLearned supports feature maps up to 50x50, got {h}x{w}")
        i = torch.arange(w, device=x.device)
        j = torch.arange(h, device=x.device)
        x_emb = self.col_embed(i)
        y_emb = self.row_embed(j)
        pos = torch.cat([x_emb.unsqueeze(0).repeat(h, 1, 1), y_emb.unsqueeze(1).repeat(1, w, 1)], dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).repeat(x.shape[0], 1, 1, 1)


def build_position_encoding(args) -> nn.Module:
    n_steps = args.hidden_dim // 2
    if args.position_embedding in ("v2", "sine"):
        return PositionEmbeddingSine(n_steps, normalize=True)
    if args.position_embedding in ("v3", "learned"):
        return PositionEmbeddingLearned(n_steps)
    raise ValueError(f"--position_embedding must be 'sine' or 'learned', got {args.position_embedding!r}")
