"""The deformable encoder of Deformable DETR and DINO: deformable self-attention over the tokens of all feature
levels, each token's reference point its own cell centre, then a feed-forward block (post-norm)."""
from torch import Tensor, nn

from models.activation import activation_fn
from models.layers.clones import clones
from models.layers.ms_deform_attn import MSDeformAttn, SpatialShapes
from models.layers.token_positions import encoder_reference_points


class DeformableTransformerEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a feed-forward block; post-norm."""

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

    @staticmethod
    def with_pos_embed(tensor: Tensor, pos: Tensor | None) -> Tensor:
        return tensor if pos is None else tensor + pos

    def forward_ffn(self, src: Tensor) -> Tensor:
        src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))

    def forward(self, src: Tensor, pos: Tensor | None, reference_points: Tensor, spatial_shapes: SpatialShapes,
                level_start_index: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """src, pos: ``[B, S, C]``; reference_points: ``[B, S, L, 2]``; padding_mask: ``[B, S]``."""
        src2 = self.self_attn(self.with_pos_embed(src, pos), reference_points, src, spatial_shapes,
                              level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        return self.forward_ffn(src)


class DeformableTransformerEncoder(nn.Module):
    """``num_layers`` copies of ``encoder_layer`` (none: the input passes through), then ``norm`` when given
    (DINO's pre-norm variant)."""

    def __init__(self, encoder_layer: DeformableTransformerEncoderLayer, num_layers: int,
                 norm: nn.Module | None = None):
        super().__init__()
        self.layers = clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, pos: Tensor | None, spatial_shapes: SpatialShapes, level_start_index: Tensor,
                valid_ratios: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """src, pos: ``[B, S, C]`` (pos includes the level embedding); valid_ratios: ``[B, L, 2]``; padding_mask:
        ``[B, S]`` True on padding. Returns the memory ``[B, S, C]``."""
        output = src
        if self.num_layers:
            reference_points = encoder_reference_points(spatial_shapes, valid_ratios)
            for layer in self.layers:
                output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        if self.norm is not None:
            output = self.norm(output)
        return output
