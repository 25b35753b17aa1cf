"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, arXiv:2010.04159), in plain PyTorch.

Each query looks at ``n_points`` locations per head and feature level, placed by learned offsets around its
reference point, and returns their bilinearly interpolated values weighted by learned attention weights (softmax
over all levels and points of a head). The sampling runs on ``torch.nn.functional.grid_sample`` (no compiled
extension), so it works on CPU and GPU and in exported graphs; its numbers are those of the official pure-PyTorch
reference ``ms_deform_attn_core_pytorch``.

Locations are normalised to [0, 1] of each (padded) feature map, (x, y) with (0, 0) the top-left corner of the
top-left cell; a value's cell centre lies at ((j + 0.5) / W, (i + 0.5) / H) and points outside the map read zeros.

:class:`MSDeformAttn` is Deformable DETR's (and DINO's) module; :class:`MSDeformableAttention` RT-DETRv2's (per-level
point counts, offsets scaled by the reference box and the point count, optional discrete sampling). Both run on
:func:`ms_deform_attn_core`.
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


SAMPLING_METHODS = ("default", "discrete")


def ms_deform_attn_core(value: Tensor, spatial_shapes: SpatialShapes, level_start_index: Tensor | None,
                        sampling_locations: Tensor, attention_weights: Tensor,
                        points_per_level: list[int] | None = None, method: str = "default") -> Tensor:
    """Weighted sum of the samples of every level.

    value: ``[B, S, heads, head_dim]``, the flattened levels one after the other (S = sum of H_l * W_l);
    spatial_shapes: ``[L, 2]`` int64 (H_l, W_l) (or a list of pairs); level_start_index: ``[L]``, where each level
    starts in S (the CUDA kernel's argument, unused: the levels being contiguous, their sizes alone locate them);
    sampling_locations: ``[B, Q, heads, L, P, 2]`` (x, y) in [0, 1] of each level, or, with ``points_per_level``
    (P_l points on level l, RT-DETRv2), ``[B, Q, heads, sum P_l, 2]`` the levels' points one level after the other;
    attention_weights: ``[B, Q, heads, L, P]`` or ``[B, Q, heads, sum P_l]`` likewise.
    method: ``default`` bilinear interpolation (outside the map reads zeros); ``discrete`` (RT-DETRv2) the value of
    cell ``(floor(x W_l + 0.5), floor(y H_l + 0.5))`` clamped into the map (no gradient to the locations).
    Returns ``[B, Q, heads * head_dim]`` (heads major), a transposed view of ``[B, heads * head_dim, Q]`` memory:
    the official codes differ on whether the output projection gets it as it is (RT-DETRv2) or contiguous (Deformable
    DETR), which changes that projection's rounding.
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"ms_deform_attn_core: method must be one of {SAMPLING_METHODS}, got {method!r}")
    batch, _, heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    if points_per_level is None:  # [B, Q, heads, L, P, ...] -> [B, Q, heads, L * P, ...]
        levels, points = sampling_locations.shape[3:5]
        points_per_level = [points] * levels
        sampling_locations = sampling_locations.flatten(3, 4)
        attention_weights = attention_weights.flatten(3, 4)
    sizes = level_sizes(spatial_shapes)
    value_list = value.split([height * width for height, width in sizes], dim=1)
    # grid_sample's [-1, 1] (align_corners=False: -1 is the map's left edge); discrete sampling reads [0, 1]
    grids = 2 * sampling_locations - 1 if method == "default" else sampling_locations
    # [B, Q, heads, sum P, 2] -> [B * heads, Q, sum P, 2] -> per level [B * heads, Q, P_l, 2]
    level_grids = grids.transpose(1, 2).flatten(0, 1).split(points_per_level, dim=2)
    samples = []
    for level, (height, width) in enumerate(sizes):
        # [B, H*W, heads, head_dim] -> [B * heads, head_dim, H, W]
        level_value = value_list[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        # -> [B * heads, head_dim, Q, P_l]
        if method == "default":
            samples.append(F.grid_sample(level_value, level_grids[level], mode="bilinear", padding_mode="zeros",
                                         align_corners=False))
        else:
            samples.append(nearest_cell_samples(level_value, level_grids[level]))
    # [B, Q, heads, sum P] -> [B * heads, 1, Q, sum P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, sum(points_per_level))
    output = (torch.cat(samples, dim=-1) * weights).sum(-1)
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def nearest_cell_samples(level_value: Tensor, locations: Tensor) -> Tensor:
    """RT-DETRv2's discrete sampling: ``level_value`` ``[N, C, H, W]`` read at cell (column, row) =
    ``(floor(x W + 0.5), floor(y H + 0.5))`` of ``locations`` ``[N, Q, P, 2]`` (x, y) in [0, 1], clamped into the
    map -> ``[N, C, Q, P]``.

    The official code clamps both coordinates to ``H - 1``: the same on square maps (all its uses), out of range
    on others; here the column is clamped to ``W - 1``.
    """
    n, channels, height, width = level_value.shape
    _, num_queries, points, _ = locations.shape
    scale = torch.tensor([width, height], device=locations.device)
    cells = (locations * scale + 0.5).to(torch.int64)  # truncation: floor for the non-negative, clamped anyway
    column = cells[..., 0].clamp(0, width - 1).reshape(n, num_queries * points)
    row = cells[..., 1].clamp(0, height - 1).reshape(n, num_queries * points)
    batch_index = torch.arange(n, device=level_value.device)[:, None].expand_as(row)
    picked = level_value[batch_index, :, row, column]  # [N, Q * P, C]
    return picked.transpose(1, 2).reshape(n, channels, num_queries, points)


def _uniform_attention_and_xavier_projections(attention: nn.Module) -> None:
    """The official initialisation of a deformable attention's other layers: zero attention-weight layer (uniform
    weights over the points), xavier-uniform value and output projections with zero biases."""
    nn.init.constant_(attention.attention_weights.weight, 0.0)
    nn.init.constant_(attention.attention_weights.bias, 0.0)
    nn.init.xavier_uniform_(attention.value_proj.weight)
    nn.init.constant_(attention.value_proj.bias, 0.0)
    nn.init.xavier_uniform_(attention.output_proj.weight)
    nn.init.constant_(attention.output_proj.bias, 0.0)


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
        _uniform_attention_and_xavier_projections(self)

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
        return self.output_proj(output.contiguous())  # contiguous as official: the same rounding


class MSDeformableAttention(nn.Module):
    """RT-DETRv2's multi-scale deformable attention (Lv et al., "RT-DETRv2", arXiv:2407.17140), with the official
    parameter names, buffer and initialisation.

    ``num_points``: points per head on every level, or a list of per-level counts P_l; the softmax of a head runs
    over all its sum(P_l) points jointly. ``sampling_offsets`` (embed_dim -> heads * sum(P_l) * (x, y)),
    ``attention_weights`` (-> heads * sum(P_l)), ``value_proj``, ``output_proj``; the persistent float32 buffer
    ``num_points_scale`` ``[sum P_l]`` holds 1 / P_l per point. Boxes as references scale the offsets by
    ``num_points_scale * size * offset_scale``. ``method``: ``default`` (bilinear) or ``discrete`` (nearest cell,
    :func:`nearest_cell_samples`; ``sampling_offsets`` then stays frozen as its initial pattern, as official).
    ``projections`` False (D-FINE's: its decoder hands the attention the memory itself): no ``value_proj`` and
    ``output_proj``, the values are sampled as they come (split into heads) and the heads' outputs returned
    concatenated.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int | list[int] = 4,
                 method: str = "default", offset_scale: float = 0.5, projections: bool = True):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"MSDeformableAttention: embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        if method not in SAMPLING_METHODS:
            raise ValueError(f"MSDeformableAttention: method must be one of {SAMPLING_METHODS}, got {method!r}")
        num_points_list = list(num_points) if isinstance(num_points, (list, tuple)) else [num_points] * num_levels
        if len(num_points_list) != num_levels:
            raise ValueError(f"MSDeformableAttention: num_points {num_points_list} must give one count per level "
                             f"({num_levels})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.offset_scale = offset_scale
        self.num_points_list = num_points_list
        scale = [1 / n for n in num_points_list for _ in range(n)]
        self.register_buffer("num_points_scale", torch.tensor(scale, dtype=torch.float32))
        self.total_points = num_heads * sum(num_points_list)
        self.method = method
        self.head_dim = embed_dim // num_heads
        self.sampling_offsets = nn.Linear(embed_dim, self.total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, self.total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim) if projections else None
        self.output_proj = nn.Linear(embed_dim, embed_dim) if projections else None
        self._reset_parameters()
        if method == "discrete":
            self.sampling_offsets.requires_grad_(False)

    def _reset_parameters(self) -> None:
        """Offsets start as a fixed pattern: head h points in direction 2*pi*h/num_heads (scaled so that its larger
        coordinate is 1), the p-th point of a level (p = 1..P_l) at p times that step; attention is uniform."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.cat([torch.arange(1, n + 1) for n in self.num_points_list])  # [sum P]
        grid = directions[:, None, :] * steps[None, :, None]  # [heads, sum P, 2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        if self.value_proj is None:
            nn.init.constant_(self.attention_weights.weight, 0.0)
            nn.init.constant_(self.attention_weights.bias, 0.0)
        else:
            _uniform_attention_and_xavier_projections(self)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor, value_spatial_shapes: SpatialShapes,
                value_mask: Tensor | None = None) -> Tensor:
        """query: ``[B, Q, C]``; reference_points: ``[B, Q, 1 or L, 2]`` points (x, y) in [0, 1] (offsets in cells
        of each level) or ``[B, Q, 1 or L, 4]`` boxes (cx, cy, w, h), one for all levels or one per level;
        value: ``[B, S, C]`` the levels flattened one after the other; value_spatial_shapes: (H_l, W_l) pairs (a
        list, or an ``[L, 2]`` int64 tensor); value_mask: ``[B, S]``, True (or 1) on the values to keep (the others
        are zeroed). Without ``projections``, value may also come split into heads, ``[B, S, heads, C / heads]``.
        Returns ``[B, Q, C]``.
        """
        batch, num_queries = query.shape[:2]
        num_values = value.shape[1]
        total = sum(self.num_points_list)
        if self.value_proj is not None:
            value = self.value_proj(value)
        value = value.reshape(batch, num_values, self.num_heads, self.head_dim)
        if value_mask is not None:
            value = value * value_mask.to(value.dtype)[..., None, None]
        offsets = self.sampling_offsets(query).reshape(batch, num_queries, self.num_heads, total, 2)
        weights = self.attention_weights(query).reshape(batch, num_queries, self.num_heads, total)
        weights = F.softmax(weights, dim=-1)
        if reference_points.shape[2] not in (1, self.num_levels):
            raise ValueError(f"MSDeformableAttention: reference_points [B, Q, levels, 2 or 4] need 1 or "
                             f"{self.num_levels} levels, got {tuple(reference_points.shape)}")
        if reference_points.shape[2] > 1:  # one reference per level -> one per point: [B, Q, sum P, 2 or 4]
            counts = torch.tensor(self.num_points_list, device=reference_points.device)
            reference_points = reference_points.repeat_interleave(counts, dim=2, output_size=total)
        reference_points = reference_points[:, :, None]  # [B, Q, 1, 1 or sum P, 2 or 4], broadcast over heads
        if reference_points.shape[-1] == 2:
            sizes = level_sizes(value_spatial_shapes)
            cells = torch.tensor([[w, h] for h, w in sizes], dtype=query.dtype, device=query.device)
            counts = torch.tensor(self.num_points_list, device=query.device)
            cells = cells.repeat_interleave(counts, dim=0, output_size=total)  # [sum P, 2]: (W_l, H_l) per point
            locations = reference_points + offsets / cells
        elif reference_points.shape[-1] == 4:
            num_points_scale = self.num_points_scale.to(dtype=query.dtype).unsqueeze(-1)
            offset = offsets * num_points_scale * reference_points[..., 2:] * self.offset_scale
            locations = reference_points[..., :2] + offset
        else:
            raise ValueError(f"MSDeformableAttention: reference_points must end in 2 (points) or 4 (boxes), got "
                             f"{tuple(reference_points.shape)}")
        output = ms_deform_attn_core(value, value_spatial_shapes, None, locations, weights,
                                     points_per_level=self.num_points_list, method=self.method)
        return output if self.output_proj is None else self.output_proj(output)
