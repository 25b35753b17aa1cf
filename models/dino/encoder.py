"""DINO's encoder: deformable self-attention over the tokens of all feature levels (as Deformable DETR's)."""
import copy

import torch
from torch import Tensor, nn

from models.deformable_detr.ms_deform_attn import MSDeformAttn, SpatialShapes, level_sizes
from models.dino.activation import activation_fn


class EncoderLayer(nn.Module):
    """Post-norm layer: multi-scale deformable self-attention (queries carry the positional encoding, values do
    not), then a feed-forward block."""

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """src, pos: ``[B, S, D]``; reference_points: ``[B, S, L, 2]``; padding_mask: ``[B, S]``. Returns
        ``[B, S, D]``."""
        src2 = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


def encoder_reference_points(spatial_shapes: SpatialShapes, valid_ratios: Tensor) -> Tensor:
    """Every token's cell centre, normalised by the image (unpadded) part of its level and rescaled to each level:
    ``[B, S, L, 2]`` (x, y) in the padded frame of each level, for spatial_shapes ``[L, 2]`` and valid_ratios
    ``[B, L, 2]``."""
    points = []
    for lvl, (height, width) in enumerate(level_sizes(spatial_shapes)):
        ref_y, ref_x = torch.meshgrid(  # arange(H) + 0.5 = linspace(0.5, H - 0.5, H), exactly
            torch.arange(height, dtype=torch.float32, device=valid_ratios.device) + 0.5,
            torch.arange(width, dtype=torch.float32, device=valid_ratios.device) + 0.5,
            indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * height)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * width)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


class Encoder(nn.Module):
    """``num_layers`` copies of ``layer`` (none: the input passes through), then ``norm`` when given."""

    def __init__(self, layer: EncoderLayer, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: SpatialShapes, level_start_index: Tensor,
                valid_ratios: Tensor, padding_mask: Tensor) -> Tensor:
        """src, pos: ``[B, S, D]`` (pos includes the level embedding); padding_mask ``[B, S]``. Returns the memory
        ``[B, S, D]``."""
        output = src
        if len(self.layers):
            reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
            for layer in self.layers:
                output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        if self.norm is not None:
            output = self.norm(output)
        return output
