"""DINO's encoder: Deformable DETR's encoder layers (deformable self-attention over the tokens of all feature
levels, then a feed-forward block), with an optional final norm."""
import copy

from torch import Tensor, nn

from models.deformable_detr.deformable_transformer import DeformableTransformerEncoderLayer
from models.deformable_detr.ms_deform_attn import SpatialShapes
from models.deformable_detr.token_positions import encoder_reference_points


class Encoder(nn.Module):
    """``num_layers`` copies of ``layer`` (none: the input passes through), then ``norm`` when given."""

    def __init__(self, layer: DeformableTransformerEncoderLayer, num_layers: int, norm: nn.Module | None = None):
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
