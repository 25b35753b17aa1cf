"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, arXiv:2010.04159), in plain PyTorch.

Each query looks at ``n_points`` locations per head and feature level, placed by learned offsets around its
reference point, and returns their bilinearly interpolated values weighted by learned attention weights (softmax
over all levels and points of a head). The sampling runs on ``torch.nn.functional.grid_sample`` (no compiled
extension), so it works on CPU and GPU and in exported graphs; its numbers are those of the official pure-PyTorch
reference ``ms_deform_attn_core_pytorch``.

Locations are normalised to [0, 1] of each (padded) feature map, (x, y) with (0, 0) the top-left corner of the
top-left cell; a value's cell centre lies at ((j + 0.5) / W, (i + 0.5) / H) and points outside the map read zeros.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SpatialShapes = Tensor | list[tuple[int, int]]


def _is_exporting() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling() or exporting()


def level_sizes(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """(H_l, W_l) per level as Python integers, from an ``[L, 2]`` int64 tensor or a list of pairs (a list keeps
    the sizes static in ``torch.export``, where reading a tensor's values is data-dependent)."""
    if isinstance(spatial_shapes, Tensor):
        return [(h, w) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def sizes_tensor(sizes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """``[L, 2]`` int64 tensor of (H_l, W_l) pairs, built value by value: sizes that are symbolic in ``torch.export``
    (dynamic image height and width) stay symbolic, where ``torch.as_tensor`` of the list would fix them to the
    example input's values."""
    return torch.stack([torch.stack([torch.full((), height, dtype=torch.int64, device=device),
                                     torch.full((), width, dtype=torch.int64, device=device)])
                        for height, width in sizes])


def ms_deform_attn_core(value: Tensor, spatial_shapes: SpatialShapes, level_start_index: Tensor,
                        sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Weighted sum of bilinear samples of every level.

    value: ``[B, S, heads, head_dim]``, the flattened levels one after the other (S = sum of H_l * W_l);
    spatial_shapes: ``[L, 2]`` int64 (H_l, W_l) (or a list of pairs); level_start_index: ``[L]``, where each level
    starts in S (the CUDA kernel's argument; the levels being contiguous, their sizes alone locate them here);
    sampling_locations: ``[B, Q, heads, L, P, 2]`` (x, y) in [0, 1] of each level (outside reads zeros);
    attention_weights: ``[B, Q, heads, L, P]``.
    Returns ``[B, Q, heads * head_dim]`` (heads major).
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    sizes = level_sizes(spatial_shapes)
    value_list = value.split([height * width for height, width in sizes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] (align_corners=False: -1 is the map's left edge)
    samples = []
    for level, (height, width) in enumerate(sizes):
        # [B, H*W, heads, head_dim] -> [B * heads, head_dim, H, W]
        level_value = value_list[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        # [B, Q, heads, P, 2] -> [B * heads, Q, P, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # -> [B * heads, head_dim, Q, P]
        samples.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    # [B, Q, heads, L, P] -> [B * heads, 1, Q, L * P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, levels * points)
    output = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the official parameter names and initialisation.

    ``sampling_offsets`` (query -> heads * levels * points (x, y) offsets), ``attention_weights`` (query -> heads *
    levels * points logits), ``value_proj`` and ``output_proj`` (d_model -> d_model).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Offsets start as a fixed pattern: head h points in direction 2*pi*h/n_heads (scaled so that its larger
        coordinate is 1), point p at (p + 1) times that step, the same on every level; attention is uniform."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * steps[None, None, :, None]  # [heads, 1, points, 2]
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor,
                input_spatial_shapes: SpatialShapes, input_level_start_index: Tensor,
                input_padding_mask: Tensor | None = None) -> Tensor:
        """query: ``[B, Q, C]``; reference_points: ``[B, Q, L, 2]`` points (x, y) in [0, 1] of each padded level,
        or ``[B, Q, L, 4]`` boxes (cx, cy, w, h) whose size scales the offsets;
        input_flatten: ``[B, S, C]`` the levels' features flattened one after the other;
        input_spatial_shapes: ``[L, 2]`` int64 (H_l, W_l) or a list of pairs; input_level_start_index: ``[L]``;
        input_padding_mask: ``[B, S]`` True on padding (those values are zeroed before sampling).
        Returns ``[B, Q, C]``.
        """
        batch, num_queries, _ = query.shape
        _, num_values, _ = input_flatten.shape
        if isinstance(input_spatial_shapes, Tensor):
            shapes = input_spatial_shapes
            if not _is_exporting() and int((shapes[:, 0] * shapes[:, 1]).sum()) != num_values:
                raise ValueError(f"MSDeformAttn: input_spatial_shapes {shapes.tolist()} do not add up to the "
                                 f"{num_values} flattened values")
        else:
            if sum(h * w for h, w in input_spatial_shapes) != num_values:
                raise ValueError(f"MSDeformAttn: input_spatial_shapes {input_spatial_shapes} do not add up to the "
                                 f"{num_values} flattened values")
            shapes = sizes_tensor(input_spatial_shapes, query.device)
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # offsets are in cells of each level: divide by (W_l, H_l)
            normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normalizer[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            # offsets are in half box sizes, spread over the points
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"MSDeformAttn: reference_points must end in 2 (points) or 4 (boxes), got "
                             f"{tuple(reference_points.shape)}")
        output = ms_deform_attn_core(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(output)
